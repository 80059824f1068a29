//! Plans and stages: the on-disk spec ([`PlanSpec`]), the validated plan ([`Plan`]) and stage keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sft_config::{TrainConfig, TrainOverrides};
use sha2::{Digest, Sha256};

use crate::canonical::canonical_json;
use crate::error::{Error, Result};
use crate::strategy::Strategy;
use sft_compose::Ratio;

/// The plan file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

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
    /// Overrides of the plan-wide training settings for this stage (typed: an unknown key is an
    /// error when the plan is read).
    #[serde(default, skip_serializing_if = "TrainOverrides::is_empty")]
    pub train: TrainOverrides,
    /// Overrides the plan-wide optimizer-state policy for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_state: Option<OptimizerState>,
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
    #[serde(default, skip_serializing_if = "TrainOverrides::is_empty")]
    pub train: TrainOverrides,
    /// The default optimizer-state policy between stages.
    #[serde(default)]
    pub optimizer_state: OptimizerState,
    /// Runner settings, opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Value>,
    /// Where the spec was read from ([`PlanSpec::from_toml_str`]'s `origin`; empty for a spec
    /// built in code). Errors of [`PlanSpec::resolve`] name it. Not part of the file.
    #[serde(skip)]
    pub origin: String,
}

impl PlanSpec {
    /// Parses a plan file's text; `origin` (usually the path) prefixes every error.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<PlanSpec> {
        let mut spec: PlanSpec = toml::from_str(text).map_err(|e| {
            diagnose_train_tables(text, origin, &e).unwrap_or_else(|| Error::Toml {
                origin: origin.to_string(),
                source: Box::new(e),
            })
        })?;
        spec.origin = origin.to_string();
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

    /// Validates the spec into a [`Plan`]: every source a stage names must be in
    /// `known_sources`, and every stage's training settings (`base` under the plan-wide `[train]`
    /// under the stage's own `train`) must validate. The runner passes as `base` the trainer
    /// defaults with the run's seed (`TrainConfig { seed: run_seed, ..Default::default() }`).
    /// Errors name [`PlanSpec::origin`], the stage and the offending key.
    pub fn resolve(&self, known_sources: &[&str], base: &TrainConfig) -> Result<Plan> {
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
                        config: base.clone(),
                        optimizer_state: s.optimizer_state.unwrap_or(self.optimizer_state),
                    })
                    .collect();
                Plan::new(name, stages)?
            }
        };
        let origin = if self.origin.is_empty() {
            "<plan>"
        } else {
            &self.origin
        };
        let plan = plan.with_train(origin, base, &self.train)?;
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
    /// The stage's training overrides (plan defaults merged with its own), as written to
    /// `plan.resolved.toml`.
    pub train: TrainOverrides,
    /// The stage's resolved, validated trainer config: the base config of
    /// [`PlanSpec::resolve`] / [`Plan::with_train`] with [`Stage::train`] applied. What the
    /// stage trains with, and what its key hashes.
    pub config: TrainConfig,
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

/// What a stage key depends on besides the plan: the base model, the data sources and the
/// number of data-parallel ranks that train each stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyContext {
    /// A fingerprint of the base model (e.g. the SHA-256 of its weights file).
    pub base_model: String,
    /// Source name → fingerprint of the source's pool (file hash, subset size, seed, …).
    pub sources: BTreeMap<String, String>,
    /// Data-parallel ranks per stage (1: one process). With `N > 1` ranks a step's global batch
    /// is `N × micro_batch_size × grad_accum`, so the same settings train another model: `N` is
    /// then part of the key material (`world_size`). With 1 it is left out, so single-process
    /// keys are what they were before data parallelism existed.
    pub world_size: usize,
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

    /// Resolves every stage's training settings: `defaults` (plan-wide overrides) go under the
    /// stage's own overrides ([`Stage::train`]), and the result applied to `base` is the stage's
    /// [`Stage::config`], validated. An invalid value fails with [`Error::Train`], naming
    /// `origin`, the stage and the key, so a bad stage fails before anything trains.
    pub fn with_train(
        mut self,
        origin: &str,
        base: &TrainConfig,
        defaults: &TrainOverrides,
    ) -> Result<Plan> {
        for stage in &mut self.stages {
            stage.train = defaults.merged(&stage.train);
            stage.config = base.with_overrides(&stage.train);
            stage.config.validate().map_err(|source| Error::Train {
                origin: origin.to_string(),
                plan: self.name.clone(),
                stage: Some(stage.name.clone()),
                source,
            })?;
        }
        Ok(self)
    }

    /// The content key of every stage, in order.
    ///
    /// A key covers the stage's mixture, its resolved training config ([`Stage::config`]
    /// without the purely operational [`sft_config::OPERATIONAL_KEYS`], see
    /// [`TrainConfig::weights_relevant`]), its optimizer-state policy, the parent's key (so
    /// everything upstream), the base model, the fingerprints of the sources it reads and, when
    /// it is above 1, the number of data-parallel ranks ([`KeyContext::world_size`]). It does
    /// not cover the stage's name or the plan's name, so identical stages of different plans get
    /// the same key; and since it hashes resolved values, a plan that spells out a default value
    /// (`lr = 2e-5`) gets the same key as one that leaves it out.
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
            let mut material = json!({
                "format_version": FORMAT_VERSION,
                "mixture": mixture,
                "parent": parent,
                "train": stage.config.weights_relevant(),
                "optimizer_state": stage.optimizer_state,
                "base_model": ctx.base_model,
                "sources": sources,
            });
            if ctx.world_size > 1 {
                material["world_size"] = json!(ctx.world_size);
            }
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
            train: TrainOverrides::default(),
            optimizer_state: OptimizerState::Restart,
            run: None,
            origin: String::new(),
        }
    }
}

/// After a failed typed parse: finds the first `[train]` table (plan-wide, or a stage's) whose
/// settings are unknown or mistyped, so the error names the stage and the key, not only the
/// line. `None` when the training tables are fine (the parse failed elsewhere).
fn diagnose_train_tables(text: &str, origin: &str, parse: &toml::de::Error) -> Option<Error> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let at = match parse.span() {
        Some(span) => format!(
            "{origin}:{}",
            text[..span.start.min(text.len())].matches('\n').count() + 1
        ),
        None => origin.to_string(),
    };
    let plan = table
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let check = |train: &toml::Value, stage: Option<String>| -> Option<Error> {
        let value = serde_json::to_value(train).ok()?;
        TrainOverrides::from_json(&value)
            .err()
            .map(|source| Error::Train {
                origin: at.clone(),
                plan: plan.clone(),
                stage,
                source,
            })
    };
    if let Some(e) = table.get("train").and_then(|t| check(t, None)) {
        return Some(e);
    }
    let stages = table.get("stages")?.as_array()?;
    stages.iter().enumerate().find_map(|(i, s)| {
        let name = s
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("#{}", i + 1), str::to_string);
        check(s.get("train")?, Some(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::STANDARD_SOURCES;

    fn epochs(n: u32) -> TrainOverrides {
        TrainOverrides {
            epochs: Some(n),
            ..TrainOverrides::default()
        }
    }

    fn ctx() -> KeyContext {
        KeyContext {
            base_model: "model-sha".into(),
            sources: STANDARD_SOURCES
                .iter()
                .map(|s| (s.to_string(), format!("{s}-fp")))
                .collect(),
            world_size: 1,
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
        let plan = spec
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap();
        assert_eq!(plan.stages.len(), 2);
        assert_eq!(plan.stages[1].take("math"), Some(Ratio::new(1, 4).unwrap()));
        assert_eq!(
            plan.stages[1].take("code"),
            Some(Ratio::new(1, 16).unwrap())
        );
        assert_eq!(plan.stages[0].train.epochs, Some(2));
        assert_eq!(plan.stages[1].train.lr, Some(1e-5));
        assert_eq!(plan.stages[1].train.epochs, Some(2));
        assert_eq!(
            (plan.stages[1].config.lr, plan.stages[1].config.epochs),
            (1e-5, 2)
        );
        assert_eq!(plan.stages[0].config.lr, 2e-5);
        let again =
            PlanSpec::from_toml_str(&plan.to_spec().to_toml_string().unwrap(), "again").unwrap();
        assert_eq!(
            again
                .resolve(&STANDARD_SOURCES, &TrainConfig::default())
                .unwrap(),
            plan
        );
    }

    #[test]
    fn unknown_source_is_named() {
        let text =
            "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"s\"\nmixture = { cod = 1 }\n";
        let err = PlanSpec::from_toml_str(text, "p.toml")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
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
                .resolve(&STANDARD_SOURCES, &TrainConfig::default())
                .unwrap_err();
            assert!(matches!(err, Error::EmptyStage { .. }), "{err}");
        }
        let err = PlanSpec::from_toml_str("format_version = 1\nname = \"p\"\n", "p.toml")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
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
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("two stages are named \"s\""), "{msg}");
        let both = "format_version = 1\nstrategy = \"sequential\"\n[[stages]]\nname = \"s\"\nmixture = { code = 1 }\n";
        let msg = PlanSpec::from_toml_str(both, "b")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not both"), "{msg}");
        let carry = "format_version = 1\nname = \"p\"\noptimizer_state = \"carry\"\n[[stages]]\nname = \"s\"\nmixture = { code = 1 }\n";
        let msg = PlanSpec::from_toml_str(carry, "c")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no optimizer state to carry"), "{msg}");
    }

    #[test]
    fn builtin_from_toml_takes_name_train_and_optimizer_policy() {
        let text = "format_version = 1\nstrategy = \"dmt:1/4\"\noptimizer_state = \"carry\"\n[train]\nepochs = 3\n";
        let plan = PlanSpec::from_toml_str(text, "t")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap();
        assert_eq!(plan.name, "dmt-k1_4");
        assert_eq!(plan.stages[0].optimizer_state, OptimizerState::Restart);
        assert_eq!(plan.stages[1].optimizer_state, OptimizerState::Carry);
        assert!(plan
            .stages
            .iter()
            .all(|s| s.train.epochs == Some(3) && s.config.epochs == 3));
    }

    const TWO_STAGES: &str = "format_version = 1\nname = \"p\"\n[[stages]]\nname = \"code\"\nmixture = { code = 1 }\n[[stages]]\nname = \"general-last\"\nmixture = { general = 1 }\n";

    fn with_stage2_train(train: &str) -> String {
        format!("{TWO_STAGES}train = {{ {train} }}\n")
    }

    #[test]
    fn unknown_train_key_in_a_stage_fails_at_load_naming_file_stage_and_key() {
        let err =
            PlanSpec::from_toml_str(&with_stage2_train("lrr = 5e-4"), "plans/p.toml").unwrap_err();
        let msg = err.to_string();
        match &err {
            Error::Train { stage, source, .. } => {
                assert_eq!(stage.as_deref(), Some("general-last"));
                assert_eq!(source.key(), Some("lrr"));
            }
            other => panic!("expected Error::Train, got {other:?}"),
        }
        assert!(
            msg.starts_with("plans/p.toml:9:")
                && msg.contains("stage \"general-last\"")
                && msg.contains("`lrr`"),
            "{msg}"
        );
        // The plan-wide table is checked the same way.
        let text = format!("{TWO_STAGES}[train]\nepochz = 1\n");
        let err = PlanSpec::from_toml_str(&text, "q.toml").unwrap_err();
        assert!(
            matches!(&err, Error::Train { stage: None, source, .. } if source.key() == Some("epochz")),
            "{err}"
        );
        // A mistyped value names its key too.
        let err = PlanSpec::from_toml_str(&with_stage2_train("schedule = \"cosin\""), "r.toml")
            .unwrap_err();
        assert!(
            matches!(&err, Error::Train { source, .. } if source.key() == Some("schedule")),
            "{err}"
        );
    }

    #[test]
    fn bad_train_value_in_a_stage_fails_at_resolve_naming_file_stage_and_key() {
        let spec =
            PlanSpec::from_toml_str(&with_stage2_train("lr = -1.0"), "plans/p.toml").unwrap();
        let err = spec
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap_err();
        let msg = err.to_string();
        match &err {
            Error::Train {
                origin,
                stage,
                source,
                ..
            } => {
                assert_eq!(origin, "plans/p.toml");
                assert_eq!(stage.as_deref(), Some("general-last"));
                assert!(matches!(source, sft_config::Error::Invalid { key, .. } if key == "lr"));
            }
            other => panic!("expected Error::Train, got {other:?}"),
        }
        assert!(
            msg.contains("plans/p.toml") && msg.contains("`lr`"),
            "{msg}"
        );
        // The base config takes part: a plan-wide value that is fine alone but invalid with
        // the stage's value is caught as well.
        let text = format!("{TWO_STAGES}[train]\nepochs = 0\n");
        let err = PlanSpec::from_toml_str(&text, "e.toml")
            .unwrap()
            .resolve(&STANDARD_SOURCES, &TrainConfig::default())
            .unwrap_err();
        assert!(
            matches!(&err, Error::Train { stage: Some(s), source, .. } if s == "code" && source.key() == Some("epochs")),
            "{err}"
        );
    }

    #[test]
    fn keys_hash_resolved_settings_so_spelled_out_defaults_reuse_the_stage() {
        let resolve = |text: &str, seed: u64| {
            let base = TrainConfig {
                seed,
                ..TrainConfig::default()
            };
            PlanSpec::from_toml_str(text, "k.toml")
                .unwrap()
                .resolve(&STANDARD_SOURCES, &base)
                .unwrap()
                .stage_keys(&ctx())
                .unwrap()
        };
        let plain = resolve(TWO_STAGES, 42);
        let spelled = resolve(&with_stage2_train("lr = 2e-5"), 42);
        assert_eq!(plain, spelled);
        let operational = resolve(&with_stage2_train("save_every = 10, keep_last = 5"), 42);
        assert_eq!(plain[1].key, operational[1].key);
        let changed = resolve(&with_stage2_train("lr = 1e-5"), 42);
        assert_eq!(plain[0].key, changed[0].key);
        assert_ne!(plain[1].key, changed[1].key);
        // The run's seed (the base config's) is part of what a stage trains with.
        assert_ne!(resolve(TWO_STAGES, 7)[0].key, plain[0].key);
        assert_eq!(resolve(&with_stage2_train("seed = 42"), 7)[1].key.len(), 64);
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
            .with_train("t", &TrainConfig::default(), &epochs(2))
            .unwrap();
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
    #[test]
    fn data_parallel_ranks_are_in_the_key_only_above_one() {
        let plan = Strategy::MixedSequential.plan();
        let one = plan.stage_keys(&ctx()).unwrap();
        // One process: the material has no world size, so the keys are the pre-data-parallel ones.
        assert!(one.iter().all(|k| k.material.get("world_size").is_none()));
        let mut c = ctx();
        c.world_size = 8;
        let eight = plan.stage_keys(&c).unwrap();
        for (a, b) in one.iter().zip(&eight) {
            assert_ne!(a.key, b.key);
            assert_eq!(b.material["world_size"], 8);
        }
        c.world_size = 2;
        assert_ne!(plan.stage_keys(&c).unwrap()[0].key, eight[0].key);
    }
}
