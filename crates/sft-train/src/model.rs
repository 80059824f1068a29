//! The one thing the trainer needs from a model.

use tch::Tensor;

use crate::error::Result;

/// A causal language model whose parameters live in a `tch::nn::VarStore` the trainer also holds.
///
/// Besides the whole forward pass, the model exposes its pieces (embedding, blocks, head) so that
/// the trainer can run them one at a time: activation checkpointing recomputes a block during
/// backward, and the chunked loss applies the head to slices of the positions
/// ([`crate::backprop`]). `head(blocks(embed(ids)))` must equal `forward(ids)`.
/// `sft_llama::Llama` implements it (see [`crate::llama`]).
pub trait CausalLm {
    /// `input_ids` `[B, T]` i64; `position_ids` `[B, T]` (None = 0..T); `attn_mask` bool
    /// `[B, 1, T, T]`, true = may attend (None = causal). Returns logits `[B, T, V]`.
    fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Hidden state 0 (the embeddings) `[B, T, H]` of `input_ids`.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor>;

    /// The blocks prepared for one batch (positions and mask as in [`CausalLm::forward`]).
    fn blocks<'a>(
        &'a self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Box<dyn BlockStack + 'a>>;

    /// Logits `[B, T', V]` (model dtype) from the last block's output `[B, T', H]`, for any
    /// slice `T'` of the positions.
    fn head(&self, hidden: &Tensor) -> Result<Tensor>;

    /// The HF `config.json` written next to every saved weight file.
    fn hf_config(&self) -> serde_json::Value;
}

/// A model's blocks for one batch ([`CausalLm::blocks`]).
pub trait BlockStack {
    /// Number of blocks.
    fn len(&self) -> usize;

    /// Whether there are no blocks.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Block `i` on its input `[B, T, H]`.
    fn forward(&self, i: usize, x: &Tensor) -> Result<Tensor>;
}
