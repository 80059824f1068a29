//! Plans and stages: the on-disk spec ([`PlanSpec`]), the validated plan ([`Plan`]) and stage keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::canonical::canonical_json;
use crate::error::{Error, Result};
use crate::strategy::Strategy;
use sft_compose::Ratio;

/// The plan file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Overrides of the trainer's configuration (`epochs`, `lr`, `batch_size`, `max_len`, …).
///
/// Kept as JSON values keyed by the trainer's field names, so this crate does not depend on the
/// trainer; the runner turns them into the trainer's config and rejects unknown fields there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrainSettings(pub BTreeMap<String, Value>);

impl TrainSettings {
    /// No overrides.
    pub fn new() -> Self {
        TrainSettings(BTreeMap::new())
    }

    /// Sets one field, returning `self` for chaining.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// `self` with every field of `over` replacing the same field of `self` (a shallow merge).
    pub fn merged(&self, over: &TrainSettings) -> TrainSettings {
        let mut out = self.0.clone();
        out.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        TrainSettings(out)
    }

    /// The settings as one JSON object.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// What happens to the optimizer state and learning-rate schedule between stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerState {
    /// Fresh optimizer and schedule (warm-up included) per stage, as separate SFT runs in the paper.
    #[default]
    Restart,
    /// Carry the previous stage's optimizer moments over (the schedule still restarts).
    Carry,
}

/// One stage of a plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// A short name, unique within the plan (`specialized`, `general+k`).
    pub name: String,
    /// Source name → proportion of that source's pool (`1`, `"1/256"`, `0.25`).
    pub mixture: BTreeMap<String, Ratio>,
    /// Overrides of the plan-wide training settings for this stage.
    #[serde(default, skip_serializing_if = "is_empty_settings")]
    pub train: TrainSettings,
    /// Overrides the plan-wide optimizer-state policy for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_state: Option<OptimizerState>,
}

fn is_empty_settings(t: &TrainSettings) -> bool {
    t.0.is_empty()
}

/// A plan as written in a TOML file: either a built-in `strategy` or explicit `[[stages]]`.
///
/// ```toml
/// format_version = 1
/// name = "code-then-all"
/// [train]            # defaults for every stage
/// epochs = 1
/// [[stages]]
/// name = "code"
/// mixture = { code = 1 }
/// [[stages]]
/// name = "all"
/// mixture = { general = 1, code = "1/16", math = "1/16" }
/// train = { lr = 1e-5 }
/// ```
///
/// The optional `[run]` table (model, data subsets, evaluation) belongs to the runner; this crate
/// keeps it as an opaque JSON value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The plan's name; defaults to the strategy's name for built-ins. Required with `stages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A built-in strategy (`dmt:1/256`, `multi-task`, …) instead of explicit stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Explicit stages, in training order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSpec>,
    /// Training settings for every stage (a stage's own `train` wins).
    #[serde(default, skip_serializing_if = "is_empty_settings")]
    pub train: TrainSettings,
    /// The default optimizer-state policy between stages.
    #[serde(default)]
    pub optimizer_state: OptimizerState,
    /// Runner settings, opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Value>,
}

impl PlanSpec {
    /// Parses a plan file's text; `origin` (usually the path) prefixes every error.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<PlanSpec> {
        let spec: PlanSpec = toml::from_str(text).map_err(|e| Error::Toml {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        if spec.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                origin: origin.to_string(),
                found: spec.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(spec)
    }

    /// Renders the spec as TOML (the inverse of [`PlanSpec::from_toml_str`]).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Invalid {
            plan: self.name.clone().unwrap_or_default(),
            detail: format!("cannot render as TOML: {e}"),
        })
    }

    /// Validates the spec into a [`Plan`]; every source a stage names must be in `known_sources`.
    pub fn resolve(&self, known_sources: &[&str]) -> Result<Plan> {
        let plan = match (&self.strategy, self.stages.is_empty()) {
            (Some(_), false) => {
                return Err(Error::Invalid {
                    plan: self.name.clone().unwrap_or_default(),
                    detail: "give either `strategy` or `[[stages]]`, not both".into(),
                })
            }
            (Some(s), true) => {
                let strategy = Strategy::parse(s)?;
                let mut plan = strategy.plan();
                if let Some(name) = &self.name {
                    plan.name = name.clone();
                }
                for stage in &mut plan.stages {
                    stage.optimizer_state = self.optimizer_state;
                }
                if plan.stages.first().map(|s| s.optimizer_state) == Some(OptimizerState::Carry) {
                    plan.stages[0].optimizer_state = OptimizerState::Restart;
                }
                plan
            }
            (None, _) => {
                let name = self.name.clone().ok_or_else(|| Error::Invalid {
                    plan: String::new(),
                    detail: "a plan with explicit stages needs a `name`".into(),
                })?;
                let stages = self
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(index, s)| Stage {
                        index,
                        name: s.name.clone(),
                        mixture: s.mixture.clone(),
                        train: s.train.clone(),
                        optimizer_state: s.optimizer_state.unwrap_or(self.optimizer_state),
                    })
                    .collect();
                Plan::new(name, stages)?
            }
        };
        let plan = plan.with_train_defaults(&self.train);
        plan.check_sources(known_sources)?;
        Ok(plan)
    }
}

/// One validated stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// 0-based position in the plan.
    pub index: usize,
    /// Name, unique within the plan.
    pub name: String,
    /// Source name → proportion of that source's pool; every proportion is above 0.
    pub mixture: BTreeMap<String, Ratio>,
    /// The stage's full training settings (plan defaults merged with its own overrides).
    pub train: TrainSettings,
    /// Whether the optimizer state restarts or carries over from the previous stage.
    pub optimizer_state: OptimizerState,
}

impl Stage {
    /// The proportion of `source` this stage takes (`None` when it does not read it).
    pub fn take(&self, source: &str) -> Option<Ratio> {
        self.mixture.get(source).copied()
    }

    /// How many records this stage takes from a pool of `pool` records of `source`:
    /// `floor(pool · proportion)` (at least 1 when the proportion is above 0), as `sft-compose`
    /// selects them.
    pub fn count_of(&self, source: &str, pool: usize) -> usize {
        self.take(source).map_or(0, |r| r.count_of(pool))
    }
}

/// A validated plan: at least one stage, each with a non-empty mixture, unique stage names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The plan's name (used for run directories and reports).
    pub name: String,
    /// The stages in training order; stage `i + 1` starts from stage `i`'s weights.
    pub stages: Vec<Stage>,
}

/// What a stage key depends on besides the plan: the base model and the data sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyContext {
    /// A fingerprint of the base model (e.g. the SHA-256 of its weights file).
    pub base_model: String,
    /// Source name → fingerprint of the source's pool (file hash, subset size, seed, …).
    pub sources: BTreeMap<String, String>,
}

/// A stage's content key and the material it hashes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageKey {
    /// Lowercase hex SHA-256 of `canonical_json(material)`.
    pub key: String,
    /// The previous stage's key, if any.
    pub parent: Option<String>,
    /// Everything the key covers, as JSON (written to the stage store as `stage.json`).
    pub material: Value,
}

impl Plan {
    /// Validates `stages` (renumbering their indices) into a plan.
    pub fn new(name: impl Into<String>, mut stages: Vec<Stage>) -> Result<Plan> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(Error::Invalid {
                plan: name,
                detail: "the plan name is empty".into(),
            });
        }
        if stages.is_empty() {
            return Err(Error::NoStages { plan: name });
        }
        let mut seen = BTreeSet::new();
        for (i, stage) in stages.iter_mut().enumerate() {
            stage.index = i;
            if stage.name.trim().is_empty() {
                return Err(Error::Invalid {
                    plan: name,
                    detail: format!("stage {i} has an empty name"),
                });
            }
            if !seen.insert(stage.name.clone()) {
                return Err(Error::Invalid {
                    plan: name,
                    detail: format!("two stages are named {:?}", stage.name),
                });
            }
            stage.mixture.retain(|_, r| !r.is_zero());
            if stage.mixture.is_empty() {
                return Err(Error::EmptyStage {
                    plan: name,
                    stage: stage.name.clone(),
                });
            }
            if i == 0 && stage.optimizer_state == OptimizerState::Carry {
                return Err(Error::Invalid {
                    plan: name,
                    detail: format!(
                        "stage {:?} is first, so it has no optimizer state to carry",
                        stage.name
                    ),
                });
            }
        }
        Ok(Plan { name, stages })
    }

    /// Every source some stage reads, sorted.
    pub fn sources(&self) -> BTreeSet<&str> {
        self.stages
            .iter()
            .flat_map(|s| s.mixture.keys().map(String::as_str))
            .collect()
    }

    /// Fails with [`Error::UnknownSource`] on the first source not in `known`.
    pub fn check_sources(&self, known: &[&str]) -> Result<()> {
        for stage in &self.stages {
            for source in stage.mixture.keys() {
                if !known.contains(&source.as_str()) {
                    return Err(Error::UnknownSource {
                        plan: self.name.clone(),
                        stage: stage.name.clone(),
                        source_name: source.clone(),
                        known: known.join(", "),
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies plan-wide training defaults under every stage's own settings.
    pub fn with_train_defaults(mut self, defaults: &TrainSettings) -> Plan {
        for stage in &mut self.stages {
            stage.train = defaults.merged(&stage.train);
        }
        self
    }

    /// The content key of every stage, in order.
    ///
    /// A key covers the stage's mixture, its training settings, its optimizer-state policy, the
    /// parent's key (so everything upstream), the base model and the fingerprints of the sources it
    /// reads. It does not cover the stage's name or the plan's name, so identical stages of
    /// different plans get the same key.
    pub fn stage_keys(&self, ctx: &KeyContext) -> Result<Vec<StageKey>> {
        let mut keys: Vec<StageKey> = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let parent = keys.last().map(|k| k.key.clone());
            let mut sources = serde_json::Map::new();
            for name in stage.mixture.keys() {
                let fp = ctx.sources.get(name).ok_or_else(|| Error::Invalid {
                    plan: self.name.clone(),
                    detail: format!(
                        "no fingerprint for source {name:?} read by stage {:?}",
                        stage.name
                    ),
                })?;
                sources.insert(name.clone(), Value::String(fp.clone()));
            }
            let mixture: serde_json::Map<String, Value> = stage
                .mixture
                .iter()
                .map(|(k, r)| (k.clone(), Value::String(r.to_string())))
                .collect();
            let material = json!({
                "format_version": FORMAT_VERSION,
                "mixture": mixture,
                "parent": parent,
                "train": stage.train.to_value(),
                "optimizer_state": stage.optimizer_state,
                "base_model": ctx.base_model,
                "sources": sources,
            });
            let key = hex::encode(Sha256::digest(canonical_json(&material).as_bytes()));
            keys.push(StageKey {
                key,
                parent,
                material,
            });
        }
        Ok(keys)
    }

    /// The plan as an explicit-stages spec (what `plan.resolved.toml` holds).
    pub fn to_spec(&self) -> PlanSpec {
        PlanSpec {
            format_version: FORMAT_VERSION,
            name: Some(self.name.clone()),
            strategy: None,
            stages: self
                .stages
                .iter()
                .map(|s| StageSpec {
                    name: s.name.clone(),
                    mixture: s.mixture.clone(),
                    train: s.train.clone(),
                    optimizer_state: Some(s.optimizer_state),
                })
                .collect(),
            train: TrainSettings::new(),
            optimizer_state: OptimizerState::Restart,
            run: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::STANDARD_SOURCES;

    fn ctx() -> KeyContext {
        KeyContext {
            base_model: "model-sha".into(),
            sources: STANDARD_SOURCES
                .iter()
                .map(|s| (s.to_string(), format!("{s}-fp")))
                .collect(),
        }
    }

    #[test]
    fn toml_plan_round_trips_and_merges_train_defaults() {
        let text = r#"
format_version = 1
name = "custom"
[train]
epochs = 2
lr = 2e-5
[[stages]]
name = "code"
mixture = { code = 1 }
[[stages]]
name = "all"
mixture = { general = 1, code = "1/16", math = 0.25 }
train = { lr = 1e-5 }
"#;
        let spec = PlanSpec::from_toml_str(text, "custom.toml").unwrap();
        let plan = spec.resolve(&STANDARD_SOURCES).unwrap();
        assert_eq!(plan.stages.len(), 2);
        assert_eq!(plan.stages[1].take("math"), Some(Ratio::new(1, 4).unwrap()));
        assert_eq!(
            plan.stages[1].take("code"),
            Some(Ratio::new(1, 16).unwrap())
        );
        assert_eq!(plan.stages[0].train.0["epochs"], json!(2));
        assert_eq!(plan.stages[1].train.0["lr"], json!(1e-5));
        assert_eq!(plan.stages[1].train.0["epochs"], json!(2));
        let again =
            PlanSpec::from_toml_str(&plan.to_spec().to_toml_string().unwrap(), "again").unwrap();
        assert_eq!(again.resolve(&STANDARD_SOURCES).unwrap(), plan);
    }

    #[test]
    fn unknown_source_is_named() {
        let text =
            "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"s\"\nmixture = { cod = 1 }\n";
        let err = PlanSpec::from_toml_str(text, "p.toml")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnknownSource { .. }), "{msg}");
        assert!(
            msg.contains("\"cod\"")
                && msg.contains("stage \"s\"")
                && msg.contains("code, general, math"),
            "{msg}"
        );
    }

    #[test]
    fn empty_stage_is_rejected() {
        for mixture in ["{}", "{ code = 0 }"] {
            let text = format!(
                "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"s\"\nmixture = {mixture}\n"
            );
            let err = PlanSpec::from_toml_str(&text, "p.toml")
                .unwrap()
                .resolve(&STANDARD_SOURCES)
                .unwrap_err();
            assert!(matches!(err, Error::EmptyStage { .. }), "{err}");
        }
        let err = PlanSpec::from_toml_str("format_version = 1\nname = \"p\"\n", "p.toml")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap_err();
        assert!(matches!(err, Error::NoStages { .. }), "{err}");
    }

    #[test]
    fn bad_files_fail_with_origin_and_line() {
        let err = PlanSpec::from_toml_str("format_version = 1\nnmae = \"x\"\n", "plans/x.toml")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("plans/x.toml:") && msg.contains("line 2") && msg.contains("nmae"),
            "{msg}"
        );
        let err =
            PlanSpec::from_toml_str("format_version = 2\nstrategy = \"sequential\"\n", "v2.toml")
                .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFormatVersion { found: 2, .. }),
            "{err}"
        );
        let text = "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"s\"\nmixture = { code = \"1/0\" }\n";
        let msg = PlanSpec::from_toml_str(text, "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("r.toml") && msg.contains("denominator"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_names_strategy_and_stages_and_first_carry_are_rejected() {
        let dup = "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"s\"\nmixture = { code = 1 }\n[[stages]]\nname = \"s\"\nmixture = { math = 1 }\n";
        let msg = PlanSpec::from_toml_str(dup, "d")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("two stages are named \"s\""), "{msg}");
        let both = "format_version = 1\nstrategy = \"sequential\"\n[[stages]]\nname = \"s\"\nmixture = { code = 1 }\n";
        let msg = PlanSpec::from_toml_str(both, "b")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not both"), "{msg}");
        let carry = "format_version = 1\nname = \"p\"\noptimizer_state = \"carry\"\n[[stages]]\nname = \"s\"\nmixture = { code = 1 }\n";
        let msg = PlanSpec::from_toml_str(carry, "c")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no optimizer state to carry"), "{msg}");
    }

    #[test]
    fn builtin_from_toml_takes_name_train_and_optimizer_policy() {
        let text = "format_version = 1\nstrategy = \"dmt:1/4\"\noptimizer_state = \"carry\"\n[train]\nepochs = 3\n";
        let plan = PlanSpec::from_toml_str(text, "t")
            .unwrap()
            .resolve(&STANDARD_SOURCES)
            .unwrap();
        assert_eq!(plan.name, "dmt-k1_4");
        assert_eq!(plan.stages[0].optimizer_state, OptimizerState::Restart);
        assert_eq!(plan.stages[1].optimizer_state, OptimizerState::Carry);
        assert!(plan.stages.iter().all(|s| s.train.0["epochs"] == json!(3)));
    }

    #[test]
    fn keys_chain_through_parents_and_ignore_names() {
        let plan = Strategy::Sequential.plan();
        let keys = plan.stage_keys(&ctx()).unwrap();
        assert_eq!(keys[0].parent, None);
        assert_eq!(keys[1].parent.as_deref(), Some(keys[0].key.as_str()));
        assert_eq!(keys[2].parent.as_deref(), Some(keys[1].key.as_str()));
        assert_eq!(keys[0].key.len(), 64);

        let mut renamed = plan.clone();
        renamed.name = "other".into();
        renamed.stages[0].name = "renamed".into();
        assert_eq!(renamed.stage_keys(&ctx()).unwrap()[0].key, keys[0].key);
    }

    #[test]
    fn keys_change_with_every_input() {
        let plan = Strategy::MixedSequential.plan();
        let base = plan.stage_keys(&ctx()).unwrap();

        let mut c = ctx();
        c.base_model = "other-model".into();
        assert_ne!(plan.stage_keys(&c).unwrap()[0].key, base[0].key);

        // A source the first stage does not read leaves its key alone, but changes stage 2's.
        let mut c = ctx();
        c.sources.insert("general".into(), "general-fp2".into());
        let k = plan.stage_keys(&c).unwrap();
        assert_eq!(k[0].key, base[0].key);
        assert_ne!(k[1].key, base[1].key);

        let trained = plan
            .clone()
            .with_train_defaults(&TrainSettings::new().with("epochs", 2));
        let k = trained.stage_keys(&ctx()).unwrap();
        assert_ne!(k[0].key, base[0].key);

        // Changing stage 1 changes stage 2 through the parent key.
        let mut p = plan.clone();
        p.stages[0]
            .mixture
            .insert("code".into(), Ratio::new(1, 2).unwrap());
        let k = p.stage_keys(&ctx()).unwrap();
        assert_ne!(k[0].key, base[0].key);
        assert_ne!(k[1].key, base[1].key);

        let mut c = ctx();
        c.sources.remove("code");
        assert!(plan
            .stage_keys(&c)
            .unwrap_err()
            .to_string()
            .contains("no fingerprint for source \"code\""));
    }
}
