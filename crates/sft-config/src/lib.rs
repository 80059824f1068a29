//! `sft-config`: every hyperparameter of an SFT run ([`TrainConfig`], with the paper's FastChat
//! recipe as defaults) and typed, partial overrides of it ([`TrainOverrides`]).
//!
//! The crate is libtorch-free so that plan code (`sft-schedule`, `sft-sweep`, `sft-run`) can
//! resolve and validate a stage's settings without the trainer: a typo (`lrr`) or a bad value
//! (`lr = -1`) in any stage of a plan fails when the plan is loaded, naming the key, before
//! anything trains. `sft-train` re-exports everything here.
//!
//! The field list is declared once (the `train_fields!` macro below), and generates both
//! [`TrainConfig`] and [`TrainOverrides`] with [`TrainConfig::with_overrides`],
//! [`TrainOverrides::merged`] and [`TrainOverrides::KEYS`], so a field cannot be added to one
//! and forgotten in the other.

#![deny(missing_docs)]

use std::path::Path;

use serde::{Deserialize, Serialize};

mod error;
pub mod memory;

pub use error::{Error, Result};

/// Learning-rate schedule after warm-up (the HF `transformers` definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then half a cosine period down to 0 (FastChat's choice).
    Cosine,
    /// Linear warm-up, then linear decay to 0.
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            _ => Err(Error::invalid(
                "schedule",
                format!("unknown schedule `{s}` (cosine, linear, constant)"),
            )),
        }
    }
}

/// What to do with a conversation longer than `max_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first `max_len` tokens (FastChat's behaviour); counted.
    Truncate,
    /// Leave the record out; counted.
    Drop,
}

/// What to do when a loss or gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop before the optimizer update; the weights stay those of the previous step.
    Abort,
    /// Skip the update, count it, and abort after `max_consecutive_skips` in a row.
    Skip,
}

/// What to do with a record whose loss mask cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskErrorPolicy {
    /// Fail the run, naming the record.
    Error,
    /// Leave the record out and count it (listed in the data report).
    Skip,
}

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Everything in f32 (the only choice on CPU).
    F32,
    /// f32 master weights and optimizer state, forward/backward on a bf16 copy of the weights
    /// (CUDA only; see `docs/train.md`).
    Bf16,
}

/// Declares the fields of [`TrainConfig`] once and generates [`TrainConfig`] (with its
/// `Default`), [`TrainOverrides`] (every field as an `Option`) and the functions that combine
/// them.
macro_rules! train_fields {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, )*) => {
        /// All hyperparameters of one SFT run.
        ///
        /// `Default` is the recipe the paper used (FastChat `train.py` on the HF Trainer): lr 2e-5,
        /// 3 epochs, global batch 16, warm-up ratio 0.03, cosine, weight decay 0, max length 2048,
        /// Adam betas (0.9, 0.999), eps 1e-8, gradient clipping at 1.0.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct TrainConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for TrainConfig {
            fn default() -> Self {
                TrainConfig { $( $name: $default, )* }
            }
        }

        /// Overrides of some [`TrainConfig`] fields: what a plan's `[train]` table or a stage's
        /// `train = { … }` holds. Every field is an `Option` (`None` = not overridden); unknown
        /// keys are an error and the `None`s are not serialized, so the serialized form is the
        /// table as written.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct TrainOverrides {
            $(
                $(#[doc = $doc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        impl TrainOverrides {
            /// Every key an override (and a [`TrainConfig`]) may have, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($name), )*];

            /// `self` with every field set in `over` replacing the same field of `self`.
            pub fn merged(&self, over: &TrainOverrides) -> TrainOverrides {
                TrainOverrides {
                    $( $name: over.$name.clone().or_else(|| self.$name.clone()), )*
                }
            }

            /// Whether no field is set.
            pub fn is_empty(&self) -> bool {
                true $( && self.$name.is_none() )*
            }

            /// Reads overrides from a JSON object, naming the offending key in errors: an
            /// unknown key is [`Error::UnknownKey`], a value of the wrong type [`Error::Value`].
            pub fn from_json(value: &serde_json::Value) -> Result<TrainOverrides> {
                let obj = value.as_object().ok_or_else(|| Error::NotATable {
                    found: value.to_string(),
                })?;
                if let Some(key) = obj.keys().find(|k| !Self::KEYS.contains(&k.as_str())) {
                    return Err(Error::UnknownKey {
                        key: key.clone(),
                        known: Self::KEYS.join(", "),
                    });
                }
                let mut out = TrainOverrides::default();
                $(
                    if let Some(v) = obj.get(stringify!($name)) {
                        out.$name = Some(serde_json::from_value(v.clone()).map_err(|source| {
                            Error::Value { key: stringify!($name).to_string(), source }
                        })?);
                    }
                )*
                Ok(out)
            }
        }

        impl TrainConfig {
            /// `self` with every field set in `over` replaced (not validated: call
            /// [`TrainConfig::validate`]).
            pub fn with_overrides(&self, over: &TrainOverrides) -> TrainConfig {
                TrainConfig {
                    $( $name: over.$name.clone().unwrap_or_else(|| self.$name.clone()), )*
                }
            }
        }
    };
}

train_fields! {
    /// Chat template name (`vicuna_v1.1`, `chatml`, or `model` for the model's own template).
    template: String = "vicuna_v1.1".to_string(),
    /// Peak learning rate.
    lr: f64 = 2e-5,
    /// Passes over the data.
    epochs: u32 = 3,
    /// Stop after this many optimizer steps (also shortens the schedule).
    max_steps: Option<u64> = None,
    /// Sequences (or packed rows) per forward pass.
    micro_batch_size: usize = 2,
    /// Micro-batches per optimizer step; global batch = micro × accumulation.
    grad_accum: usize = 8,
    /// Fraction of the total steps spent warming up (rounded up, as in HF).
    warmup_ratio: f64 = 0.03,
    /// Schedule after warm-up.
    schedule: Schedule = Schedule::Cosine,
    /// Decoupled weight decay; never applied to norms and biases.
    weight_decay: f64 = 0.0,
    /// Adam β1.
    adam_beta1: f64 = 0.9,
    /// Adam β2.
    adam_beta2: f64 = 0.999,
    /// Adam ε.
    adam_eps: f64 = 1e-8,
    /// Clip the global gradient norm to this (0 disables clipping; the norm is still reported).
    max_grad_norm: f64 = 1.0,
    /// Maximum tokens per sequence (and per packed row).
    max_len: usize = 2048,
    /// Over-long records: truncate or drop.
    overlong: Overlong = Overlong::Truncate,
    /// Pack several conversations into each row (block-diagonal attention, positions reset).
    packing: bool = false,
    /// Without packing, sort micro-batches by length inside shuffled mega-batches to cut padding.
    group_by_length: bool = true,
    /// Seed of the data order (epoch `e` uses `seed + e`) and of libtorch.
    seed: u64 = 42,
    /// Compute precision.
    dtype: Dtype = Dtype::F32,
    /// Non-finite loss/gradient policy.
    nan_policy: NanPolicy = NanPolicy::Abort,
    /// With `nan_policy = skip`, abort after this many skipped steps in a row.
    max_consecutive_skips: u32 = 5,
    /// Records whose mask cannot be computed: error or counted skip.
    on_mask_error: MaskErrorPolicy = MaskErrorPolicy::Error,
    /// Write a checkpoint every this many steps (0 = only at the end and on interrupt).
    save_every: u64 = 0,
    /// Keep this many newest checkpoints (at least 1).
    keep_last: usize = 2,
    /// How many global batches `--dump-batches` writes.
    dump_batches: usize = 2,
    /// Keep only each decoder block's input during the forward pass and recompute the block
    /// during backward: activation memory of one block instead of all, for about one more
    /// forward pass of compute. The same gradients (summation order aside).
    activation_checkpointing: bool = false,
    /// Compute the loss this many positions of each row at a time (final norm, LM head,
    /// log-softmax and their backward per chunk), so the `[B, T, V]` logits never exist at
    /// once; 0 = all positions at once. The same loss and gradients (summation order aside).
    loss_chunk: usize = 0,
    /// ZeRO stage of a data-parallel run: 0 (every rank holds the whole optimizer state) or 1
    /// (the f32 master weights and the Adam moments sharded across the ranks: reduce-scatter
    /// of the gradients, each rank updates its shard, all-gather of the weights). The same
    /// weights as stage 0; ignored by a single process.
    zero: u8 = 0,
}

/// The fields that only change how a run is operated (checkpoint cadence and retention, debug
/// dumps, memory-for-compute trades), never the weights it produces beyond floating-point
/// summation order. Content keys of trained stages leave them out
/// ([`TrainConfig::weights_relevant`]), so changing them reuses a stage, and a run may be
/// resumed with other values (turn on checkpointing after an out-of-memory error and resume).
pub const OPERATIONAL_KEYS: [&str; 6] = [
    "save_every",
    "keep_last",
    "dump_batches",
    "activation_checkpointing",
    "loss_chunk",
    "zero",
];

impl TrainConfig {
    /// Reads a TOML file; missing keys take the defaults, unknown keys are an error, and the
    /// result is validated.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        cfg.validate().map_err(|e| Error::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(cfg)
    }

    /// Global batch size in micro-batch rows.
    pub fn global_batch(&self) -> usize {
        self.micro_batch_size * self.grad_accum
    }

    /// Checks ranges; the error ([`Error::Invalid`]) names the first offending key. The trainer
    /// calls it before any work, and plans call it for every stage when they are loaded.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, m: String| Err(Error::invalid(key, m));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", format!("must be finite and >= 0, got {}", self.lr));
        }
        if self.micro_batch_size == 0 {
            return bad("micro_batch_size", "must be >= 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be >= 1".into());
        }
        if self.max_len < 2 {
            return bad("max_len", format!("must be >= 2, got {}", self.max_len));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("must be in [0, 1], got {}", self.warmup_ratio),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(
                "max_grad_norm",
                format!("must be >= 0, got {}", self.max_grad_norm),
            );
        }
        if !(0.0..1.0).contains(&self.adam_beta1) {
            return bad(
                "adam_beta1",
                format!("must be in [0, 1), got {}", self.adam_beta1),
            );
        }
        if !(0.0..1.0).contains(&self.adam_beta2) {
            return bad(
                "adam_beta2",
                format!("must be in [0, 1), got {}", self.adam_beta2),
            );
        }
        if self.zero > 1 {
            return bad(
                "zero",
                format!("must be 0 or 1 (ZeRO stage), got {}", self.zero),
            );
        }
        if self.keep_last == 0 {
            return bad("keep_last", "must be >= 1".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs", "must be >= 1 (or set max_steps)".into());
        }
        Ok(())
    }

    /// The config as a JSON object without the [`OPERATIONAL_KEYS`]: everything that can change
    /// the weights a run produces (what stage keys hash).
    pub fn weights_relevant(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            for k in OPERATIONAL_KEYS {
                obj.remove(k);
            }
        }
        v
    }

    /// The fields that must not change when a run is resumed, as `(name, value)` pairs (the
    /// trainer refuses a resume whose checkpoint recorded other values).
    pub fn resume_fingerprint(&self) -> Vec<(&'static str, String)> {
        vec![
            ("seed", self.seed.to_string()),
            ("micro_batch_size", self.micro_batch_size.to_string()),
            ("grad_accum", self.grad_accum.to_string()),
            ("max_len", self.max_len.to_string()),
            ("packing", self.packing.to_string()),
            ("group_by_length", self.group_by_length.to_string()),
            ("template", self.template.clone()),
            ("epochs", self.epochs.to_string()),
            ("max_steps", format!("{:?}", self.max_steps)),
            ("overlong", format!("{:?}", self.overlong)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_cover_every_config_field() {
        let cfg = serde_json::to_value(TrainConfig::default()).unwrap();
        let mut keys: Vec<&str> = cfg
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut known = TrainOverrides::KEYS.to_vec();
        keys.sort_unstable();
        known.sort_unstable();
        assert_eq!(keys, known);
        // Overriding every field with the config's own values gives the config back, and an
        // override built from a whole config sets every field.
        let full = TrainOverrides::from_json(&cfg).unwrap();
        assert!(TrainOverrides::KEYS
            .iter()
            .all(|k| serde_json::to_value(&full).unwrap().get(k).is_some()));
        let other = TrainConfig {
            lr: 1.0,
            max_steps: Some(3),
            ..TrainConfig::default()
        };
        assert_eq!(other.with_overrides(&full), TrainConfig::default());
    }

    #[test]
    fn overrides_apply_merge_and_serialize_without_nones() {
        let a = TrainOverrides::from_json(&json!({"lr": 1e-5, "epochs": 2})).unwrap();
        let b = TrainOverrides::from_json(&json!({"epochs": 1, "max_steps": 7})).unwrap();
        let m = a.merged(&b);
        assert_eq!(m.lr, Some(1e-5));
        assert_eq!(m.epochs, Some(1));
        assert_eq!(m.max_steps, Some(Some(7)));
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"lr": 1e-5, "epochs": 1, "max_steps": 7})
        );
        let cfg = TrainConfig::default().with_overrides(&m);
        assert_eq!((cfg.lr, cfg.epochs, cfg.max_steps), (1e-5, 1, Some(7)));
        assert_eq!(cfg.grad_accum, 8);
        assert!(TrainOverrides::default().is_empty() && !m.is_empty());
        let back: TrainOverrides = toml::from_str(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = TrainOverrides::from_json(&json!({"lrr": 5e-4})).unwrap_err();
        assert!(
            matches!(&e, Error::UnknownKey { key, .. } if key == "lrr"),
            "{e}"
        );
        assert_eq!(e.key(), Some("lrr"));
        let e = TrainOverrides::from_json(&json!({"schedule": "cosin"})).unwrap_err();
        assert_eq!(e.key(), Some("schedule"), "{e}");
        let e = TrainOverrides::from_json(&json!({"lr": "fast"})).unwrap_err();
        assert!(matches!(&e, Error::Value { key, .. } if key == "lr"), "{e}");
        assert!(toml::from_str::<TrainOverrides>("lrr = 1.0").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        for (cfg, key) in [
            (
                TrainConfig {
                    lr: -1.0,
                    ..Default::default()
                },
                "lr",
            ),
            (
                TrainConfig {
                    grad_accum: 0,
                    ..Default::default()
                },
                "grad_accum",
            ),
            (
                TrainConfig {
                    adam_beta2: 1.0,
                    ..Default::default()
                },
                "adam_beta2",
            ),
            (
                TrainConfig {
                    keep_last: 0,
                    ..Default::default()
                },
                "keep_last",
            ),
            (
                TrainConfig {
                    epochs: 0,
                    ..Default::default()
                },
                "epochs",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(
                matches!(&e, Error::Invalid { key: k, .. } if k == key),
                "{e}"
            );
            assert!(e.to_string().starts_with(&format!("`{key}`")), "{e}");
        }
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn weights_relevant_leaves_out_operational_keys_only() {
        let v = TrainConfig::default().weights_relevant();
        let obj = v.as_object().unwrap();
        assert_eq!(
            obj.len(),
            TrainOverrides::KEYS.len() - OPERATIONAL_KEYS.len()
        );
        for k in OPERATIONAL_KEYS {
            assert!(
                TrainOverrides::KEYS.contains(&k) && !obj.contains_key(k),
                "{k}"
            );
        }
        let saving = TrainConfig {
            save_every: 10,
            keep_last: 5,
            ..Default::default()
        };
        assert_eq!(saving.weights_relevant(), v);
        let other = TrainConfig {
            lr: 1e-4,
            ..Default::default()
        };
        assert_ne!(other.weights_relevant(), v);
    }

    #[test]
    fn toml_file_errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "lr = 1e-4\nepochs = 1\n").unwrap();
        let cfg = TrainConfig::from_toml_file(&p).unwrap();
        assert_eq!((cfg.lr, cfg.epochs, cfg.grad_accum), (1e-4, 1, 8));
        std::fs::write(&p, "lrr = 1e-4\n").unwrap();
        let msg = TrainConfig::from_toml_file(&p).unwrap_err().to_string();
        assert!(msg.contains("c.toml") && msg.contains("lrr"), "{msg}");
        std::fs::write(&p, "max_len = 1\n").unwrap();
        let e = TrainConfig::from_toml_file(&p).unwrap_err();
        assert_eq!(e.key(), Some("max_len"));
        assert!(e.to_string().contains("c.toml"), "{e}");
    }
}
