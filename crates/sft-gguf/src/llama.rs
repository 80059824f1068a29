//! LLaMA hyperparameters from GGUF metadata, and their HF `config.json` equivalent.

use crate::{GgufError, GgufFile, Result};

/// RoPE scaling read from `llama.rope.scaling.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    /// `llama.rope.scaling.type` (`linear`, `yarn`, ...).
    pub kind: String,
    /// `llama.rope.scaling.factor`.
    pub factor: f64,
    /// `llama.rope.scaling.original_context_length`, if present.
    pub original_context_length: Option<u64>,
}

/// The hyperparameters of a `general.architecture = llama` GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// `llama.block_count` (HF `num_hidden_layers`).
    pub block_count: usize,
    /// `llama.embedding_length` (HF `hidden_size`).
    pub embedding_length: usize,
    /// `llama.feed_forward_length` (HF `intermediate_size`).
    pub feed_forward_length: usize,
    /// `llama.attention.head_count` (HF `num_attention_heads`).
    pub head_count: usize,
    /// `llama.attention.head_count_kv`, defaulting to `head_count` (HF `num_key_value_heads`).
    pub head_count_kv: usize,
    /// `llama.context_length` (HF `max_position_embeddings`).
    pub context_length: usize,
    /// `llama.rope.freq_base`, default 10000 (HF `rope_theta`).
    pub rope_freq_base: f64,
    /// `llama.rope.dimension_count`, default `embedding_length / head_count` (the head dimension).
    pub rope_dimension_count: usize,
    /// `llama.attention.layer_norm_rms_epsilon` (HF `rms_norm_eps`), kept as stored (f32).
    pub rms_norm_eps: f32,
    /// `llama.vocab_size`, else the length of `tokenizer.ggml.tokens`, else `token_embd.weight`'s rows.
    pub vocab_size: usize,
    /// True when the file has no `output.weight`: the LM head reuses `token_embd.weight`.
    pub tie_word_embeddings: bool,
    /// RoPE scaling, when `llama.rope.scaling.type` is present and not `none`.
    pub rope_scaling: Option<RopeScaling>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
}

fn usize_of(file: &GgufFile, key: &str) -> Result<usize> {
    let v = file.get_u64(key)?;
    usize::try_from(v).map_err(|_| GgufError::Invalid {
        path: file.path().to_path_buf(),
        message: format!("{key} = {v} does not fit in usize"),
    })
}

impl LlamaHparams {
    /// Read the hyperparameters; fails with [`GgufError::UnsupportedArchitecture`] unless
    /// `general.architecture` is `llama`, and names any missing key.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::UnsupportedArchitecture {
                path: file.path().to_path_buf(),
                found: arch.to_string(),
            });
        }
        let head_count = usize_of(file, "llama.attention.head_count")?;
        let embedding_length = usize_of(file, "llama.embedding_length")?;
        let head_count_kv = if file.get("llama.attention.head_count_kv").is_some() {
            usize_of(file, "llama.attention.head_count_kv")?
        } else {
            head_count
        };
        if head_count == 0
            || head_count_kv == 0
            || embedding_length % head_count != 0
            || head_count % head_count_kv != 0
        {
            return Err(GgufError::Invalid {
                path: file.path().to_path_buf(),
                message: format!("inconsistent attention shape: embedding_length {embedding_length}, head_count {head_count}, head_count_kv {head_count_kv}"),
            });
        }
        let rope_freq_base = if file.get("llama.rope.freq_base").is_some() {
            file.get_f64("llama.rope.freq_base")?
        } else {
            10000.0
        };
        let rope_dimension_count = if file.get("llama.rope.dimension_count").is_some() {
            usize_of(file, "llama.rope.dimension_count")?
        } else {
            embedding_length / head_count
        };
        let vocab_size = if file.get("llama.vocab_size").is_some() {
            usize_of(file, "llama.vocab_size")?
        } else if file.get("tokenizer.ggml.tokens").is_some() {
            file.get_str_array("tokenizer.ggml.tokens")?.len()
        } else {
            file.tensor("token_embd.weight")?.shape()[0]
        };
        let rope_scaling = match file.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some(kind) => Some(RopeScaling {
                kind: kind.to_string(),
                factor: file.get_f64("llama.rope.scaling.factor")?,
                original_context_length: file
                    .get("llama.rope.scaling.original_context_length")
                    .and_then(|v| v.as_int())
                    .map(|v| v as u64),
            }),
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => Ok(Some(u32::try_from(file.get_u64(key)?).map_err(|_| {
                    GgufError::Invalid {
                        path: file.path().to_path_buf(),
                        message: format!("{key} does not fit in u32"),
                    }
                })?)),
            }
        };
        Ok(Self {
            block_count: usize_of(file, "llama.block_count")?,
            embedding_length,
            feed_forward_length: usize_of(file, "llama.feed_forward_length")?,
            head_count,
            head_count_kv,
            context_length: usize_of(file, "llama.context_length")?,
            rope_freq_base,
            rope_dimension_count,
            rms_norm_eps: file.get_f64("llama.attention.layer_norm_rms_epsilon")? as f32,
            vocab_size,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            rope_scaling,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// Head dimension (`embedding_length / head_count`).
    pub fn head_dim(&self) -> usize {
        self.embedding_length / self.head_count
    }

    /// The equivalent HF `config.json` (`LlamaForCausalLM`), as transformers derives it from GGUF.
    /// `rms_norm_eps` is written as the `f32` value widened to `f64`, exactly as stored.
    pub fn to_hf_config(&self) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.embedding_length,
            "intermediate_size": self.feed_forward_length,
            "num_hidden_layers": self.block_count,
            "num_attention_heads": self.head_count,
            "num_key_value_heads": self.head_count_kv,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.context_length,
            "rope_theta": self.rope_freq_base,
            "rms_norm_eps": f64::from(self.rms_norm_eps),
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
        });
        if let Some(id) = self.bos_token_id {
            cfg["bos_token_id"] = id.into();
        }
        if let Some(id) = self.eos_token_id {
            cfg["eos_token_id"] = id.into();
        }
        if let Some(rs) = &self.rope_scaling {
            let mut scaling =
                serde_json::json!({ "type": rs.kind, "rope_type": rs.kind, "factor": rs.factor });
            if let Some(n) = rs.original_context_length {
                scaling["original_max_position_embeddings"] = n.into();
            }
            cfg["rope_scaling"] = scaling;
        }
        cfg
    }
}
