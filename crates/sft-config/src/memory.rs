//! How much memory a training run needs per device, before it starts (`train --estimate`,
//! `run_plan --estimate`, the `memory` column of `sft-sweep --dry-run`).
//!
//! The estimate counts what the trainer allocates, term by term, for a model shape
//! ([`ModelShape`]), a [`TrainConfig`] and a [`Parallel`] layout:
//!
//! * **weights** `P · b` (b = 4 bytes in f32, 2 in bf16), **gradients** `P · b` plus, in bf16,
//!   the f32 accumulators `P · 4` (whole on every rank: micro-batches accumulate locally before
//!   the reduction), **master weights** (bf16 only) `P · 4` and the **optimizer** (two f32 Adam
//!   moments) `2 · P · 4`, the last two divided by the world size under ZeRO-1;
//! * **activations** of one micro-batch of `N = micro_batch_size · max_len` tokens: what
//!   autograd saves per token and block is `b · (7H + 2·kv + 4I) + 4 · (heads + 2)` bytes (the
//!   two norms' outputs, the roped queries, keys and values, attention's output before and
//!   after the head reshape, the residual, SwiGLU's gate, activation, up and product; the
//!   flash-attention log-sum-exp and the norms' f32 reciprocals), plus in bf16 the norms' f32
//!   copies of their input (`8H`). With activation checkpointing only each block's input is
//!   kept (`N · L · H · b`) and one block is recomputed at a time;
//! * **loss**: the head's output for one chunk of `c` tokens (`c = N` without a chunk): the
//!   f32 log-softmax, its gradient and the logits' gradient, `12 · V` bytes per token, plus the
//!   last hidden state's leaf copy and gradient;
//! * **runtime**: what the process holds besides tensors (libtorch's code and allocator on CPU;
//!   the CUDA context on a GPU). Measured, see `docs/benchmarks.md`.
//!
//! The peak is the static terms plus the saved activations plus the larger of the loss phase and
//! one block's recomputation. (Checkpoints are streamed one tensor at a time and add no more
//! than the largest tensor.) Checked against measured peaks in `docs/benchmarks.md`
//! (SmolLM2-135M, sequence 2048, micro-batch 2, with and without checkpointing and the chunked
//! loss).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Dtype, TrainConfig};

/// The shape of a LLaMA-architecture model: what its memory depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// `hidden_size` (H).
    pub hidden_size: u64,
    /// `intermediate_size` (I).
    pub intermediate_size: u64,
    /// `num_hidden_layers` (L).
    pub num_hidden_layers: u64,
    /// `num_attention_heads`.
    pub num_attention_heads: u64,
    /// `num_key_value_heads`.
    pub num_key_value_heads: u64,
    /// `head_dim`.
    pub head_dim: u64,
    /// `vocab_size` (V).
    pub vocab_size: u64,
    /// Whether the LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl ModelShape {
    /// Reads the shape from an HF `config.json` value (`head_dim` defaults to
    /// `hidden_size / num_attention_heads`, `num_key_value_heads` to the head count). The
    /// error names the missing or bad key.
    pub fn from_hf_config(v: &serde_json::Value) -> Result<Self, String> {
        let get = |k: &str| -> Result<Option<u64>, String> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("`{k}` must be a positive integer, got {x}")),
            }
        };
        let need = |k: &str| get(k)?.ok_or_else(|| format!("`{k}` is missing"));
        let hidden_size = need("hidden_size")?;
        let num_attention_heads = need("num_attention_heads")?;
        Ok(ModelShape {
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: get("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim: get("head_dim")?.unwrap_or(hidden_size / num_attention_heads),
            vocab_size: need("vocab_size")?,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// Reads the shape of the model at `path`: an HF directory (its `config.json`), a
    /// `config.json` itself, or a `.gguf` file (its metadata; nothing is dequantised).
    pub fn from_model_path(path: &Path) -> crate::Result<Self> {
        let err = |message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            crate::Error::Model {
                path: path.to_path_buf(),
                message,
                source,
            }
        };
        if path.extension().is_some_and(|e| e == "gguf") {
            let file = sft_gguf::GgufFile::open(path)
                .map_err(|e| err("not a readable GGUF file".into(), Some(Box::new(e))))?;
            let hp = sft_gguf::LlamaHparams::from_gguf(&file)
                .map_err(|e| err("no LLaMA hyperparameters".into(), Some(Box::new(e))))?;
            let u = |n: usize| n as u64;
            return Ok(ModelShape {
                hidden_size: u(hp.embedding_length),
                intermediate_size: u(hp.feed_forward_length),
                num_hidden_layers: u(hp.block_count),
                num_attention_heads: u(hp.head_count),
                num_key_value_heads: u(hp.head_count_kv),
                head_dim: u(hp.rope_dimension_count),
                vocab_size: u(hp.vocab_size),
                tie_word_embeddings: hp.tie_word_embeddings,
            });
        }
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read(&file)
            .map_err(|e| err(format!("cannot read {}", file.display()), Some(Box::new(e))))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| err(format!("{} is not JSON", file.display()), Some(Box::new(e))))?;
        Self::from_hf_config(&v).map_err(|m| err(m, None))
    }

    /// Number of parameters (embedding, untied head, blocks, final norm).
    pub fn parameters(&self) -> u64 {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let block = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + head + self.num_hidden_layers * block + h
    }

    /// Bytes autograd saves per token in one block, with activations of `b` bytes.
    fn saved_per_token_block(&self, b: u64) -> u64 {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_key_value_heads * self.head_dim;
        let norm_copies = if b < 4 { 2 * 4 * h } else { 0 };
        b * (7 * h + 2 * kv + 4 * i) + 4 * (self.num_attention_heads + 2) + norm_copies
    }
}

/// The built-in shapes ([`ShapePreset`]): the paper's LLaMA-1 sizes (HF `config.json`s of
/// `huggyllama/llama-{7b,13b,30b}`; the paper calls the largest 33B) and SmolLM2-135M-Instruct,
/// the project's default model.
pub const SHAPE_PRESETS: &[(&str, ModelShape)] = &[
    ("llama-7b", llama1(4096, 11008, 32, 32)),
    ("llama-13b", llama1(5120, 13824, 40, 40)),
    ("llama-33b", llama1(6656, 17920, 60, 52)),
    (
        "smollm2-135m",
        ModelShape {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            tie_word_embeddings: true,
        },
    ),
];

/// A LLaMA-1 shape: multi-head attention with 128-dimensional heads, 32000 tokens, untied head.
const fn llama1(hidden: u64, intermediate: u64, layers: u64, heads: u64) -> ModelShape {
    ModelShape {
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        vocab_size: 32000,
        tie_word_embeddings: false,
    }
}

/// A model shape given by the name of a built-in one ([`SHAPE_PRESETS`]), for estimates where
/// the weights are not at hand (a sweep's dry run away from the cluster). Parses from its name,
/// serializes as it; an unknown name is an error about the `shape` key listing the known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapePreset {
    name: &'static str,
    shape: ModelShape,
}

impl ShapePreset {
    /// The preset's name (`llama-7b`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The preset's shape.
    pub fn shape(&self) -> ModelShape {
        self.shape
    }
}

impl std::str::FromStr for ShapePreset {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        SHAPE_PRESETS
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(name, shape)| ShapePreset { name, shape })
            .ok_or_else(|| {
                let known: Vec<&str> = SHAPE_PRESETS.iter().map(|(n, _)| *n).collect();
                crate::Error::invalid(
                    "shape",
                    format!(
                        "unknown model shape preset {s:?} (known: {})",
                        known.join(", ")
                    ),
                )
            })
    }
}

impl Serialize for ShapePreset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> Deserialize<'de> for ShapePreset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where the run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (memory = host RAM).
    Cpu,
    /// A CUDA GPU (memory = device memory, per rank).
    Cuda,
}

/// How the run is spread over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parallel {
    /// Data-parallel ranks (1 = one process).
    pub world_size: u64,
    /// ZeRO stage: 0 (every rank holds everything) or 1 (master weights, optimizer moments and
    /// the f32 gradient sums sharded across ranks).
    pub zero: u8,
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            world_size: 1,
            zero: 0,
        }
    }
}

/// Bytes a process holds besides tensors: libtorch on the CPU (measured with SmolLM2 on this
/// project's CPU machine; `docs/benchmarks.md`), the CUDA context and allocator slack on a GPU
/// (not measured here; the usual figure).
pub fn runtime_bytes(device: DeviceKind) -> u64 {
    match device {
        DeviceKind::Cpu => 900 << 20,
        DeviceKind::Cuda => 1 << 30,
    }
}

/// One row of an estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRow {
    /// What it counts (`weights`, `gradients`, …).
    pub what: String,
    /// Bytes per device.
    pub bytes: u64,
}

/// The estimated memory of one training process (one rank).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// Parameters of the model.
    pub parameters: u64,
    /// The terms, in order: weights, gradients, master weights, optimizer, activations, loss,
    /// runtime.
    pub rows: Vec<MemoryRow>,
    /// Peak bytes: the static terms + saved activations + the loss phase or one block.
    pub peak: u64,
}

impl MemoryEstimate {
    /// Estimates one rank of a run of `cfg` on a model of `shape`.
    pub fn new(shape: &ModelShape, cfg: &TrainConfig, par: Parallel, device: DeviceKind) -> Self {
        let p = shape.parameters();
        let b: u64 = match cfg.dtype {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        };
        let world = par.world_size.max(1);
        let shard = |bytes: u64| {
            if par.zero >= 1 {
                bytes.div_ceil(world)
            } else {
                bytes
            }
        };
        let weights = p * b;
        let gradients = p * b + if b < 4 { p * 4 } else { 0 };
        let master = if b < 4 { shard(p * 4) } else { 0 };
        let optimizer = shard(2 * p * 4);

        let n = cfg.micro_batch_size as u64 * cfg.max_len as u64;
        let (h, l, v) = (shape.hidden_size, shape.num_hidden_layers, shape.vocab_size);
        let one_block = n * shape.saved_per_token_block(b);
        let saved = if cfg.activation_checkpointing {
            n * l * h * b
        } else {
            l * one_block
        };
        let chunk_tokens = match cfg.loss_chunk {
            0 => n,
            c => (c as u64 * cfg.micro_batch_size as u64).min(n),
        };
        let loss = chunk_tokens * 12 * v + 2 * n * h * b;
        let runtime = runtime_bytes(device);
        let fixed = weights + gradients + master + optimizer + runtime;
        let recompute = if cfg.activation_checkpointing {
            one_block
        } else {
            0
        };
        let peak = fixed + saved + loss.max(recompute);
        let row = |what: &str, bytes| MemoryRow {
            what: what.into(),
            bytes,
        };
        MemoryEstimate {
            parameters: p,
            rows: vec![
                row("weights", weights),
                row("gradients", gradients),
                row("master weights", master),
                row("optimizer", optimizer),
                row("activations", saved + recompute),
                row("loss", loss),
                row("runtime", runtime),
            ],
            peak,
        }
    }

    /// The estimate as an aligned text table (GiB).
    pub fn table(&self) -> String {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        let mut s = format!("{:<16} {:>10}\n", "per device", "GiB");
        for r in &self.rows {
            s.push_str(&format!("{:<16} {:>10.2}\n", r.what, gib(r.bytes)));
        }
        s.push_str(&format!("{:<16} {:>10.2}\n", "peak", gib(self.peak)));
        s
    }
}

/// Formats bytes as GiB with two decimals (`12.34 GiB`).
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelShape {
        ModelShape::from_hf_config(&serde_json::json!({
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
            "tie_word_embeddings": true
        }))
        .unwrap()
    }

    fn llama7b() -> ModelShape {
        ModelShape::from_hf_config(&serde_json::json!({
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 32000
        }))
        .unwrap()
    }

    #[test]
    fn parameter_counts_match_the_released_models() {
        // SmolLM2-135M: 134,515,008; LLaMA-7B: 6,738,415,616 (HF's num_parameters()).
        assert_eq!(smollm2().parameters(), 134_515_008);
        assert_eq!(llama7b().parameters(), 6_738_415_616);
        assert_eq!(smollm2().head_dim, 64);
    }

    #[test]
    fn shapes_are_read_from_gguf_metadata_and_hf_configs() {
        let gguf = ModelShape::from_model_path(&sft_testkit::smollm2_gguf()).unwrap();
        assert_eq!(gguf, smollm2());
        let tiny = sft_testkit::workspace_root().join("fixtures/train/tiny-llama");
        let hf = ModelShape::from_model_path(&tiny).unwrap();
        assert_eq!(
            (hf.hidden_size, hf.num_hidden_layers, hf.head_dim),
            (32, 2, 8)
        );
        assert_eq!(
            ModelShape::from_model_path(&tiny.join("config.json")).unwrap(),
            hf
        );
        let e = ModelShape::from_model_path(Path::new("/nonexistent/model")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/model"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn presets_are_the_released_shapes() {
        let p = |n: &str| n.parse::<ShapePreset>().unwrap().shape();
        assert_eq!(p("llama-7b"), llama7b());
        assert_eq!(p("smollm2-135m"), smollm2());
        // HF's num_parameters() of huggyllama/llama-13b and llama-30b.
        assert_eq!(p("llama-13b").parameters(), 13_015_864_320);
        assert_eq!(p("llama-33b").parameters(), 32_528_943_616);
        assert_eq!(p("llama-33b").head_dim, 128);
        let e = "llama-8b".parse::<ShapePreset>().unwrap_err();
        assert_eq!(e.key(), Some("shape"));
        assert!(
            e.to_string().contains("\"llama-8b\"") && e.to_string().contains("llama-33b"),
            "{e}"
        );
        #[derive(Deserialize)]
        struct T {
            shape: ShapePreset,
        }
        let t: T = serde_json::from_str(r#"{"shape": "llama-13b"}"#).unwrap();
        assert_eq!(t.shape.name(), "llama-13b");
        assert!(serde_json::from_str::<T>(r#"{"shape": "gpt-2"}"#).is_err());
        assert_eq!(serde_json::to_string(&t.shape).unwrap(), "\"llama-13b\"");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = ModelShape::from_hf_config(&serde_json::json!({"hidden_size": 8})).unwrap_err();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = ModelShape::from_hf_config(&serde_json::json!({
            "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": -1
        }))
        .unwrap_err();
        assert!(e.contains("intermediate_size"), "{e}");
    }

    #[test]
    fn the_paper_recipe_at_7b_fits_an_80gb_gpu_only_with_zero_1_on_8_ranks() {
        let cfg = TrainConfig {
            dtype: Dtype::Bf16,
            micro_batch_size: 1,
            activation_checkpointing: true,
            loss_chunk: 512,
            ..TrainConfig::default()
        };
        let one = MemoryEstimate::new(&llama7b(), &cfg, Parallel::default(), DeviceKind::Cuda);
        let eight = MemoryEstimate::new(
            &llama7b(),
            &cfg,
            Parallel {
                world_size: 8,
                zero: 1,
            },
            DeviceKind::Cuda,
        );
        let gb = |b: u64| b as f64 / 1e9;
        // 16 bytes per parameter on one device: ≈ 108 GB before activations.
        assert!(gb(one.peak) > 110.0, "{}", one.table());
        // bf16 weights and gradients and the f32 gradient sums (54 GB) + an eighth of the
        // master weights and moments (10 GB) + activations and loss.
        assert!(
            gb(eight.peak) < 70.0 && gb(eight.peak) > 60.0,
            "{}",
            eight.table()
        );
        // Checkpointing and the chunk shrink activations and loss.
        let plain = MemoryEstimate::new(
            &llama7b(),
            &TrainConfig {
                activation_checkpointing: false,
                loss_chunk: 0,
                ..cfg
            },
            Parallel::default(),
            DeviceKind::Cuda,
        );
        assert!(plain.rows[4].bytes > 10 * one.rows[4].bytes);
        assert!(plain.rows[5].bytes > 3 * one.rows[5].bytes);
    }
}
