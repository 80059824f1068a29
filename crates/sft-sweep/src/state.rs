//! What a cell's run directory says: the runner's `status.json` and `results.json`
//! (`docs/formats.md`, "Run directory"; read as `sft-run`'s own [`Status`] and [`RunResults`]),
//! and the sweep's own `attempt.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sft_run::{ErrorKind, RunResults, Status, RESULTS_FORMAT_VERSION};

use crate::error::{io, Error, Result};

/// A cell's state, from its run directory.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    /// No `status.json`: never started.
    Pending,
    /// `status.json` says `running` (a live run, or one that was killed).
    Running,
    /// `status.json` says `failed`, with the runner's message and the error's kind (absent in
    /// files written before kinds were recorded).
    Failed {
        /// The runner's error message.
        error: String,
        /// The error's class (`status.json`'s `error_kind`).
        kind: Option<ErrorKind>,
    },
    /// `status.json` says `done` and `results.json` reads.
    Done(Box<RunResults>),
}

impl CellState {
    /// `done`, `failed`, `running` or `pending`.
    pub fn name(&self) -> &'static str {
        match self {
            CellState::Pending => "pending",
            CellState::Running => "running",
            CellState::Failed { .. } => "failed",
            CellState::Done(_) => "done",
        }
    }
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
        "failed" => Ok(CellState::Failed {
            error: status.error.unwrap_or_else(|| "failed (no message)".into()),
            kind: status.error_kind,
        }),
        "done" => {
            let path = dir.join("results.json");
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let results: RunResults = serde_json::from_str(&text).map_err(|e| Error::CellFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            check_version(&path, results.format_version)?;
            Ok(CellState::Done(Box::new(results)))
        }
        other => Err(Error::CellFile {
            path: status_path,
            message: format!("unknown state {other:?} (expected running, done or failed)"),
        }),
    }
}

fn check_version(path: &Path, found: u32) -> Result<()> {
    if found == RESULTS_FORMAT_VERSION {
        return Ok(());
    }
    Err(Error::CellFile {
        path: path.to_path_buf(),
        message: format!(
            "format_version {found} is not supported (this build reads {RESULTS_FORMAT_VERSION})"
        ),
    })
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
    /// The kind of the runner's error (its `status.json` `error_kind`), when it recorded one.
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
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
