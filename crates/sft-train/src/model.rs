//! The one thing the trainer needs from a model.

use tch::Tensor;

use crate::error::Result;

/// A causal language model whose parameters live in a `tch::nn::VarStore` the trainer also holds.
///
/// `sft_llama::Llama` implements it (see [`crate::llama`]); tests use small stand-ins.
pub trait CausalLm {
    /// `input_ids` `[B, T]` i64; `position_ids` `[B, T]` (None = 0..T); `attn_mask` bool
    /// `[B, 1, T, T]`, true = may attend (None = causal). Returns logits `[B, T, V]`.
    fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// The HF `config.json` written next to every saved weight file.
    fn hf_config(&self) -> serde_json::Value;
}
