//! `sft-gguf`: read GGUF model files without libtorch.
//!
//! The toolkit's default model (SmolLM2-135M-Instruct) ships as a quantized GGUF file, and
//! researchers bring llama.cpp checkpoints too. This crate turns such a file into what the LLaMA
//! model (`sft-llama`) and the tokenizer (`sft-chat`) need: typed metadata, a tensor directory in
//! HF terms, and `f32`/`bf16`/`f16` values.
//!
//! * [`GgufFile::open`] memory-maps a GGUF v2/v3 file and parses its header, all metadata value
//!   types (arrays included) and the tensor directory; every tensor is bounds-checked on open, so a
//!   truncated file fails there, naming the tensor.
//! * [`GgufFile::dequantize_f32`] (and `_bf16`, `_f16`) decode F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//!   Q4_K, Q5_K and Q6_K **bit-exactly** like python `gguf.quants.dequantize` (tested against
//!   fixtures it produced). Other ggml types are read into the directory but refused with
//!   [`GgufError::UnsupportedType`], naming the tensor and type.
//! * Shapes: GGUF lists dimensions fastest-first ([`TensorInfo::dims`]); [`TensorInfo::shape`] gives
//!   PyTorch order (`[out, in]`). The element order of the data is row-major for that shape.
//! * [`gguf_to_hf_name`] maps `blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight` etc.
//!   llama.cpp permutes the rows of Q and K; [`unpermute_qk`] undoes it (see [`names`]).
//! * [`LlamaHparams::from_gguf`] reads `llama.*` hyperparameters and converts them to an HF
//!   `config.json` ([`LlamaHparams::to_hf_config`]).

#![deny(missing_docs)]

mod dequant;
mod error;
mod file;
mod ggml_type;
mod llama;
pub mod names;
mod value;

pub use dequant::dequantize;
pub use error::{GgufError, Result};
pub use file::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use ggml_type::GgmlType;
pub use llama::{LlamaHparams, RopeScaling};
pub use names::{gguf_to_hf_name, hf_to_gguf_name, permute_qk, qk_kind, unpermute_qk};
pub use value::Value;
