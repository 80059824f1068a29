//! `sft-sweep`: the paper's experiment grids as specs, run resumably, drawn as tables and plots.
//!
//! The paper (Dong et al., arXiv 2310.05492) is a grid of dozens of fine-tuning runs: each
//! source alone at 1…1/256 (RQ1), mixed against individual (RQ2), three fixed/scaled set-ups
//! (RQ3), four strategies (RQ4), a scan of DMT's k, and an ablation. This crate turns one TOML
//! spec per experiment into those runs and their figures, without linking libtorch:
//!
//! * [`SweepSpec`] → [`SweepSpec::expand`] → [`Cell`]s. A cell is a complete `sft-schedule`
//!   plan; its id is a readable name plus a hash of the plan's content, so it is stable across
//!   reruns and equal plans from different grids (or different specs sharing an output
//!   directory) run once.
//! * [`run_cells`] runs each unfinished cell as its own runner process (`run_plan` by default):
//!   N at a time, one device each, a failing cell recorded and the rest carried on. Cells whose
//!   runner left `status.json` at `done` are skipped; interrupted and failed ones rerun, and the
//!   runner resumes them. Two cells sharing an untrained stage prefix never run at once, so the
//!   shared stage is trained once and reused through the stage store.
//! * [`dry_run_listing`] lists the cells with each one's estimated peak memory per device (its
//!   largest stage's, [`cell_memory`], on a [`MemoryTarget`]) before anything runs.
//! * [`slurm_script`] writes the same cells as a Slurm job array over the same layout.
//! * [`collect`] reads every cell's `results.json` into one long table (a row per cell and
//!   metric, with confidence intervals) written as Parquet, CSV and Markdown; [`plot_all`] draws
//!   the paper's figures (scaling curves, mixed vs individual, RQ3 panels, the k scan) as PNG and
//!   SVG; [`table1`] regenerates the paper's Table 1 from the strategy cells.
//!
//! The run-directory contract (`status.json`, `results.json`) is in `docs/formats.md`.

mod error;
mod layout;
mod memory;
mod plot;
mod results;
mod run;
mod slurm;
mod spec;
mod state;

pub use error::{Error, Result};
pub use layout::Layout;
pub use memory::{cell_memory, dry_run_listing, CellMemory, MemoryTarget, ShapeSource};
pub use plot::{plot_all, PlotFiles};
pub use results::{
    collect, paired_tables, table1, write_tables, CellSummary, ResultRow, ResultsTable, METRICS,
};
pub use run::{prepare, run_cells, runner_args, states, RunOptions, RunSummary};
pub use slurm::{slurm_script, SlurmOptions};
pub use spec::{slug, Cell, GridSpec, ModelSpec, SlurmSpec, SweepSpec, SPEC_FORMAT_VERSION};
pub use state::{read_state, Attempt, CellState};
