//! `sft-llama`: LLaMA-architecture language models on libtorch through `tch`.
//!
//! Everything downstream (fine-tuning in `sft-train`, generation for GSM8K / HumanEval /
//! MT-Bench, hidden-state analysis) stands on this model being numerically right and fast, so the
//! crate follows transformers' `modeling_llama.py` operation for operation and is tested against
//! it (`fixtures/models/`).
//!
//! * [`LlamaConfig`]: hyperparameters from HF `config.json` (its serde form) or GGUF metadata.
//! * [`Llama`]: the model, with parameters under HF names in a [`tch::nn::VarStore`], built of
//!   blocks (attention, MLP, decoder layer, each with its own `forward`, as in candle's
//!   `llama.rs`); [`Llama::forward`] for training (packing masks and positions accepted),
//!   [`Llama::forward_hidden`] with a [`HiddenStates`] request, and [`Llama::forward_step`] with a
//!   [`KvCache`] (one key/value pair per block).
//! * Weights: [`load_safetensors`] (single or sharded), [`save_safetensors`] (HF-loadable),
//!   [`load_gguf`] (dequantized, Q/K permutation undone), and [`load_model`] for either
//!   ([`load_model_for_inference`] also stacks the projections for decoding).
//! * [`generate`]: batched greedy or top-p sampling with left padding, EOS and stop strings.
//!
//! This crate and `sft-train` are the only library crates that link libtorch. Every function
//! that creates tensors takes the [`tch::Device`] (or a model that lives on one); binaries turn a
//! `--device` string into one with [`device::DeviceSpec`].

pub mod config;
pub mod device;
mod error;
pub mod generate;
pub mod model;
pub mod weights;

pub use config::{HfConfigSpec, LlamaConfig, RopeScaling};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_ids, FinishReason, Generation, GenerationConfig, GenerationOutput,
    GenerationStats, Sampling, TextCodec, TokenizerCodec,
};
pub use model::{Blocks, ForwardOutput, HiddenStates, KvCache, Llama, LogitsFor, WeightLayout};
pub use weights::{
    load_gguf, load_model, load_model_for_inference, load_safetensors, model_config, pt_metadata,
    safetensors_bytes, save_safetensors, write_safetensors, LoadReport, LoadedModel, ModelSource,
};
