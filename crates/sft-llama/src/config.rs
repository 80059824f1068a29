//! Model hyperparameters: [`LlamaConfig`], read from HF `config.json` or GGUF metadata.
//!
//! `LlamaConfig` is the validated form. Its serde representation *is* the HF `config.json`
//! format: deserializing goes through [`HfConfigSpec`] (which accepts both the transformers 4
//! layout, `rope_theta` + `rope_scaling`, and the transformers 5 layout, `rope_parameters`), and
//! serializing writes a file that both transformers 4 and 5 load.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: every inverse frequency is divided by `factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (transformers' `_compute_llama3_parameters`).
    Llama3 {
        /// Divisor for low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
}

/// Hyperparameters of a LLaMA-architecture model, validated.
///
/// Build one from a file with [`LlamaConfig::from_hf_file`] or [`LlamaConfig::from_gguf`]; the serde
/// form is HF's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HfConfigSpec", into = "HfConfigSpec")]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (usually `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (HF allows a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, when the config names one.
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint was saved in (`float32`, `bfloat16`, `float16`), if stated.
    pub torch_dtype: Option<String>,
}

/// `eos_token_id` is an integer or a list in HF configs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// A `rope_scaling` / `rope_parameters` object as it appears in `config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RopeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_type: Option<String>,
    /// transformers 4 before 4.45 used `type`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    legacy_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    low_freq_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    high_freq_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_max_position_embeddings: Option<f64>,
}

/// HF `config.json` of a LLaMA model, as written on disk (unvalidated).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfConfigSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RopeSpec>,
    #[serde(default)]
    rope_parameters: Option<RopeSpec>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    torch_dtype: Option<String>,
    /// transformers 5 writes `dtype`.
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initializer_range: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_cache: Option<bool>,
}

impl TryFrom<HfConfigSpec> for LlamaConfig {
    type Error = Error;
    fn try_from(spec: HfConfigSpec) -> Result<Self> {
        spec.resolve(None)
    }
}

impl From<LlamaConfig> for HfConfigSpec {
    fn from(c: LlamaConfig) -> Self {
        c.to_hf_spec()
    }
}

impl HfConfigSpec {
    /// Validate into a [`LlamaConfig`]; `path` only labels errors.
    pub fn resolve(self, path: Option<&Path>) -> Result<LlamaConfig> {
        let model_type = self.model_type.clone().unwrap_or_default();
        let is_llama =
            model_type == "llama" || self.architectures.iter().any(|a| a == "LlamaForCausalLM");
        if !is_llama {
            let found = if model_type.is_empty() {
                self.architectures.join(",")
            } else {
                model_type
            };
            return Err(Error::UnsupportedArchitecture {
                path: path.map(Into::into),
                found,
            });
        }
        let need = |v: Option<usize>, name: &str| {
            v.filter(|&x| x > 0)
                .ok_or_else(|| Error::config(path, format!("`{name}` is missing or zero")))
        };
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads")?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    path,
                    format!("hidden_act `{act}` is not supported (only silu)"),
                ));
            }
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(Error::config(
                path,
                "attention_bias / mlp_bias are not supported",
            ));
        }
        // transformers 5 puts the RoPE base inside `rope_parameters`; older files keep it at the top.
        let rope = self
            .rope_scaling
            .clone()
            .or(self.rope_parameters.clone())
            .unwrap_or_default();
        let rope_theta = rope
            .rope_theta
            .or(self.rope_theta)
            .or(self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10000.0);
        let max_position_embeddings = self.max_position_embeddings.unwrap_or(2048);
        let rope_scaling = rope.resolve(max_position_embeddings, path)?;
        let head_dim = self
            .head_dim
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let cfg = LlamaConfig {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(x)) => vec![x],
                Some(OneOrMany::Many(v)) => v,
            },
            pad_token_id: self.pad_token_id,
            torch_dtype: self.torch_dtype.or(self.dtype),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

impl RopeSpec {
    fn resolve(&self, max_pos: usize, path: Option<&Path>) -> Result<Option<RopeScaling>> {
        let kind = self
            .rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default");
        let factor = || {
            self.factor
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| {
                    Error::config(
                        path,
                        format!("rope scaling `{kind}` needs a positive `factor`"),
                    )
                })
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
            "llama3" => {
                let get = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| {
                        Error::config(path, format!("rope scaling llama3 needs `{name}`"))
                    })
                };
                Ok(Some(RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: get(self.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: get(self.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: self
                        .original_max_position_embeddings
                        .unwrap_or(max_pos as f64),
                }))
            }
            other => Err(Error::UnsupportedRopeScaling {
                path: path.map(Into::into),
                found: other.to_string(),
            }),
        }
    }
}

impl LlamaConfig {
    /// Read HF `config.json` (a file, or a directory holding one).
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let spec: HfConfigSpec = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        spec.resolve(Some(&path))
    }

    /// Hyperparameters from a GGUF file's `llama.*` metadata (`general.architecture` must be
    /// `llama`), converted the way transformers' GGUF loader does (through `sft-gguf`'s
    /// [`sft_gguf::LlamaHparams::to_hf_config`]).
    pub fn from_gguf(gguf: &sft_gguf::GgufFile) -> Result<Self> {
        let path = gguf.path().to_path_buf();
        let hp = sft_gguf::LlamaHparams::from_gguf(gguf).map_err(|source| match source {
            sft_gguf::GgufError::UnsupportedArchitecture { path, found } => {
                Error::UnsupportedArchitecture {
                    path: Some(path),
                    found,
                }
            }
            source => Error::Gguf {
                path: path.clone(),
                source,
            },
        })?;
        let spec: HfConfigSpec = serde_json::from_value(hp.to_hf_config()).map_err(|e| {
            Error::config(
                Some(&path),
                format!("GGUF hyperparameters do not form a LLaMA config: {e}"),
            )
        })?;
        spec.resolve(Some(&path))
    }

    /// Check the invariants the model relies on.
    pub fn validate(&self, path: Option<&Path>) -> Result<()> {
        let bad = |m: String| Err(Error::config(path, m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(format!("`{name}` must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps ({}) must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!(
                "rope_theta ({}) must be greater than 1",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// Parameters in the model (embedding, layers, norms and, when untied, the head).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }

    /// Write HF `config.json` into `dir`, with `torch_dtype` set to `dtype` (e.g. `bfloat16`).
    pub fn write_hf(&self, dir: impl AsRef<Path>, dtype: Option<&str>) -> Result<()> {
        let path = dir.as_ref().join("config.json");
        let mut cfg = self.clone();
        if let Some(d) = dtype {
            cfg.torch_dtype = Some(d.to_string());
        }
        let text = serde_json::to_string_pretty(&cfg).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    }

    fn to_hf_spec(&self) -> HfConfigSpec {
        let rope = match self.rope_scaling {
            None => RopeSpec {
                rope_type: Some("default".into()),
                rope_theta: Some(self.rope_theta),
                ..Default::default()
            },
            Some(RopeScaling::Linear { factor }) => RopeSpec {
                rope_type: Some("linear".into()),
                legacy_type: Some("linear".into()),
                rope_theta: Some(self.rope_theta),
                factor: Some(factor),
                ..Default::default()
            },
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => RopeSpec {
                rope_type: Some("llama3".into()),
                legacy_type: Some("llama3".into()),
                rope_theta: Some(self.rope_theta),
                factor: Some(factor),
                low_freq_factor: Some(low_freq_factor),
                high_freq_factor: Some(high_freq_factor),
                original_max_position_embeddings: Some(original_max_position_embeddings),
            },
        };
        HfConfigSpec {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            vocab_size: Some(self.vocab_size),
            hidden_size: Some(self.hidden_size),
            intermediate_size: Some(self.intermediate_size),
            num_hidden_layers: Some(self.num_hidden_layers),
            num_attention_heads: Some(self.num_attention_heads),
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            hidden_act: Some("silu".into()),
            rms_norm_eps: Some(self.rms_norm_eps),
            // transformers 4 reads `rope_theta` + `rope_scaling`; transformers 5 prefers
            // `rope_scaling` when present and otherwise `rope_parameters`. Write all three.
            rope_theta: Some(self.rope_theta),
            rope_scaling: self.rope_scaling.map(|_| rope.clone()),
            rope_parameters: Some(RopeSpec {
                legacy_type: None,
                ..rope
            }),
            max_position_embeddings: Some(self.max_position_embeddings),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            bos_token_id: self.bos_token_id,
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(OneOrMany::One(*one)),
                many => Some(OneOrMany::Many(many.to_vec())),
            },
            pad_token_id: self.pad_token_id,
            torch_dtype: self.torch_dtype.clone(),
            dtype: self.torch_dtype.clone(),
            attention_bias: Some(false),
            mlp_bias: Some(false),
            initializer_range: Some(0.02),
            use_cache: Some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers4_and_5_layouts_alike() {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"rope_theta":500000.0,
            "rope_scaling":{"type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let a: LlamaConfig = serde_json::from_str(v4).unwrap();
        let b: LlamaConfig = serde_json::from_str(v5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.head_dim, 4);
        assert_eq!(a.eos_token_ids, vec![1, 2]);
        assert!(
            matches!(a.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        // Serializing and reading back is the identity.
        let again: LlamaConfig = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn rejects_other_architectures_and_rope_types() {
        let qwen = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let e = serde_json::from_str::<LlamaConfig>(qwen)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported architecture `qwen2`"), "{e}");
        let yarn = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn","factor":2.0}}"#;
        let e = serde_json::from_str::<LlamaConfig>(yarn)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported rope_scaling type `yarn`"), "{e}");
        let gqa = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,"head_dim":4}"#;
        let e = serde_json::from_str::<LlamaConfig>(gqa)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple"), "{e}");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","hidden_size":8}"#,
        )
        .unwrap();
        let e = LlamaConfig::from_hf_file(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains("num_attention_heads"),
            "{e}"
        );
        std::fs::write(dir.path().join("config.json"), "{ nope").unwrap();
        let e = LlamaConfig::from_hf_file(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("line 1"), "{e}");
    }
}
