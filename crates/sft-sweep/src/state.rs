//! What a cell's run directory says: the runner's `status.json` and `results.json`
//! (`docs/formats.md`, "Run directory"), and the sweep's own `attempt.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

/// The run-directory format this build reads.
pub const RUN_FORMAT_VERSION: u32 = 1;

/// A cell's state, from its run directory.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    /// No `status.json`: never started.
    Pending,
    /// `status.json` says `running` (a live run, or one that was killed).
    Running,
    /// `status.json` says `failed`, with the runner's (or the sweep's) message.
    Failed(String),
    /// `status.json` says `done` and `results.json` reads.
    Done(Box<CellResults>),
}

impl CellState {
    /// `done`, `failed`, `running` or `pending`.
    pub fn name(&self) -> &'static str {
        match self {
            CellState::Pending => "pending",
            CellState::Running => "running",
            CellState::Failed(_) => "failed",
            CellState::Done(_) => "done",
        }
    }
}

/// One metric with its confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The point estimate.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
    /// How many items the estimate averages over.
    pub n: u64,
}

/// The part of `results.json` the sweep reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResults {
    /// Must be [`RUN_FORMAT_VERSION`].
    pub format_version: u32,
    /// The plan's name (the cell id).
    pub plan: String,
    /// Metric name → value.
    pub metrics: BTreeMap<String, Metric>,
    /// Per-stage records, kept as JSON.
    #[serde(default)]
    pub stages: Vec<serde_json::Value>,
    /// Provenance, kept as JSON.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

#[derive(Deserialize)]
struct Status {
    format_version: Option<u32>,
    state: String,
    #[serde(default)]
    error: Option<String>,
}

/// Reads the state of the run directory `dir`.
pub fn read_state(dir: &Path) -> Result<CellState> {
    let status_path = dir.join("status.json");
    let text = match std::fs::read_to_string(&status_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CellState::Pending),
        Err(e) => return Err(io(&status_path)(e)),
    };
    let status: Status = serde_json::from_str(&text).map_err(|e| Error::CellFile {
        path: status_path.clone(),
        message: e.to_string(),
    })?;
    check_version(&status_path, status.format_version)?;
    match status.state.as_str() {
        "running" => Ok(CellState::Running),
        "failed" => Ok(CellState::Failed(
            status.error.unwrap_or_else(|| "failed (no message)".into()),
        )),
        "done" => {
            let path = dir.join("results.json");
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let results: CellResults =
                serde_json::from_str(&text).map_err(|e| Error::CellFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            check_version(&path, Some(results.format_version))?;
            Ok(CellState::Done(Box::new(results)))
        }
        other => Err(Error::CellFile {
            path: status_path,
            message: format!("unknown state {other:?} (expected running, done or failed)"),
        }),
    }
}

fn check_version(path: &Path, v: Option<u32>) -> Result<()> {
    match v {
        None | Some(RUN_FORMAT_VERSION) => Ok(()),
        Some(found) => Err(Error::CellFile {
            path: path.to_path_buf(),
            message: format!(
                "format_version {found} is not supported (this build reads {RUN_FORMAT_VERSION})"
            ),
        }),
    }
}

/// What the sweep records about its last attempt at a cell (`cells/<id>/attempt.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The cell id.
    pub cell: String,
    /// The runner's exit code (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    /// Whether the runner left the cell done.
    pub done: bool,
    /// The failure, when not done: the runner's error, or the last lines of its log.
    pub error: Option<String>,
    /// The device the cell ran on, if any.
    pub device: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The log file.
    pub log: PathBuf,
}

impl Attempt {
    /// Reads `attempt.json` if present.
    pub fn read(path: &Path) -> Result<Option<Attempt>> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| Error::CellFile {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
