//! Token-level cross entropy with HF's shift and ignore conventions.

use tch::{Kind, Reduction, Tensor};

use crate::data::IGNORE;
use crate::error::Result;

/// Per-position losses `[B, T-1]`: position `t` scores `labels[:, t+1]` from `logits[:, t]`;
/// ignored labels give exactly 0. Computed in f32 whatever the logits' dtype.
pub fn token_losses(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.size3()?;
    let shift_logits = logits
        .f_narrow(1, 0, t - 1)?
        .f_to_kind(Kind::Float)?
        .f_reshape([-1, v])?;
    let shift_labels = labels.f_narrow(1, 1, t - 1)?.f_reshape([-1])?;
    let l = shift_logits.f_cross_entropy_loss::<Tensor>(
        &shift_labels,
        None,
        Reduction::None,
        IGNORE,
        0.0,
    )?;
    Ok(l.f_reshape([b, t - 1])?)
}
