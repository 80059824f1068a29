//! Forward and backward of one micro-batch, with activation checkpointing and a chunked loss
//! when the config asks for them.
//!
//! The pass runs the model in its pieces ([`CausalLm::embed`], [`CausalLm::blocks`],
//! [`CausalLm::head`]):
//!
//! 1. **Body.** Without checkpointing the blocks run with autograd recording, as one forward
//!    pass would. With checkpointing they run under `no_grad` and only each block's input is
//!    kept (`L` tensors of `[B, T, H]`).
//! 2. **Loss.** The last block's output is detached into a leaf `h`. The positions are taken
//!    `loss_chunk` at a time (all at once when 0): head → f32 log-softmax → cross entropy →
//!    `backward` of `Σ losses · scale`, which accumulates `∂/∂h` and the head's gradients, and
//!    frees the chunk's `[B, chunk, V]` logits before the next chunk.
//! 3. **Body backward.** Without checkpointing, `(top · ∂h).sum().backward()` sends `∂h` into
//!    the recorded graph. With checkpointing, from the last block down: recompute block `i` from
//!    its saved input (a leaf that requires grad) with autograd on, `(out · g).sum().backward()`
//!    (its gradient with respect to `out` is exactly `g`), and take `g` = the input's gradient.
//!    Finally the embedding gets `(embed · g).sum().backward()`.
//!
//! So the gradients are the plain backward's, computed in another order; the tests check them
//! against the one-piece `forward` + `backward` (≤ 1e-6 relative in f32).

use tch::Tensor;

use crate::batch::Collated;
use crate::error::Result;
use crate::loss::span_losses;
use crate::model::CausalLm;

/// What the pass trades compute for memory with (from `TrainConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Recompute blocks during backward (`activation_checkpointing`).
    pub checkpoint: bool,
    /// Positions per loss chunk; 0 = all (`loss_chunk`).
    pub loss_chunk: usize,
}

impl Memory {
    /// The settings of `cfg`.
    pub fn of(cfg: &crate::config::TrainConfig) -> Self {
        Memory {
            checkpoint: cfg.activation_checkpointing,
            loss_chunk: cfg.loss_chunk,
        }
    }
}

/// Runs forward and backward of `c`, accumulating into the parameters' gradients the gradient
/// of `scale · Σ token losses` (the trainer passes `1 / target tokens of the global batch`).
/// `poison` multiplies the loss by NaN (fault injection). Returns the detached per-position
/// token losses `[B, T-1]` in f32 (see [`crate::loss::token_losses`]).
pub fn forward_backward(
    model: &dyn CausalLm,
    c: &Collated,
    scale: f64,
    memory: Memory,
    poison: bool,
) -> Result<Tensor> {
    let (ids, pos, mask) = (&c.input_ids, c.position_ids.as_ref(), c.attn_mask.as_ref());
    let blocks = model.blocks(ids, pos, mask)?;
    let embedded = model.embed(ids)?;

    // 1. Body.
    let mut saved: Vec<Tensor> = Vec::new();
    let top = if memory.checkpoint {
        tch::no_grad(|| -> Result<Tensor> {
            let mut x = embedded.f_detach()?;
            saved.reserve(blocks.len());
            for i in 0..blocks.len() {
                let next = blocks.forward(i, &x)?;
                saved.push(x);
                x = next;
            }
            Ok(x)
        })?
    } else {
        let mut x = embedded.shallow_clone();
        for i in 0..blocks.len() {
            x = blocks.forward(i, &x)?;
        }
        x
    };

    // 2. Loss, chunk by chunk, on a leaf copy of the top.
    let h = top.f_detach()?.set_requires_grad(true);
    let positions = h.size()[1] - 1;
    let chunk = match memory.loss_chunk {
        0 => positions,
        n => (n as i64).min(positions),
    }
    .max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < positions {
        let n = chunk.min(positions - start);
        // The logits die here: cross entropy saves only its log-softmax, so backward holds
        // that, its gradient and the logits' gradient, not the logits too.
        let tl = span_losses(&model.head(&h.f_narrow(1, start, n)?)?, &c.labels, start)?;
        let mut loss = tl.f_sum(tch::Kind::Float)?.f_mul_scalar(scale)?;
        if poison {
            loss = loss.f_mul_scalar(f64::NAN)?;
        }
        loss.f_backward()?;
        pieces.push(tl.f_detach()?);
        start += n;
    }
    let token_losses = match pieces.len() {
        0 => Tensor::f_zeros([h.size()[0], 0], (tch::Kind::Float, h.device()))?,
        1 => pieces.swap_remove(0),
        _ => Tensor::f_cat(&pieces, 1)?,
    };
    // A one-token row predicts nothing: no chunk ran and `h` has no gradient.
    let mut g = h.grad();
    if !g.defined() {
        g = h.f_zeros_like()?;
    }

    // 3. Body backward.
    if memory.checkpoint {
        for i in (0..blocks.len()).rev() {
            let x = saved[i].f_detach()?.set_requires_grad(true);
            let out = blocks.forward(i, &x)?;
            out.f_mul(&g)?.f_sum(out.kind())?.f_backward()?;
            g = x.grad();
            saved.truncate(i);
        }
        embedded.f_mul(&g)?.f_sum(embedded.kind())?.f_backward()?;
    } else {
        top.f_mul(&g)?.f_sum(top.kind())?.f_backward()?;
    }
    Ok(token_losses)
}
