//! Per-device memory of a sweep's cells before anything runs: the memory column of
//! `sft-sweep --dry-run`.
//!
//! Each stage of a cell is estimated with `sft_config::memory` (the estimate `train` and
//! `run_plan --estimate` print, and the trainer checks before it loads anything) from the
//! stage's resolved trainer config (its `dtype`, `zero`, micro-batch, length, checkpointing and
//! loss chunk), the cell's model shape and a [`MemoryTarget`]; a cell's figure is its largest
//! stage's peak. The shape is read from the cell's `[run] model` (an HF directory, a
//! `config.json` or a GGUF file); where that does not read, from the model's `config` or
//! `shape` preset in the spec; where there is neither, the cell has no estimate and says why.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;
use sft_config::memory::{gib, DeviceKind, MemoryEstimate, ModelShape, Parallel};

use crate::spec::{Cell, SweepSpec};

/// Where the estimate assumes a cell trains: the kind of device and the data-parallel ranks of
/// one cell (a stage with `zero = 1` shards its master weights and moments over them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryTarget {
    /// CPU or CUDA.
    pub device: DeviceKind,
    /// Ranks per cell (1: one process).
    pub world_size: u64,
    /// Where the two came from, for the listing (`--slurm and [slurm]: 1 node × 8 GPUs`).
    pub origin: String,
}

impl MemoryTarget {
    /// How `sft-sweep` would launch the spec's cells:
    ///
    /// * `slurm_device` (`--slurm`, with `--slurm-device`): `[slurm]`'s `nodes × gpus_per_node`
    ///   ranks on that device;
    /// * else `devices` (`--devices`, a local run): one process per cell, CUDA if any device is
    ///   `cuda…`, else the CPU;
    /// * else a spec with `[slurm]` is written for GPUs: its ranks, CUDA;
    /// * else one CPU process (the runner's `auto` device cannot be known here).
    pub fn new(spec: &SweepSpec, slurm_device: Option<&str>, devices: &[String]) -> MemoryTarget {
        let slurm = spec.slurm.clone().unwrap_or_default();
        let ranks = u64::from(slurm.ranks());
        let layout = format!(
            "{} node(s) × {} GPU(s)",
            slurm.nodes(),
            slurm.gpus_per_node()
        );
        let kind = |d: &str| {
            if d.starts_with("cuda") {
                DeviceKind::Cuda
            } else {
                DeviceKind::Cpu
            }
        };
        match (slurm_device, devices, &spec.slurm) {
            (Some(d), _, _) => MemoryTarget {
                device: kind(d),
                world_size: ranks,
                origin: format!("--slurm (--slurm-device {d}), [slurm] {layout}"),
            },
            (None, [_, ..], _) => MemoryTarget {
                device: if devices.iter().any(|d| kind(d) == DeviceKind::Cuda) {
                    DeviceKind::Cuda
                } else {
                    DeviceKind::Cpu
                },
                world_size: 1,
                origin: "--devices: one process per cell".into(),
            },
            (None, [], Some(_)) => MemoryTarget {
                device: DeviceKind::Cuda,
                world_size: ranks,
                origin: format!("the spec's [slurm]: {layout}"),
            },
            (None, [], None) => MemoryTarget {
                device: DeviceKind::Cpu,
                world_size: 1,
                origin: "no [slurm], --slurm or --devices: one CPU process per cell".into(),
            },
        }
    }

    /// The layout for stages with ZeRO stage `zero`.
    pub fn parallel(&self, zero: u8) -> Parallel {
        Parallel {
            world_size: self.world_size,
            zero,
        }
    }
}

impl fmt::Display for MemoryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let device = match self.device {
            DeviceKind::Cpu => "CPU",
            DeviceKind::Cuda => "CUDA",
        };
        write!(
            f,
            "{device}, {} rank(s) per cell ({})",
            self.world_size, self.origin
        )
    }
}

/// Where a cell's model shape came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeSource {
    /// The cell's `[run] model`.
    Model(PathBuf),
    /// The model's `config` in the spec (its `[run] model` did not read).
    Config(PathBuf),
    /// The model's `shape` preset in the spec (its `[run] model` did not read).
    Preset(&'static str),
}

impl fmt::Display for ShapeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeSource::Model(p) => write!(f, "model {}", p.display()),
            ShapeSource::Config(p) => write!(f, "config {}", p.display()),
            ShapeSource::Preset(name) => write!(f, "preset {name}"),
        }
    }
}

/// A cell's estimated memory per device: its largest stage's.
#[derive(Debug, Clone, PartialEq)]
pub struct CellMemory {
    /// Where the model's shape came from.
    pub source: ShapeSource,
    /// The stage that peaks (the first of equal ones).
    pub stage: String,
    /// That stage's estimate.
    pub estimate: MemoryEstimate,
}

/// The estimate of `cell` (of `spec`) on `target`, or why there is none (the model's shape
/// cannot be found: `model /models/x: not found`).
pub fn cell_memory(
    spec: &SweepSpec,
    cell: &Cell,
    target: &MemoryTarget,
) -> Result<CellMemory, String> {
    let (shape, source) = cell_shape(spec, cell)?;
    let mut best: Option<(&str, MemoryEstimate)> = None;
    for stage in &cell.stages {
        let c = &stage.config;
        let est = MemoryEstimate::new(&shape, c, target.parallel(c.zero), target.device);
        if best.as_ref().is_none_or(|(_, b)| est.peak > b.peak) {
            best = Some((&stage.name, est));
        }
    }
    let (stage, estimate) = best.ok_or("the cell has no resolved stages")?;
    Ok(CellMemory {
        source,
        stage: stage.to_string(),
        estimate,
    })
}

/// The cell's model shape: its `[run] model`'s, else its model's `config` or `shape`.
fn cell_shape(spec: &SweepSpec, cell: &Cell) -> Result<(ModelShape, ShapeSource), String> {
    let model = cell
        .plan
        .run
        .as_ref()
        .and_then(|r| r.get("model"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let why = match model {
        Some(path) => match ModelShape::from_model_path(&path) {
            Ok(shape) => return Ok((shape, ShapeSource::Model(path))),
            Err(_) if !path.exists() => format!("model {}: not found", path.display()),
            Err(e) => format!("model {}: {}", path.display(), reason(&e)),
        },
        None => "no [run] model: the runner's default".into(),
    };
    let Some(spec_model) = spec.models.iter().find(|m| m.name == cell.model) else {
        return Err(why);
    };
    if let (Some(config), Some(shape)) = (&spec_model.config, spec_model.config_shape) {
        return Ok((shape, ShapeSource::Config(config.clone())));
    }
    match spec_model.shape {
        Some(preset) => Ok((preset.shape(), ShapeSource::Preset(preset.name()))),
        None => Err(why),
    }
}

/// A shape error's message and causes, without the path the column already names.
fn reason(e: &sft_config::Error) -> String {
    let mut out = match e {
        sft_config::Error::Model { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// The `--dry-run` listing: a header, then per cell its index, id, grids, the stage that peaks,
/// the estimated peak per device (GiB) and where the model's shape came from; with
/// `limit_gib`, a column marking the cells whose peak exceeds it (`OVER`) and a summary line.
/// A cell without an estimate shows `?` and the reason.
pub fn dry_run_listing(
    spec: &SweepSpec,
    cells: &[Cell],
    target: &MemoryTarget,
    limit_gib: Option<f64>,
) -> String {
    struct Row<'a> {
        cell: &'a Cell,
        grids: String,
        memory: Result<CellMemory, String>,
    }
    let rows: Vec<Row> = cells
        .iter()
        .map(|cell| Row {
            cell,
            grids: format!("[{}]", cell.grids.join(", ")),
            memory: cell_memory(spec, cell, target),
        })
        .collect();
    let width = |header: &str, len: fn(&Row) -> usize| {
        rows.iter().map(len).max().unwrap_or(0).max(header.len())
    };
    let id_w = width("id", |r| r.cell.id.len());
    let grids_w = width("grids", |r| r.grids.len());
    let stage_w = width("peak stage", |r| {
        r.memory.as_ref().map_or(1, |m| m.stage.len())
    });
    let limit_header = limit_gib.map(|g| format!("> {g} GiB"));
    let limit_bytes = limit_gib.map(|g| g * f64::from(1u32 << 30));
    let mut out = format!(
        "{:>5}  {:<id_w$}  {:<grids_w$}  {:<stage_w$}  {:>10}  ",
        "index", "id", "grids", "peak stage", "per device"
    );
    if let Some(h) = &limit_header {
        out.push_str(&format!("{h:<4}  "));
    }
    out.push_str("shape\n");
    let (mut over, mut unknown) = (0usize, 0usize);
    for row in &rows {
        let (stage, peak, marker, shape) = match &row.memory {
            Ok(m) => {
                let exceeds = limit_bytes.is_some_and(|l| m.estimate.peak as f64 > l);
                over += usize::from(exceeds);
                (
                    m.stage.clone(),
                    gib(m.estimate.peak),
                    if exceeds { "OVER" } else { "" },
                    m.source.to_string(),
                )
            }
            Err(why) => {
                unknown += 1;
                ("-".into(), "?".into(), "?", format!("? ({why})"))
            }
        };
        let mut line = format!(
            "{:>5}  {:<id_w$}  {:<grids_w$}  {:<stage_w$}  {:>10}  ",
            row.cell.index, row.cell.id, row.grids, stage, peak
        );
        if let Some(h) = &limit_header {
            line.push_str(&format!("{marker:<w$}  ", w = h.len().max(4)));
        }
        line.push_str(&shape);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(g) = limit_gib {
        out.push_str(&format!(
            "{over} of {} cells exceed {g} GiB per device (marked OVER)",
            cells.len()
        ));
        if unknown > 0 {
            out.push_str(&format!("; {unknown} without an estimate (marked ?)"));
        }
        out.push('\n');
    }
    if unknown > 0 {
        out.push_str(&format!(
            "{unknown} of {} cells have no memory estimate: give their [[models]] a `shape` \
             preset ({}) or a `config` (an HF config.json)\n",
            cells.len(),
            sft_config::memory::SHAPE_PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}
