//! The tiny sweep spec (`sweeps/tiny.toml`) end to end with the real `run_plan` example as the
//! runner (tiny byte-level model, fixture data): every cell done, tables and plots from real
//! results, and a rerun executes nothing. It lives here, not in `sft-sweep`, because `run_plan`
//! links libtorch and `sft-sweep`'s own tests build without it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sft_sweep::{collect, plot_all, run_cells, Layout, RunOptions, SweepSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec_path(name: &str) -> PathBuf {
    root().join("sweeps").join(name)
}

fn load(name: &str) -> (SweepSpec, Vec<sft_sweep::Cell>) {
    let path = spec_path(name);
    let spec = SweepSpec::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
    let cells = spec.expand(&path).unwrap_or_else(|e| panic!("{e}"));
    (spec, cells)
}

/// The tiny spec end to end with the real `run_plan` (tiny byte-level model, fixture data).
/// Needs libtorch to build `run_plan`: without LIBTORCH it fails, saying what to run.
#[test]
fn tiny_spec_runs_end_to_end_with_the_real_runner() {
    let bin = sft_testkit::example_binary(
        "sft-examples",
        "run_plan",
        "; it links libtorch: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` (sets LIBTORCH), or use `cargo xtask test`",
    );
    let path = spec_path("tiny.toml");
    let (spec, cells) = load("tiny.toml");
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let mut o = RunOptions {
        runner: vec![bin.display().to_string(), "--quiet".into()],
        jobs: 2,
        devices: Vec::new(),
        data_dir: None,
        env: Vec::new(),
    };
    o.data_dir = spec.data_dir(&path);
    o.devices = vec!["cpu".into(), "cpu".into()];
    let t0 = Instant::now();
    let s = run_cells(&cells, &layout, &o).unwrap();
    if let Some((id, why)) = s.failed.first() {
        let log = std::fs::read_to_string(layout.log_path(id)).unwrap_or_default();
        panic!("cell {id} failed: {why}\n--- runner.log ---\n{log}");
    }
    eprintln!(
        "tiny sweep with run_plan: {} cells in {:.1} s",
        s.succeeded.len(),
        t0.elapsed().as_secs_f64()
    );
    let table = collect(&cells, &layout).unwrap();
    assert!(table.rows.iter().any(|r| r.metric == "gsm8k_acc"));
    assert!(table
        .rows
        .iter()
        .any(|r| r.metric == "general_heldout_loss"));
    let plots = plot_all(&spec, &table, &layout.plots_dir()).unwrap();
    let names: Vec<String> = plots
        .png
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "math scaling curves, the k scan and held-out loss by strategy: {names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("-heldout-by-strategy.png")),
        "{names:?}"
    );
    let s = run_cells(&cells, &layout, &o).unwrap();
    assert_eq!(
        (s.skipped, s.executed.len()),
        (4, 0),
        "rerunning executes zero cells"
    );
}
