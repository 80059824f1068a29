//! Token-level cross entropy with HF's shift and ignore conventions.

use tch::{Kind, Reduction, Tensor};

use crate::data::IGNORE;
use crate::error::Result;

/// Per-position losses `[B, T-1]`: position `t` scores `labels[:, t+1]` from `logits[:, t]`;
/// ignored labels give exactly 0. Computed in f32 whatever the logits' dtype.
pub fn token_losses(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let t = logits.size3()?.1;
    span_losses(&logits.f_narrow(1, 0, t - 1)?, labels, 0)
}

/// [`token_losses`] of positions `start..start + n` only, from their logits `[B, n, V]`: the
/// chunked loss's piece (`labels` is the whole `[B, T]`). The chunks of `0..T-1` concatenated
/// along dim 1 are exactly [`token_losses`].
pub fn span_losses(logits: &Tensor, labels: &Tensor, start: i64) -> Result<Tensor> {
    let (b, n, v) = logits.size3()?;
    let logits = logits.f_to_kind(Kind::Float)?.f_reshape([-1, v])?;
    let targets = labels.f_narrow(1, start + 1, n)?.f_reshape([-1])?;
    let l = logits.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, IGNORE, 0.0)?;
    Ok(l.f_reshape([b, n])?)
}
