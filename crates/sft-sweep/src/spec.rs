//! Sweep specs (the TOML a researcher writes) and their expansion into cells.
//!
//! A spec names models, training settings and runner settings once, then lists `[[grid]]`
//! blocks. Each grid is a cartesian product of axes (models × strategies × individual sources ×
//! proportions × k × seeds); every point becomes a [`Cell`] holding a complete `sft-schedule`
//! plan. Identical plans from different grids collapse into one cell that lists all its grids, so
//! RQ3's overlapping set-ups, or RQ2's reuse of RQ1's individual runs, train once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sft_config::memory::{ModelShape, ShapePreset};
use sft_schedule::{
    canonical_json, PlanSpec, Ratio, Stage, Strategy, TrainConfig, TrainOverrides,
    FORMAT_VERSION as PLAN_FORMAT_VERSION,
};
use sha2::{Digest, Sha256};

use crate::error::{io, Error, Result};

/// The sweep spec format this build reads.
pub const SPEC_FORMAT_VERSION: u32 = 1;

/// One model of the sweep: a name for tables and plots, and runner settings merged into each
/// plan's `[run]` table (for example the checkpoint path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name used in cell ids, tables and legends (`llama-7b`, `smollm2-135m`).
    pub name: String,
    /// Merged over the spec's `[run]` table for this model's cells.
    #[serde(default)]
    pub run: toml::Table,
    /// Merged over the spec's `[train]` table for this model's cells.
    #[serde(default)]
    pub train: toml::Table,
    /// The model's shape for memory estimates (`--dry-run`) when `run.model` cannot be read (a
    /// dry run away from the machine with the weights): a built-in preset, `llama-7b`,
    /// `llama-13b`, `llama-33b` or `smollm2-135m` (`sft_config::memory::SHAPE_PRESETS`). An
    /// unknown name fails when the spec loads. Never used when `run.model` reads.
    #[serde(default)]
    pub shape: Option<ShapePreset>,
    /// Like [`ModelSpec::shape`], from a file: an HF `config.json` (or a GGUF file), relative
    /// to the spec file (made absolute, and read, when the spec loads). Not with `shape`.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The shape `config` gave when the spec loaded (read once there, not again per cell).
    #[serde(skip)]
    pub config_shape: Option<ModelShape>,
}

/// One `[[grid]]`: a cartesian product of axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// The grid's name: a legend entry and a filter in plots (`individual`, `general-full`).
    pub name: String,
    /// A longer legend label for plots (`full general + specialized at r`); default the name.
    #[serde(default)]
    pub label: Option<String>,
    /// Strategies: `individual`, `multi-task`, `sequential`, `mixed-sequential`, `dmt`.
    pub strategies: Vec<String>,
    /// For `individual`: the sources, one cell each. Default: every source of the spec.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// One proportion applied to every source of a cell (an axis).
    #[serde(default)]
    pub proportions: Option<Vec<Ratio>>,
    /// Per-source or per-group axes (`general = ["1"]`, `specialized = ["1", "1/4"]`); these win
    /// over `proportions`.
    #[serde(default)]
    pub proportion: BTreeMap<String, Vec<Ratio>>,
    /// DMT's k (an axis, only with `dmt`).
    #[serde(default)]
    pub k: Option<Vec<Ratio>>,
    /// Model names (default: all models).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Seeds (default: the spec's `seeds`).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// Overrides of the training settings for this grid's cells.
    #[serde(default)]
    pub train: toml::Table,
}

/// A sweep spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Must equal [`SPEC_FORMAT_VERSION`].
    pub format_version: u32,
    /// The sweep's name (`rq1`, `tiny`).
    pub name: String,
    /// What the sweep reproduces.
    #[serde(default)]
    pub description: String,
    /// The sources cells may read, in the order sequential training uses for the specialized
    /// ones. Default `["code", "math", "general"]`.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Named groups of sources usable as keys of `[grid.proportion]`. `specialized` (code and
    /// math) and `general` are predefined.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Default seeds of every grid. A seed changes the cells' data sampling, data order and
    /// trainer seed; the held-out records and benchmark subsets are drawn with the first of
    /// these seeds in every cell (`run.split_seed`, unless the `[run]` tables set it).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Where a cell's seed goes in its plan: `run.<field>` (default `run.seed`, which seeds the
    /// runner's data selection and the trainer) or `train.<field>`.
    #[serde(default = "default_seed_field")]
    pub seed_field: String,
    /// The runner command (argv, first element the program) if not the built `run_plan`.
    #[serde(default)]
    pub runner: Option<Vec<String>>,
    /// The data directory passed to the runner as `--data-dir`, relative to the spec file
    /// (`--data-dir` on the command line wins; without either the runner uses `SFT_DATA_DIR`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The models (at least one).
    pub models: Vec<ModelSpec>,
    /// Training settings for every stage of every cell (trainer field names).
    #[serde(default)]
    pub train: toml::Table,
    /// Runner settings (the plan's opaque `[run]` table: data subsets, evaluation, ...).
    #[serde(default)]
    pub run: toml::Table,
    /// Settings for `--slurm` job scripts.
    #[serde(default)]
    pub slurm: Option<SlurmSpec>,
    /// The grids.
    pub grid: Vec<GridSpec>,
}

/// `[slurm]`: directives for the job-array script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--time` (e.g. `"24:00:00"`).
    #[serde(default)]
    pub time: Option<String>,
    /// `--gres` (default `gpu:G` with `G` = [`SlurmSpec::gpus_per_node`]).
    #[serde(default)]
    pub gres: Option<String>,
    /// GPUs per node, one data-parallel rank each (default 1). Above 1, or with
    /// [`SlurmSpec::nodes`] above 1, a cell runs as `nodes × gpus_per_node` ranks: the script
    /// asks for `--nodes`, `--ntasks-per-node=G` and `--gres=gpu:G`, exports `MASTER_ADDR` (the
    /// allocation's first host) and `MASTER_PORT` (from the array task id), and starts the
    /// runner with `srun`, one task per GPU, each joining as its Slurm rank. A stage's global
    /// batch is then `ranks × micro_batch_size × grad_accum`.
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    /// Nodes per cell (default 1); see [`SlurmSpec::gpus_per_node`]. More than one node needs
    /// the run directories and the stage store on a file system every node sees.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// `--cpus-per-task`.
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    /// `--mem` (e.g. `"64G"`).
    #[serde(default)]
    pub mem: Option<String>,
    /// At most this many array tasks at once (`--array=0-N%M`).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// More `#SBATCH` lines, without the prefix (`"--account=abc"`).
    #[serde(default)]
    pub extra: Vec<String>,
}

impl SlurmSpec {
    /// [`SlurmSpec::gpus_per_node`], 1 when unset.
    pub fn gpus_per_node(&self) -> u32 {
        self.gpus_per_node.unwrap_or(1)
    }

    /// [`SlurmSpec::nodes`], 1 when unset.
    pub fn nodes(&self) -> u32 {
        self.nodes.unwrap_or(1)
    }

    /// Data-parallel ranks per cell: `nodes × gpus_per_node`.
    pub fn ranks(&self) -> u32 {
        self.nodes() * self.gpus_per_node()
    }
}

fn default_sources() -> Vec<String> {
    vec!["code".into(), "math".into(), "general".into()]
}
fn default_seeds() -> Vec<u64> {
    vec![42]
}
fn default_seed_field() -> String {
    "run.seed".into()
}

/// One point of a sweep: a complete plan plus the coordinates that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Stable id: readable name + 12 hex digits of the plan's content hash.
    pub id: String,
    /// Position in the sweep's cell list (the Slurm array index).
    pub index: usize,
    /// The sweep's name.
    pub sweep: String,
    /// Every grid that produced this plan.
    pub grids: Vec<String>,
    /// The strategy as `sft-schedule` writes it (`individual:math`, `dmt:1/256`).
    pub strategy: String,
    /// The strategy's row label (`Math only`, `DMT (k=1/256)`).
    pub strategy_label: String,
    /// The model's name.
    pub model: String,
    /// Proportion of each source the cell uses (before k).
    pub proportions: BTreeMap<String, Ratio>,
    /// DMT's k, for DMT cells.
    pub k: Option<Ratio>,
    /// The seed.
    pub seed: u64,
    /// Per grid: the value on that grid's x axis (`(axis name, value)`), for plots.
    pub x: BTreeMap<String, (String, Ratio)>,
    /// The plan the runner executes.
    pub plan: PlanSpec,
    /// The plan's stages as the runner resolves them, each with its validated trainer config
    /// (what the memory estimate of `--dry-run` reads). Resolved by [`SweepSpec::expand`]; not
    /// in `cell.json`, so empty in a cell read back from one.
    #[serde(skip)]
    pub stages: Vec<Stage>,
}

impl Cell {
    /// The plan as TOML, as written to `plan.toml`.
    pub fn plan_toml(&self) -> Result<String> {
        self.plan.to_toml_string().map_err(|source| Error::Plan {
            path: PathBuf::from("<cell>"),
            cell: self.id.clone(),
            source: Box::new(source),
        })
    }

    /// Keys of the cell's stage prefixes (stage 1, stages 1–2, ...): two cells with an equal
    /// prefix key train that prefix identically, so the driver never runs them at the same time.
    pub fn stage_prefix_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let run = self.plan.run.clone().unwrap_or(Value::Null);
        let mut stages: Vec<Value> = Vec::new();
        for stage in &self.plan.stages {
            let train = self.plan.train.merged(&stage.train);
            let mixture: serde_json::Map<String, Value> = stage
                .mixture
                .iter()
                .map(|(k, r)| (k.clone(), Value::String(r.to_string())))
                .collect();
            let train = serde_json::to_value(&train).unwrap_or_default();
            stages.push(serde_json::json!({"mixture": mixture, "train": train, "opt": stage.optimizer_state}));
            let material = serde_json::json!({"run": run, "stages": stages});
            out.push(hex::encode(Sha256::digest(
                canonical_json(&material).as_bytes(),
            )));
        }
        out
    }
}

impl SweepSpec {
    /// Reads and checks a spec file.
    pub fn from_path(path: &Path) -> Result<SweepSpec> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        SweepSpec::from_toml_str(&text, path)
    }

    /// Parses spec text; `path` names the origin in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<SweepSpec> {
        #[derive(Deserialize)]
        struct Version {
            format_version: Option<u32>,
        }
        let syntax = |e: toml::de::Error| Error::SpecSyntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let v: Version = toml::from_str(text).map_err(syntax)?;
        match v.format_version {
            Some(SPEC_FORMAT_VERSION) => {}
            Some(found) => {
                return Err(Error::UnsupportedFormatVersion {
                    path: path.to_path_buf(),
                    found,
                    supported: SPEC_FORMAT_VERSION,
                })
            }
            None => {
                return Err(Error::SpecInvalid {
                    path: path.to_path_buf(),
                    message: format!("missing `format_version = {SPEC_FORMAT_VERSION}`"),
                })
            }
        }
        let mut spec: SweepSpec = toml::from_str(text).map_err(syntax)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for model in &mut spec.models {
            let Some(config) = &model.config else {
                continue;
            };
            if model.shape.is_some() {
                return Err(Error::SpecInvalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[[models]] {:?}: give `shape` or `config`, not both",
                        model.name
                    ),
                });
            }
            let joined = base.join(config);
            let config = std::path::absolute(&joined).unwrap_or(joined);
            let shape =
                ModelShape::from_model_path(&config).map_err(|source| Error::ModelConfig {
                    path: path.to_path_buf(),
                    model: model.name.clone(),
                    source: Box::new(source),
                })?;
            model.config = Some(config);
            model.config_shape = Some(shape);
        }
        Ok(spec)
    }

    /// `data_dir` resolved against the directory of the spec file at `path`.
    pub fn data_dir(&self, path: &Path) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| {
            let joined = path.parent().unwrap_or(Path::new(".")).join(d);
            std::path::absolute(&joined).unwrap_or(joined)
        })
    }

    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut g = BTreeMap::new();
        g.insert(
            "specialized".to_string(),
            self.sources
                .iter()
                .filter(|s| *s != "general")
                .cloned()
                .collect(),
        );
        g.insert("general".to_string(), vec!["general".to_string()]);
        g.extend(self.groups.clone());
        g
    }

    /// Expands every grid into cells, in grid order, identical plans merged.
    ///
    /// `path` names the spec in errors.
    pub fn expand(&self, path: &Path) -> Result<Vec<Cell>> {
        let invalid = |message: String| Error::SpecInvalid {
            path: path.to_path_buf(),
            message,
        };
        if self.models.is_empty() {
            return Err(invalid("no [[models]]".into()));
        }
        if self.grid.is_empty() {
            return Err(invalid("no [[grid]]".into()));
        }
        if let Some(slurm) = &self.slurm {
            for (key, value) in [
                ("gpus_per_node", slurm.gpus_per_node),
                ("nodes", slurm.nodes),
            ] {
                if value == Some(0) {
                    return Err(invalid(format!("[slurm] {key} must be at least 1")));
                }
            }
        }
        let model_names: BTreeSet<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        if model_names.len() != self.models.len() {
            return Err(invalid("two [[models]] share a name".into()));
        }
        let (seed_table, seed_key) = match self.seed_field.split_once('.') {
            Some((t @ ("train" | "run"), k)) if !k.is_empty() => (t, k),
            _ => {
                return Err(invalid(format!(
                    "seed_field {:?} must be train.<field> or run.<field>",
                    self.seed_field
                )))
            }
        };
        let groups = self.groups();
        let mut grid_names = BTreeSet::new();
        let mut cells: Vec<Cell> = Vec::new();
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for grid in &self.grid {
            let gerr = |m: String| invalid(format!("grid {:?}: {m}", grid.name));
            if !grid_names.insert(grid.name.as_str()) {
                return Err(gerr("two grids share this name".into()));
            }
            if grid.strategies.is_empty() {
                return Err(gerr("`strategies` is empty".into()));
            }
            // Per-source axes: source -> (axis name, values). Explicit sources beat groups beat `proportions`.
            let mut axis_of: BTreeMap<String, String> = BTreeMap::new();
            let mut axes: Vec<(String, Vec<Ratio>)> = Vec::new();
            if let Some(p) = &grid.proportions {
                if p.is_empty() {
                    return Err(gerr("`proportions` is empty".into()));
                }
                axes.push(("proportion".into(), p.clone()));
                for s in &self.sources {
                    axis_of.insert(s.clone(), "proportion".into());
                }
            }
            let (group_keys, source_keys): (Vec<_>, Vec<_>) = grid
                .proportion
                .keys()
                .partition(|k| groups.contains_key(*k) && !self.sources.contains(*k));
            for key in group_keys.into_iter().chain(source_keys) {
                let values = &grid.proportion[key];
                if values.is_empty() {
                    return Err(gerr(format!("proportion.{key} is empty")));
                }
                let members = if self.sources.contains(key) {
                    vec![key.clone()]
                } else if let Some(m) = groups.get(key) {
                    m.clone()
                } else {
                    return Err(gerr(format!(
                        "proportion.{key}: not a source ({}) or group ({})",
                        self.sources.join(", "),
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                };
                let axis = format!("proportion.{key}");
                axes.push((axis.clone(), values.clone()));
                for m in members {
                    axis_of.insert(m, axis.clone());
                }
            }
            for (axis, values) in &axes {
                if let Some(r) = values.iter().find(|r| r.is_zero() || r.numer() > r.denom()) {
                    return Err(gerr(format!("{axis}: proportion {r} is not in (0, 1]")));
                }
            }
            let models: Vec<&ModelSpec> = match &grid.models {
                None => self.models.iter().collect(),
                Some(names) => names
                    .iter()
                    .map(|n| {
                        self.models
                            .iter()
                            .find(|m| &m.name == n)
                            .ok_or_else(|| gerr(format!("unknown model {n:?}")))
                    })
                    .collect::<Result<_>>()?,
            };
            let seeds = grid.seeds.clone().unwrap_or_else(|| self.seeds.clone());
            if seeds.is_empty() {
                return Err(gerr("no seeds".into()));
            }
            let has_dmt = grid.strategies.iter().any(|s| s == "dmt");
            if grid.k.is_some() && !has_dmt {
                return Err(gerr("`k` is given but no strategy is `dmt`".into()));
            }
            let ks: Vec<Ratio> = grid
                .k
                .clone()
                .unwrap_or_else(|| vec![Ratio::new(1, 256).unwrap_or(Ratio::ONE)]);
            // The axis plots draw along: k if it varies, else the first varying proportion axis.
            let x_axis: Option<String> = if ks.len() > 1 && has_dmt {
                Some("k".into())
            } else {
                axes.iter()
                    .find(|(_, v)| v.len() > 1)
                    .or(axes.first())
                    .map(|(a, _)| a.clone())
            };

            // Strategy variants: (strategy, k) pairs.
            let mut variants: Vec<(Strategy, Option<Ratio>)> = Vec::new();
            for s in &grid.strategies {
                match s.as_str() {
                    "individual" => {
                        let srcs = grid.sources.clone().unwrap_or_else(|| self.sources.clone());
                        for src in srcs {
                            if !self.sources.contains(&src) {
                                return Err(gerr(format!(
                                    "unknown source {src:?} (sources: {})",
                                    self.sources.join(", ")
                                )));
                            }
                            variants.push((Strategy::Individual(src), None));
                        }
                    }
                    "dmt" => {
                        for k in &ks {
                            let st = Strategy::dmt(*k).map_err(|source| Error::Plan {
                                path: path.to_path_buf(),
                                cell: grid.name.clone(),
                                source: Box::new(source),
                            })?;
                            variants.push((st, Some(*k)));
                        }
                    }
                    other => {
                        let st = Strategy::parse(other)
                            .ok()
                            .filter(|st| !matches!(st, Strategy::Individual(_) | Strategy::Dmt { .. }))
                            .ok_or_else(|| {
                                gerr(format!(
                                    "unknown strategy {other:?} (individual, multi-task, sequential, mixed-sequential, dmt)"
                                ))
                            })?;
                        variants.push((st, None));
                    }
                }
            }

            let axis_values: Vec<&Vec<Ratio>> = axes.iter().map(|(_, v)| v).collect();
            for model in &models {
                for (strategy, k) in &variants {
                    for point in product(&axis_values) {
                        for &seed in &seeds {
                            let axis_value = |axis: &str| -> Ratio {
                                axes.iter()
                                    .position(|(a, _)| a == axis)
                                    .map(|i| point[i])
                                    .unwrap_or(Ratio::ONE)
                            };
                            let mut proportions = BTreeMap::new();
                            for s in &self.sources {
                                let p = axis_of.get(s).map(|a| axis_value(a)).unwrap_or(Ratio::ONE);
                                proportions.insert(s.clone(), p);
                            }
                            let x = x_axis.as_ref().map(|a| {
                                let v = if a == "k" {
                                    k.unwrap_or(Ratio::ONE)
                                } else {
                                    axis_value(a)
                                };
                                (a.clone(), v)
                            });
                            let cell = self.make_cell(
                                path,
                                grid,
                                model,
                                strategy,
                                *k,
                                &proportions,
                                seed,
                                (seed_table, seed_key),
                            )?;
                            let cell = Cell {
                                x: x.into_iter().map(|x| (grid.name.clone(), x)).collect(),
                                ..cell
                            };
                            match by_id.get(&cell.id) {
                                Some(&i) => {
                                    let c = &mut cells[i];
                                    if !c.grids.contains(&grid.name) {
                                        c.grids.push(grid.name.clone());
                                    }
                                    c.x.extend(cell.x);
                                }
                                None => {
                                    by_id.insert(cell.id.clone(), cells.len());
                                    cells.push(Cell {
                                        index: cells.len(),
                                        ..cell
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(cells)
    }

    #[allow(clippy::too_many_arguments)]
    fn make_cell(
        &self,
        path: &Path,
        grid: &GridSpec,
        model: &ModelSpec,
        strategy: &Strategy,
        k: Option<Ratio>,
        proportions: &BTreeMap<String, Ratio>,
        seed: u64,
        seed_at: (&str, &str),
    ) -> Result<Cell> {
        let template = strategy.plan();
        let plan_err = |source| Error::Plan {
            path: path.to_path_buf(),
            cell: grid.name.clone(),
            source: Box::new(source),
        };
        let mut stages = template.to_spec().stages;
        for stage in &mut stages {
            for (source, r) in stage.mixture.iter_mut() {
                let p = proportions.get(source).copied().unwrap_or(Ratio::ONE);
                *r = r.mul(p).map_err(|e| Error::SpecInvalid {
                    path: path.to_path_buf(),
                    message: format!("grid {:?}: {e}", grid.name),
                })?;
            }
            stage.optimizer_state = None;
        }
        let mut train = merge(&merge(&self.train, &model.train), &grid.train);
        let mut run = merge(&self.run, &model.run);
        let seed_value =
            toml::Value::Integer(i64::try_from(seed).map_err(|_| Error::SpecInvalid {
                path: path.to_path_buf(),
                message: format!("seed {seed} is larger than TOML's integer range"),
            })?);
        match seed_at.0 {
            "train" => train.insert(seed_at.1.to_string(), seed_value),
            _ => run.insert(seed_at.1.to_string(), seed_value),
        };
        // The held-out records and benchmark subsets stay those of the spec's first seed in
        // every cell (unless the `[run]` tables set `split_seed`), so every strategy and seed
        // is scored on the same records and items and cells compare pairwise.
        if !run.contains_key("split_seed") {
            let first = self.seeds.first().copied().unwrap_or(seed);
            run.insert(
                "split_seed".to_string(),
                toml::Value::Integer(i64::try_from(first).map_err(|_| Error::SpecInvalid {
                    path: path.to_path_buf(),
                    message: format!("seed {first} is larger than TOML's integer range"),
                })?),
            );
        }
        // Typed here, so a typo or a wrongly typed value in any `[train]` table (the spec's, a
        // model's, a grid's) fails when the spec is loaded, naming the key.
        let train = serde_json::to_value(&train)
            .map_err(|e| Error::SpecInvalid {
                path: path.to_path_buf(),
                message: format!("[train]: {e}"),
            })
            .and_then(|v| {
                TrainOverrides::from_json(&v).map_err(|source| {
                    plan_err(sft_schedule::Error::Train {
                        origin: format!(
                            "the [train] tables of the spec, model {:?} and grid {:?}",
                            model.name, grid.name
                        ),
                        plan: String::new(),
                        stage: None,
                        source,
                    })
                })
            })?;
        let run = serde_json::to_value(&run).map_err(|e| Error::SpecInvalid {
            path: path.to_path_buf(),
            message: format!("[run]: {e}"),
        })?;
        // The runner's settings as the runner will read them: a typo or an impossible
        // `[run.eval.hidden]` fails when the spec loads, not in every cell.
        sft_run::RunSettings::from_plan_value(Some(&run), path).map_err(|e| {
            Error::RunSettings {
                path: path.to_path_buf(),
                model: model.name.clone(),
                source: Box::new(e),
            }
        })?;
        let used: BTreeMap<String, Ratio> = template
            .sources()
            .into_iter()
            .map(|s| {
                (
                    s.to_string(),
                    proportions.get(s).copied().unwrap_or(Ratio::ONE),
                )
            })
            .collect();
        let props_slug = {
            let distinct: BTreeSet<String> = used.values().map(|r| r.to_string()).collect();
            if distinct.len() == 1 {
                format!(
                    "p{}",
                    slug(&used.values().next().copied().unwrap_or(Ratio::ONE))
                )
            } else {
                used.iter()
                    .map(|(s, r)| format!("{s}{}", slug(r)))
                    .collect::<Vec<_>>()
                    .join("-")
            }
        };
        let readable = format!(
            "{}-{}-{}-s{}",
            strategy.name(),
            model.name,
            props_slug,
            seed
        );
        let mut plan = PlanSpec {
            format_version: PLAN_FORMAT_VERSION,
            name: None,
            strategy: None,
            stages,
            train,
            optimizer_state: Default::default(),
            run: if run.as_object().is_some_and(|o| o.is_empty()) {
                None
            } else {
                Some(run)
            },
            origin: path.display().to_string(),
        };
        let content = serde_json::to_value(&plan).map_err(|e| Error::SpecInvalid {
            path: path.to_path_buf(),
            message: format!("cell {readable}: {e}"),
        })?;
        let hash = hex::encode(Sha256::digest(canonical_json(&content).as_bytes()));
        let id = format!("{readable}-{}", &hash[..12]);
        plan.name = Some(id.clone());
        // The runner resolves a relative `[run] model` against the plan file's directory, which
        // is deep in the output tree: resolve it against the spec's directory instead. The id
        // hashes the path as written, so it does not depend on where the checkout lives.
        if let Some(Value::Object(run)) = plan.run.as_mut() {
            if let Some(Value::String(m)) = run.get_mut("model") {
                let p = Path::new(m.as_str());
                if p.is_relative() {
                    let base = path.parent().unwrap_or(Path::new("."));
                    let joined = base.join(p);
                    *m = std::path::absolute(&joined)
                        .unwrap_or(joined)
                        .display()
                        .to_string();
                }
            }
        }
        let known: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        // Resolved (every stage's training settings validated) now, so a bad value in any cell
        // fails when the spec is loaded. The base is what the runner resolves against: the
        // trainer defaults with the run's seed (which does not affect validity).
        let run_seed = plan
            .run
            .as_ref()
            .and_then(|r| r.get("seed"))
            .and_then(Value::as_u64);
        let base = TrainConfig {
            seed: run_seed.unwrap_or(TrainConfig::default().seed),
            ..TrainConfig::default()
        };
        let resolved = plan.resolve(&known, &base).map_err(plan_err)?;
        Ok(Cell {
            id,
            index: 0,
            sweep: self.name.clone(),
            grids: vec![grid.name.clone()],
            strategy: strategy.to_string(),
            strategy_label: strategy.label(),
            model: model.name.clone(),
            proportions: used,
            k,
            seed,
            x: BTreeMap::new(),
            plan,
            stages: resolved.stages,
        })
    }
}

/// `1/256` → `1_256`, as `sft-schedule` names DMT plans.
pub fn slug(r: &Ratio) -> String {
    r.to_string().replace('/', "_")
}

/// `over` merged into `base`, recursively for tables.
fn merge(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut out = base.clone();
    for (k, v) in over {
        match (out.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                let merged = merge(b, o);
                *b = merged;
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// All combinations of one value per axis (one empty combination for no axes).
fn product(axes: &[&Vec<Ratio>]) -> Vec<Vec<Ratio>> {
    let mut out = vec![Vec::new()];
    for axis in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                axis.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(*v);
                    p
                })
            })
            .collect();
    }
    out
}
