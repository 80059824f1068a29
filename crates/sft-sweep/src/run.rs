//! Running cells: one runner process per cell, N at a time, one device each; finished cells are
//! skipped, interrupted or failed ones rerun (the runner resumes them), and a failing cell never
//! stops the others.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{io, Error, Result};
use crate::layout::Layout;
use crate::spec::Cell;
use crate::state::{read_state, write_atomic, Attempt, CellState};

/// How to run a sweep's cells.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The runner's argv prefix (program first); the driver appends `--plan P --run-dir D
    /// --stage-store S [--data-dir X] [--device DEV]`.
    pub runner: Vec<String>,
    /// How many cells run at once.
    pub jobs: usize,
    /// Devices handed out one per running cell (`cuda:0`, `cuda:1`); empty: no `--device`.
    pub devices: Vec<String>,
    /// Passed to the runner as `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Extra environment for the runner.
    pub env: Vec<(String, String)>,
}

/// What a call to [`run_cells`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Cells in the sweep.
    pub total: usize,
    /// Cells already done before this call (not run).
    pub skipped: usize,
    /// Cells this call started, in start order.
    pub executed: Vec<String>,
    /// Cells this call finished.
    pub succeeded: Vec<String>,
    /// Cells that failed in this call, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Writes `cell.json`, `plan.toml` and the manifests for `cells` (idempotent).
pub fn prepare(cells: &[Cell], layout: &Layout) -> Result<()> {
    std::fs::create_dir_all(layout.out()).map_err(io(layout.out()))?;
    let mut jsonl = String::new();
    let mut tsv = String::from("index\tid\tplan\trun_dir\n");
    for cell in cells {
        let plan = cell.plan_toml()?;
        write_if_changed(&layout.plan_path(&cell.id), plan.as_bytes())?;
        let json = serde_json::to_string_pretty(cell).map_err(|e| Error::CellFile {
            path: layout.cell_json(&cell.id),
            message: e.to_string(),
        })?;
        write_if_changed(&layout.cell_json(&cell.id), json.as_bytes())?;
        let line = serde_json::json!({
            "index": cell.index, "id": cell.id, "grids": cell.grids, "strategy": cell.strategy,
            "model": cell.model, "seed": cell.seed,
            "proportions": cell.proportions.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "k": cell.k.map(|k| k.to_string()),
        });
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
        tsv.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            cell.index,
            cell.id,
            layout.plan_path(&cell.id).display(),
            layout.run_dir(&cell.id).display()
        ));
    }
    write_atomic(&layout.manifest_jsonl(), jsonl.as_bytes())?;
    write_atomic(&layout.manifest_tsv(), tsv.as_bytes())
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_atomic(path, bytes)
}

/// The state of every cell, in order.
pub fn states(cells: &[Cell], layout: &Layout) -> Result<Vec<CellState>> {
    cells
        .iter()
        .map(|c| read_state(&layout.run_dir(&c.id)))
        .collect()
}

struct Sched {
    pending: VecDeque<usize>,
    running: Vec<Vec<String>>,
    trained: std::collections::BTreeSet<String>,
    free_devices: Vec<Option<String>>,
    summary: RunSummary,
}

/// Runs every cell that is not done; returns what happened. Only I/O errors of the sweep's own
/// files abort; a cell's failure is recorded in its `attempt.json` and in the summary.
pub fn run_cells(cells: &[Cell], layout: &Layout, opts: &RunOptions) -> Result<RunSummary> {
    if opts.runner.is_empty() {
        return Err(Error::Options("the runner command is empty".into()));
    }
    if opts.jobs == 0 {
        return Err(Error::Options("--jobs must be at least 1".into()));
    }
    if !opts.devices.is_empty() && opts.jobs > opts.devices.len() {
        return Err(Error::Options(format!(
            "--jobs {} but only {} devices ({}): one device per running cell",
            opts.jobs,
            opts.devices.len(),
            opts.devices.join(",")
        )));
    }
    prepare(cells, layout)?;
    let mut pending = VecDeque::new();
    let mut skipped = 0;
    let prefixes: Vec<Vec<String>> = cells.iter().map(Cell::stage_prefix_keys).collect();
    let mut trained = std::collections::BTreeSet::new();
    for (i, cell) in cells.iter().enumerate() {
        match read_state(&layout.run_dir(&cell.id))? {
            CellState::Done(_) => {
                skipped += 1;
                trained.extend(prefixes[i].iter().cloned());
            }
            state => {
                if state != CellState::Pending {
                    tracing::info!(cell = %cell.id, state = state.name(), "rerunning unfinished cell");
                }
                pending.push_back(i)
            }
        }
    }
    let to_run = pending.len();
    tracing::info!(
        total = cells.len(),
        skipped,
        to_run,
        jobs = opts.jobs,
        "sweep"
    );
    let free_devices: Vec<Option<String>> = if opts.devices.is_empty() {
        vec![None; opts.jobs]
    } else {
        opts.devices
            .iter()
            .take(opts.jobs)
            .cloned()
            .map(Some)
            .collect()
    };
    let state = Arc::new((
        Mutex::new(Sched {
            pending,
            running: Vec::new(),
            trained,
            free_devices,
            summary: RunSummary {
                total: cells.len(),
                skipped,
                ..Default::default()
            },
        }),
        Condvar::new(),
    ));
    let bar = ProgressBar::new(to_run as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} cells {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.min(to_run.max(1)) {
            scope.spawn(|| loop {
                let (lock, cvar) = &*state;
                let Ok(mut s) = lock.lock() else { return };
                let picked = loop {
                    if s.pending.is_empty() {
                        break None;
                    }
                    // A stage prefix shared with a running cell and not trained yet would be
                    // trained twice at once: wait for the running cell to finish it.
                    let pos = s.pending.iter().position(|&i| {
                        !s.running.iter().any(|r| {
                            r.iter()
                                .any(|k| prefixes[i].contains(k) && !s.trained.contains(k))
                        })
                    });
                    if let Some(pos) = pos.filter(|_| !s.free_devices.is_empty()) {
                        let device = s.free_devices.remove(0);
                        let i = s.pending.remove(pos).unwrap_or(0);
                        s.running.push(prefixes[i].clone());
                        break Some((i, device));
                    }
                    s = match cvar.wait(s) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                };
                let Some((i, device)) = picked else {
                    cvar.notify_all();
                    return;
                };
                s.summary.executed.push(cells[i].id.clone());
                drop(s);
                bar.set_message(cells[i].id.clone());
                let outcome = run_one(&cells[i], layout, opts, device.as_deref());
                bar.inc(1);
                let Ok(mut s) = lock.lock() else { return };
                if let Some(pos) = s.running.iter().position(|r| *r == prefixes[i]) {
                    s.running.remove(pos);
                }
                s.free_devices.push(device);
                match outcome {
                    Ok(a) if a.done => {
                        s.trained.extend(prefixes[i].iter().cloned());
                        s.summary.succeeded.push(a.cell)
                    }
                    Ok(a) => {
                        let why = a.error.unwrap_or_default();
                        s.summary.failed.push((a.cell, why))
                    }
                    Err(e) => {
                        if let Ok(mut f) = fatal.lock() {
                            f.get_or_insert(e);
                        }
                        s.pending.clear();
                    }
                }
                cvar.notify_all();
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = fatal.into_inner().ok().flatten() {
        return Err(e);
    }
    let (lock, _) = &*state;
    let s = lock
        .lock()
        .map_err(|_| Error::Options("a worker thread panicked".into()))?;
    let summary = s.summary.clone();
    tracing::info!(
        executed = summary.executed.len(),
        succeeded = summary.succeeded.len(),
        failed = summary.failed.len(),
        "sweep finished"
    );
    for (id, why) in &summary.failed {
        tracing::warn!(cell = %id, "failed: {why}");
    }
    Ok(summary)
}

/// The runner command line for one cell (what a local run and a Slurm task execute).
pub fn runner_args(
    cell: &Cell,
    layout: &Layout,
    data_dir: Option<&Path>,
    device: Option<&str>,
) -> Vec<String> {
    let mut args = vec![
        "--plan".to_string(),
        layout.plan_path(&cell.id).display().to_string(),
        "--run-dir".to_string(),
        layout.run_dir(&cell.id).display().to_string(),
        "--stage-store".to_string(),
        layout.stage_store().display().to_string(),
    ];
    if let Some(d) = data_dir {
        args.push("--data-dir".into());
        args.push(d.display().to_string());
    }
    if let Some(dev) = device {
        args.push("--device".into());
        args.push(dev.to_string());
    }
    args
}

fn run_one(
    cell: &Cell,
    layout: &Layout,
    opts: &RunOptions,
    device: Option<&str>,
) -> Result<Attempt> {
    let t0 = Instant::now();
    let run_dir = layout.run_dir(&cell.id);
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    let log_path = layout.log_path(&cell.id);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let args = runner_args(cell, layout, opts.data_dir.as_deref(), device);
    let _ = writeln!(
        log,
        "==== sweep: {} {}",
        opts.runner.join(" "),
        args.join(" ")
    );
    let err_log = log.try_clone().map_err(io(&log_path))?;
    tracing::info!(cell = %cell.id, device = device.unwrap_or("-"), "starting");
    let mut cmd = Command::new(&opts.runner[0]);
    cmd.args(&opts.runner[1..])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let status = cmd.status();
    let (exit_code, spawn_error) = match status {
        Ok(s) => (s.code(), None),
        Err(e) => (
            None,
            Some(format!("cannot start {:?}: {e}", opts.runner[0])),
        ),
    };
    let state = read_state(&run_dir);
    let mut error_kind = None;
    let (done, error) = match (&spawn_error, state) {
        (Some(e), _) => (false, Some(e.clone())),
        (None, Ok(CellState::Done(_))) if exit_code == Some(0) => (true, None),
        (None, Ok(CellState::Done(_))) => (
            false,
            Some(format!(
                "status is done but the runner exited with {exit_code:?}"
            )),
        ),
        (None, Ok(CellState::Failed { error, kind })) => {
            error_kind = kind;
            (false, Some(error))
        }
        (None, Ok(other)) => (
            false,
            Some(format!(
                "runner {} with status {}; last log lines:\n{}",
                match exit_code {
                    Some(c) => format!("exited with code {c}"),
                    None => "was killed by a signal".to_string(),
                },
                other.name(),
                tail(&log_path, 15)
            )),
        ),
        (None, Err(e)) => (false, Some(e.to_string())),
    };
    let attempt = Attempt {
        cell: cell.id.clone(),
        exit_code,
        done,
        error,
        error_kind,
        device: device.map(str::to_string),
        seconds: t0.elapsed().as_secs_f64(),
        log: log_path,
    };
    let json = serde_json::to_string_pretty(&attempt).map_err(|e| Error::CellFile {
        path: layout.attempt_path(&cell.id),
        message: e.to_string(),
    })?;
    write_atomic(&layout.attempt_path(&cell.id), json.as_bytes())?;
    if done {
        tracing::info!(cell = %cell.id, seconds = attempt.seconds, "done");
    } else {
        tracing::warn!(cell = %cell.id, "failed: {}", attempt.error.as_deref().unwrap_or(""));
    }
    Ok(attempt)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
