//! Where a sweep keeps things under its output directory.
//!
//! ```text
//! OUT/cells.jsonl            one line per cell of the last expanded spec (index, id, grids, ...)
//! OUT/cells.tsv              index, id, plan, run dir: what the Slurm array script reads
//! OUT/cells/<id>/cell.json   the cell (coordinates and plan)
//! OUT/cells/<id>/plan.toml   the plan the runner gets
//! OUT/cells/<id>/run/        the runner's run directory (status.json, results.json, ...)
//! OUT/cells/<id>/runner.log  the runner's stdout and stderr, appended per attempt
//! OUT/cells/<id>/attempt.json  the sweep's record of the last attempt
//! OUT/stages/                the stage store every cell shares
//! OUT/results/               results.{parquet,csv,md}, cells.md, table1.md
//! OUT/plots/                 *.png and *.svg
//! OUT/slurm/                 sweep.sbatch and logs/
//! ```
//!
//! Cell ids hash the plan's content, so several specs may share one output directory and their
//! identical cells run once.

use std::path::{Path, PathBuf};

/// Paths under a sweep's output directory.
#[derive(Debug, Clone)]
pub struct Layout {
    out: PathBuf,
}

impl Layout {
    /// The layout rooted at `out`, made absolute (manifests and Slurm scripts hold absolute
    /// paths, so they work from any directory).
    pub fn new(out: impl Into<PathBuf>) -> Layout {
        let out = out.into();
        Layout {
            out: std::path::absolute(&out).unwrap_or(out),
        }
    }

    /// The output directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// `OUT/cells/<id>`.
    pub fn cell_dir(&self, id: &str) -> PathBuf {
        self.out.join("cells").join(id)
    }

    /// `OUT/cells/<id>/plan.toml`.
    pub fn plan_path(&self, id: &str) -> PathBuf {
        self.cell_dir(id).join("plan.toml")
    }

    /// `OUT/cells/<id>/cell.json`.
    pub fn cell_json(&self, id: &str) -> PathBuf {
        self.cell_dir(id).join("cell.json")
    }

    /// `OUT/cells/<id>/run`: the runner's run directory.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.cell_dir(id).join("run")
    }

    /// `OUT/cells/<id>/runner.log`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.cell_dir(id).join("runner.log")
    }

    /// `OUT/cells/<id>/attempt.json`.
    pub fn attempt_path(&self, id: &str) -> PathBuf {
        self.cell_dir(id).join("attempt.json")
    }

    /// `OUT/stages`: the shared stage store.
    pub fn stage_store(&self) -> PathBuf {
        self.out.join("stages")
    }

    /// `OUT/cells.jsonl`.
    pub fn manifest_jsonl(&self) -> PathBuf {
        self.out.join("cells.jsonl")
    }

    /// `OUT/cells.tsv`.
    pub fn manifest_tsv(&self) -> PathBuf {
        self.out.join("cells.tsv")
    }

    /// `OUT/results`.
    pub fn results_dir(&self) -> PathBuf {
        self.out.join("results")
    }

    /// `OUT/plots`.
    pub fn plots_dir(&self) -> PathBuf {
        self.out.join("plots")
    }

    /// `OUT/slurm`.
    pub fn slurm_dir(&self) -> PathBuf {
        self.out.join("slurm")
    }
}
