//! Sweep tests: every built-in spec expands to the paper's grid; the driver resumes, isolates
//! failures and finishes killed cells (with `fixtures/sweep/fake_runner.py`); tables, Table 1 and
//! plots come out of real (fake-runner) results; the Slurm script runs cell i as task i. (The
//! tiny spec with the real `run_plan`, which links libtorch, is `examples/tests/sweep_real_runner.rs`:
//! this crate's tests build without libtorch.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sft_run::ErrorKind;
use sft_schedule::{PlanSpec, Ratio, STANDARD_SOURCES};
use sft_sweep::{
    collect, plot_all, prepare, read_state, run_cells, slurm_script, table1, write_tables,
    CellState, Layout, RunOptions, SlurmOptions, SweepSpec,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

fn r(s: &str) -> Ratio {
    Ratio::parse(s).unwrap()
}

fn fake_runner() -> Vec<String> {
    let py = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import tomllib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "the fake runner needs Python >= 3.11 (tomllib) as `{py}` (set PYTHON3 to another interpreter)");
    vec![
        py,
        root()
            .join("fixtures/sweep/fake_runner.py")
            .display()
            .to_string(),
    ]
}

fn opts(runner: Vec<String>, jobs: usize, env: &[(&str, &str)]) -> RunOptions {
    RunOptions {
        runner,
        jobs,
        devices: Vec::new(),
        data_dir: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn log_lines(path: &Path, event: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|w| w.first().map(String::as_str) == Some(event))
        .collect()
}

#[test]
fn builtin_specs_expand_to_the_papers_grids() {
    // (file, cells, grid points): see the comment at the top of each spec.
    let expected = [
        ("rq1.toml", 45, 45),
        ("rq2.toml", 60, 60),
        ("rq3.toml", 39, 45),
        ("rq4.toml", 21, 21),
        ("k_scan.toml", 27, 27),
        ("ablation_no_code_math.toml", 60, 60),
        ("tiny.toml", 4, 4),
        ("mini_rq4.toml", 24, 24),
    ];
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join("sweeps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    let tested: BTreeSet<String> = expected.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(
        on_disk, tested,
        "every built-in spec has an expected cell count here"
    );
    for (file, n_cells, n_points) in expected {
        let (_, cells) = load(file);
        assert_eq!(cells.len(), n_cells, "{file}");
        assert_eq!(
            cells.iter().map(|c| c.grids.len()).sum::<usize>(),
            n_points,
            "{file}"
        );
        let ids: BTreeSet<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), cells.len(), "{file}: ids are unique");
        // Stable: a second expansion gives the same ids, in the same order.
        let (_, again) = load(file);
        assert_eq!(
            cells.iter().map(|c| &c.id).collect::<Vec<_>>(),
            again.iter().map(|c| &c.id).collect::<Vec<_>>()
        );
        for (i, cell) in cells.iter().enumerate() {
            assert_eq!(cell.index, i);
            // Every plan round-trips through the planner's own parser and validates.
            let text = cell.plan_toml().unwrap();
            let plan = PlanSpec::from_toml_str(&text, &cell.id)
                .unwrap()
                .resolve(&STANDARD_SOURCES, &Default::default())
                .unwrap();
            assert_eq!(plan.name, cell.id);
        }
    }

    // RQ1: each source alone; 3 sources x 5 proportions per model.
    let (_, rq1) = load("rq1.toml");
    let math_1_64: Vec<_> = rq1
        .iter()
        .filter(|c| {
            c.strategy == "individual:math"
                && c.model == "llama-13b"
                && c.proportions["math"] == r("1/64")
        })
        .collect();
    assert_eq!(math_1_64.len(), 1);
    assert_eq!(math_1_64[0].plan.stages.len(), 1);
    assert_eq!(
        math_1_64[0].plan.stages[0].mixture,
        BTreeMap::from([("math".to_string(), r("1/64"))])
    );
    assert!(
        math_1_64[0]
            .id
            .starts_with("individual-math-llama-13b-p1_64-s42-"),
        "{}",
        math_1_64[0].id
    );

    // RQ2's individual cells are RQ1's: the same ids.
    let (_, rq2) = load("rq2.toml");
    let rq1_ids: BTreeSet<&str> = rq1.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        rq2.iter()
            .filter(|c| rq1_ids.contains(c.id.as_str()))
            .count(),
        45
    );
    let mixed = rq2
        .iter()
        .find(|c| c.strategy == "multi-task" && c.proportions["code"] == r("1/16"))
        .unwrap();
    let mix = &mixed.plan.stages[0].mixture;
    assert_eq!(
        (mix["code"], mix["math"], mix["general"]),
        (r("1/16"), r("1/16"), r("1/16"))
    );

    // RQ3 set-up 1: full general + specialized at 1/4.
    let (_, rq3) = load("rq3.toml");
    let c = rq3
        .iter()
        .find(|c| {
            c.grids.contains(&"general-full".to_string()) && c.proportions["code"] == r("1/4")
        })
        .unwrap();
    let mix = &c.plan.stages[0].mixture;
    assert_eq!(
        (mix["general"], mix["code"], mix["math"]),
        (r("1"), r("1/4"), r("1/4"))
    );
    // The all-full cell belongs to set-ups 1 and 2; general 1/64 + full specialized to 2 and 3.
    let full = rq3
        .iter()
        .filter(|c| c.proportions.values().all(|p| *p == Ratio::ONE))
        .collect::<Vec<_>>();
    assert_eq!(full.len(), 3);
    assert!(full
        .iter()
        .all(|c| c.grids == ["general-full", "specialized-full"]));
    assert_eq!(
        full[0].x["specialized-full"],
        ("proportion.general".to_string(), Ratio::ONE)
    );

    // RQ4: the seven rows of Table 1 per model, DMT at k = 1/256.
    let (_, rq4) = load("rq4.toml");
    let labels: BTreeSet<&str> = rq4.iter().map(|c| c.strategy_label.as_str()).collect();
    let want: BTreeSet<&str> = [
        "General only",
        "Math only",
        "Code only",
        "Multi-task",
        "Sequential",
        "Mixed sequential",
        "DMT (k=1/256)",
    ]
    .into();
    assert_eq!(labels, want);
    let seq = rq4.iter().find(|c| c.strategy == "sequential").unwrap();
    let order: Vec<Vec<&str>> = seq
        .plan
        .stages
        .iter()
        .map(|s| s.mixture.keys().map(String::as_str).collect())
        .collect();
    assert_eq!(order, vec![vec!["code"], vec!["math"], vec!["general"]]);

    // k scan: stage 2 holds all general data and k of each specialized source; k = 0 has none.
    let (_, ks) = load("k_scan.toml");
    let k4 = ks
        .iter()
        .find(|c| c.k == Some(r("1/4")) && c.model == "llama-7b")
        .unwrap();
    let s2 = &k4.plan.stages[1].mixture;
    assert_eq!(
        (s2["general"], s2["code"], s2["math"]),
        (r("1"), r("1/4"), r("1/4"))
    );
    let k0 = ks
        .iter()
        .find(|c| c.k == Some(Ratio::parse("0").unwrap()) && c.model == "llama-7b")
        .unwrap();
    assert_eq!(
        k0.plan.stages[1].mixture.keys().collect::<Vec<_>>(),
        vec!["general"]
    );
    // All DMT cells of one model share stage 1, so the driver trains it once.
    let first: BTreeSet<String> = ks
        .iter()
        .filter(|c| c.model == "llama-7b")
        .map(|c| c.stage_prefix_keys()[0].clone())
        .collect();
    assert_eq!(first.len(), 1);

    // The ablation reads the filtered general file.
    let (_, abl) = load("ablation_no_code_math.toml");
    let run = abl[0].plan.run.as_ref().unwrap();
    assert_eq!(
        run["data"]["sources"]["general"]["path"],
        "sharegpt/sharegpt_no_code_math.jsonl"
    );
    assert!(
        abl.iter().all(|c| !rq2.iter().any(|d| d.id == c.id)),
        "ablation cells differ from RQ2's"
    );
}

#[test]
fn spec_errors_name_the_file_and_grid() {
    let base = "format_version = 1\nname = \"t\"\n[[models]]\nname = \"m\"\n";
    let cases = [
        ("[[grid]]\nname = \"g\"\nstrategies = [\"round-robin\"]\n", "grid \"g\": unknown strategy \"round-robin\""),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\nk = [\"1/2\"]\n", "no strategy is `dmt`"),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\nproportions = [\"0\"]\n", "not in (0, 1]"),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"individual\"]\nsources = [\"poetry\"]\n", "unknown source \"poetry\""),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\nproportion = { prose = [\"1\"] }\n", "proportion.prose"),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"dmt\"]\nk = [\"2\"]\n", "k"),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\nmodels = [\"x\"]\n", "unknown model \"x\""),
        // Training settings are typed and every cell's plan is resolved: a typo or a bad value
        // in a grid's `train` names the key.
        ("[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\ntrain = { lrr = 1e-4 }\n", "unknown training setting `lrr`"),
        ("[[grid]]\nname = \"g\"\nstrategies = [\"sequential\"]\ntrain = { lr = -1.0 }\n", "stage \"code\": `lr`: must be finite"),
        // So are the runner's settings: a typo in `[run]`, an impossible `[run.eval.hidden]`.
        ("[run.eval]\ngsm8kk = 3\n[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\n", "gsm8kk"),
        ("[run.data]\nheldout = 4\n[run.eval.hidden]\nlayer = 3\n[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\n", "fewer than the probe's 5 folds"),
    ];
    let path = Path::new("specs/bad.toml");
    for (grid, want) in cases {
        let spec = SweepSpec::from_toml_str(&format!("{base}{grid}"), path).unwrap();
        let err = spec.expand(path).unwrap_err().to_string();
        assert!(
            err.contains("specs/bad.toml") && err.contains(want),
            "{err}"
        );
    }
    let err = SweepSpec::from_toml_str("format_version = 2\nname = \"t\"\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("format_version 2"), "{err}");
    let err = SweepSpec::from_toml_str(
        &format!("{base}[[grid]]\nname = \"g\"\nstrategy = \"x\"\n"),
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("specs/bad.toml") && err.contains("strategy"),
        "{err}"
    );
}

#[test]
fn reruns_skip_done_cells_and_failures_stay_isolated() {
    let (_, cells) = load("tiny.toml");
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let log = tmp.path().join("runner.log");
    let log_s = log.display().to_string();
    let victim = cells[1].id.clone();

    // First run: one cell fails, the other three finish anyway.
    let s = run_cells(
        &cells,
        &layout,
        &opts(
            fake_runner(),
            2,
            &[("FAKE_RUNNER_LOG", &log_s), ("FAKE_RUNNER_FAIL", &victim)],
        ),
    )
    .unwrap();
    assert_eq!(s.executed.len(), 4);
    assert_eq!(s.succeeded.len(), 3);
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].0, victim);
    assert!(
        s.failed[0].1.contains("injected failure"),
        "{}",
        s.failed[0].1
    );
    assert_eq!(
        read_state(&layout.run_dir(&victim)).unwrap(),
        CellState::Failed {
            error: "injected failure (FAKE_RUNNER_FAIL)".into(),
            kind: Some(ErrorKind::Data),
        }
    );
    let attempt = sft_sweep::Attempt::read(&layout.attempt_path(&victim))
        .unwrap()
        .unwrap();
    assert_eq!((attempt.exit_code, attempt.done), (Some(3), false));
    assert_eq!(attempt.error_kind, Some(ErrorKind::Data));
    // The state table shows the failed cell's kind beside its error.
    let table = collect(&cells, &layout).unwrap();
    let failed: Vec<_> = table.cells.iter().filter(|c| c.state == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].cell.id.as_str(), failed[0].error_kind),
        (victim.as_str(), Some(ErrorKind::Data))
    );
    write_tables(&table, &layout.results_dir()).unwrap();
    let cells_md = std::fs::read_to_string(layout.results_dir().join("cells.md")).unwrap();
    assert!(
        cells_md.contains("| state | error kind | error |"),
        "{cells_md}"
    );
    let row = cells_md
        .lines()
        .find(|l| l.contains(&format!("`{victim}`")))
        .unwrap();
    assert!(
        row.contains("| failed | data | injected failure (FAKE_RUNNER_FAIL) |"),
        "{row}"
    );
    assert!(
        cells_md
            .lines()
            .filter(|l| l.contains("| done |"))
            .all(|l| l.contains("| done |  |  |")),
        "done cells have no kind: {cells_md}"
    );

    // Second run: only the failed cell runs.
    let s = run_cells(
        &cells,
        &layout,
        &opts(fake_runner(), 2, &[("FAKE_RUNNER_LOG", &log_s)]),
    )
    .unwrap();
    assert_eq!(s.skipped, 3);
    assert_eq!(s.executed, vec![victim.clone()]);
    assert_eq!(s.succeeded, vec![victim.clone()]);

    // Third run: nothing to do.
    let s = run_cells(
        &cells,
        &layout,
        &opts(fake_runner(), 2, &[("FAKE_RUNNER_LOG", &log_s)]),
    )
    .unwrap();
    assert_eq!((s.skipped, s.executed.len()), (4, 0));
    assert_eq!(
        log_lines(&log, "start").len(),
        5,
        "4 first attempts + 1 retry"
    );
}

#[test]
fn a_cell_killed_midway_completes_on_rerun() {
    let (_, cells) = load("tiny.toml");
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let log = tmp.path().join("runner.log");
    let log_s = log.display().to_string();
    let victim = cells
        .iter()
        .find(|c| c.plan.stages.len() == 2)
        .unwrap()
        .id
        .clone();
    let pid_file = layout.run_dir(&victim).join("runner.pid");

    let handle = {
        let (cells, layout, victim, log_s) =
            (cells.clone(), layout.clone(), victim.clone(), log_s.clone());
        std::thread::spawn(move || {
            run_cells(
                &cells,
                &layout,
                &opts(
                    fake_runner(),
                    2,
                    &[("FAKE_RUNNER_LOG", &log_s), ("FAKE_RUNNER_HANG", &victim)],
                ),
            )
        })
    };
    // The victim finishes stage 0, records its pid and hangs: kill it like an OOM killer would.
    let t0 = Instant::now();
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| !p.trim().is_empty())
        {
            break pid.trim().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the hanging runner never wrote {}",
            pid_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let s = handle.join().unwrap().unwrap();
    assert_eq!(s.succeeded.len(), 3);
    assert_eq!(s.failed.len(), 1);
    assert!(
        s.failed[0].1.contains("killed by a signal") && s.failed[0].1.contains("status running"),
        "{}",
        s.failed[0].1
    );
    assert_eq!(
        read_state(&layout.run_dir(&victim)).unwrap(),
        CellState::Running,
        "a killed runner leaves `running`"
    );

    // The rerun runs only the killed cell; its runner resumes after stage 0 and finishes.
    let s = run_cells(
        &cells,
        &layout,
        &opts(fake_runner(), 2, &[("FAKE_RUNNER_LOG", &log_s)]),
    )
    .unwrap();
    assert_eq!(s.executed, vec![victim.clone()]);
    assert_eq!(s.succeeded, vec![victim.clone()]);
    let starts = log_lines(&log, "start");
    let last = starts.last().unwrap();
    assert_eq!(
        (last[1].as_str(), last[2].as_str()),
        (victim.as_str(), "resumed")
    );
    assert!(matches!(
        read_state(&layout.run_dir(&victim)).unwrap(),
        CellState::Done(_)
    ));
    let s = run_cells(&cells, &layout, &opts(fake_runner(), 2, &[])).unwrap();
    assert!(s.executed.is_empty());
}

#[test]
fn shared_first_stages_run_once_before_their_siblings_and_devices_are_exclusive() {
    let (_, cells) = load("k_scan.toml");
    let cells: Vec<_> = cells
        .into_iter()
        .filter(|c| c.model == "llama-7b")
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let log = tmp.path().join("runner.log");
    let log_s = log.display().to_string();
    let mut o = opts(
        fake_runner(),
        3,
        &[
            ("FAKE_RUNNER_LOG", &log_s),
            ("FAKE_RUNNER_STAGE_SECONDS", "0.05"),
        ],
    );
    o.devices = vec!["cuda:0".into(), "cuda:1".into(), "cuda:2".into()];
    let s = run_cells(&cells, &layout, &o).unwrap();
    assert_eq!(s.succeeded.len(), 9);
    // The first cell ends before any other starts: they all share its untrained stage 1.
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<&str> = text.lines().collect();
    assert!(
        events[0].starts_with("start ") && events[1].starts_with("end "),
        "{text}"
    );
    // Never two running cells on one device.
    let mut busy: BTreeMap<String, String> = BTreeMap::new();
    let mut device_of: BTreeMap<String, String> = BTreeMap::new();
    for l in &events {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w[0] == "start" {
            assert!(o.devices.contains(&w[3].to_string()), "{l}");
            assert!(
                !busy.contains_key(w[3]),
                "device {} given to two cells: {text}",
                w[3]
            );
            busy.insert(w[3].to_string(), w[1].to_string());
            device_of.insert(w[1].to_string(), w[3].to_string());
        } else {
            busy.remove(&device_of[w[1]]);
        }
    }
    let o = RunOptions { jobs: 4, ..o };
    assert!(run_cells(&cells, &layout, &o)
        .unwrap_err()
        .to_string()
        .contains("one device per running cell"));
}

#[test]
fn tables_table1_and_plots_from_fake_runner_results() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep-plots");
    std::fs::create_dir_all(&keep).unwrap();
    for (file, jobs) in [
        ("rq3.toml", 2),
        ("rq4.toml", 2),
        ("k_scan.toml", 2),
        ("rq2.toml", 2),
    ] {
        let (spec, cells) = load(file);
        let layout = Layout::new(tmp.path().join(&spec.name));
        let s = run_cells(&cells, &layout, &opts(fake_runner(), jobs, &[])).unwrap();
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        let table = collect(&cells, &layout).unwrap();
        // A row per cell and metric: the fake runner reports three metrics.
        assert_eq!(table.rows.len(), cells.len() * 3, "{file}");
        assert!(table
            .rows
            .iter()
            .all(|r| r.ci_low <= r.value && r.value <= r.ci_high));
        let files = write_tables(&table, &layout.results_dir()).unwrap();
        let csv = std::fs::read_to_string(layout.results_dir().join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), table.rows.len() + 1);
        assert!(csv.starts_with("sweep,cell,index,grids,strategy,strategy_label,model,seed,k,proportions,metric,value,ci_low,ci_high,n\n"));
        let md = std::fs::read_to_string(layout.results_dir().join("results.md")).unwrap();
        assert_eq!(md.lines().count(), table.rows.len() + 2);
        // The Parquet file reads back with the same rows.
        let pq = std::fs::File::open(&files[0]).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq)
            .unwrap()
            .build()
            .unwrap();
        let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(n, table.rows.len());

        let plots = plot_all(&spec, &table, &layout.plots_dir()).unwrap();
        for png in &plots.png {
            let bytes = std::fs::read(png).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            assert!(
                bytes.len() > 20_000,
                "{} is suspiciously small",
                png.display()
            );
            std::fs::copy(png, keep.join(png.file_name().unwrap())).unwrap();
        }
        for svg in &plots.svg {
            let text = std::fs::read_to_string(svg).unwrap();
            assert!(
                text.contains("<svg") && text.contains("GSM8K") && text.contains("HumanEval"),
                "{}",
                svg.display()
            );
        }
        match file {
            "rq3.toml" => {
                assert_eq!(plots.png.len(), 1);
                let svg = std::fs::read_to_string(&plots.svg[0]).unwrap();
                for label in [
                    "full general + specialized at r",
                    "full specialized + general at r",
                    "1/64 general + specialized at r",
                    "1/256",
                ] {
                    assert!(svg.contains(label), "rq3 plot lacks {label:?}");
                }
            }
            "k_scan.toml" => {
                assert!(
                    plots.png[0].ends_with("k-scan-k-scan.png"),
                    "{:?}",
                    plots.png
                );
            }
            "rq4.toml" => {
                assert!(
                    plots.png.is_empty(),
                    "RQ4 has no axis to draw along; its figure is Table 1"
                );
                let t1 = table1(&table).unwrap();
                std::fs::write(keep.join("rq4-table1.md"), &t1).unwrap();
                let rows: Vec<&str> = t1
                    .lines()
                    .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
                    .collect();
                let labels: Vec<&str> = rows
                    .iter()
                    .map(|l| l.split('|').nth(1).unwrap().trim())
                    .collect();
                assert_eq!(
                    labels,
                    [
                        "General only",
                        "Math only",
                        "Code only",
                        "Multi-task",
                        "Sequential",
                        "Mixed sequential",
                        "DMT (k=1/256)"
                    ]
                );
                assert!(
                    t1.contains("llama-33b GSM8K (flexible-extract) (%)"),
                    "{t1}"
                );
                // The fake runner's Math-only GSM8K beats General-only's, and the table shows it.
                let gsm = |row: &str| -> f64 {
                    row.split('|')
                        .nth(2)
                        .unwrap()
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                assert!(gsm(rows[1]) > gsm(rows[0]) + 20.0, "{t1}");
            }
            _ => {}
        }
    }
}

#[test]
fn slurm_array_task_i_runs_cell_i() {
    let (spec, cells) = load("tiny.toml");
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let log = tmp.path().join("runner.log");
    prepare(&cells, &layout).unwrap();
    let script = slurm_script(
        &cells,
        &layout,
        &SlurmOptions {
            runner: fake_runner(),
            data_dir: spec.data_dir(&spec_path("tiny.toml")),
            device: Some("cuda".into()),
            env: vec![("FAKE_RUNNER_LOG".into(), log.display().to_string())],
            spec: Default::default(),
            job_name: "sweep-tiny".into(),
        },
    )
    .unwrap();
    let path = tmp.path().join("sweep.sbatch");
    std::fs::write(&path, &script).unwrap();

    // Structure: a bash script whose #SBATCH block precedes the first command.
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[0], "#!/bin/bash");
    let directives: Vec<&str> = lines
        .iter()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#SBATCH "))
        .collect();
    assert!(directives.contains(&"--array=0-3"), "{directives:?}");
    assert!(directives.contains(&"--gres=gpu:1"));
    assert!(directives
        .iter()
        .any(|d| d.starts_with("--output=") && d.ends_with("/%A_%a.out")));
    assert!(
        Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap()
            .success(),
        "bash -n rejects the script"
    );
    // The manifest the script indexes lists the cells in array order.
    let manifest = std::fs::read_to_string(layout.manifest_tsv()).unwrap();
    for (i, cell) in cells.iter().enumerate() {
        let line = manifest.lines().nth(i + 1).unwrap();
        assert!(line.starts_with(&format!("{i}\t{}\t", cell.id)), "{line}");
    }

    // Run the array as Slurm would, in a shuffled order: task i must run cell i.
    for i in [2usize, 0, 3, 1] {
        let out = Command::new("bash")
            .arg(&path)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "task {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = log_lines(&log, "start").pop().unwrap();
        assert_eq!(last[1], cells[i].id, "task {i}");
        assert_eq!(last[3], "cuda");
        assert!(matches!(
            read_state(&layout.run_dir(&cells[i].id)).unwrap(),
            CellState::Done(_)
        ));
    }
    // A resubmitted task whose cell is done exits at once; a local run then finds nothing to do.
    let out = Command::new("bash")
        .arg(&path)
        .env("SLURM_ARRAY_TASK_ID", "1")
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("is done"));
    assert_eq!(log_lines(&log, "start").len(), 4);
    let s = run_cells(&cells, &layout, &opts(fake_runner(), 1, &[])).unwrap();
    assert_eq!((s.skipped, s.executed.len()), (4, 0));
    let out = Command::new("bash").arg(&path).output().unwrap();
    assert!(
        !out.status.success(),
        "outside Slurm the script refuses to guess a task"
    );
}

/// `sweeps/rq4.toml` asks for 8 GPUs per cell: its script allocates 8 tasks and 8 GPUs per
/// node and starts the runner with srun (one task per GPU, the rendezvous exported), keeping the
/// manifest lookup and the done-cell skip of the one-GPU script. Run with stand-ins for
/// `scontrol` and `srun` on PATH, task i hands cell i's runner command to srun with
/// `MASTER_ADDR` the allocation's first host and `MASTER_PORT` from the task id.
#[test]
fn slurm_cells_with_eight_gpus_run_the_runner_through_srun() {
    let (spec, cells) = load("rq4.toml");
    let slurm = spec.slurm.clone().expect("rq4.toml has [slurm]");
    assert_eq!(
        (slurm.gpus_per_node(), slurm.nodes(), slurm.ranks()),
        (8, 1, 8)
    );
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join("out"));
    let log = tmp.path().join("runner.log");
    prepare(&cells, &layout).unwrap();
    let script = slurm_script(
        &cells,
        &layout,
        &SlurmOptions {
            runner: fake_runner(),
            data_dir: None,
            device: Some("cuda".into()),
            env: vec![("FAKE_RUNNER_LOG".into(), log.display().to_string())],
            spec: slurm,
            job_name: "sweep-rq4".into(),
        },
    )
    .unwrap();
    let path = tmp.path().join("sweep.sbatch");
    std::fs::write(&path, &script).unwrap();
    assert!(
        Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap()
            .success(),
        "bash -n rejects the script:\n{script}"
    );
    let lines: Vec<&str> = script.lines().collect();
    let directives: Vec<&str> = lines
        .iter()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#SBATCH "))
        .collect();
    let array = format!("--array=0-{}", cells.len() - 1);
    for d in [
        array.as_str(),
        "--nodes=1",
        "--ntasks-per-node=8",
        "--gres=gpu:8",
        "--time=48:00:00",
    ] {
        assert!(directives.contains(&d), "{d} missing: {directives:?}");
    }
    assert!(!directives.contains(&"--ntasks=1"), "{directives:?}");
    assert!(script.contains("SLURM_ARRAY_TASK_ID"), "{script}");
    assert!(
        script.contains("sed -n \"$((TASK + 2))p\" \"$MANIFEST\""),
        "{script}"
    );
    assert!(script.contains("scontrol show hostnames"), "{script}");
    assert!(script.contains("export MASTER_ADDR"), "{script}");
    assert!(
        script.contains("export MASTER_PORT=$((20000 + TASK % 20000))"),
        "{script}"
    );
    let launch = lines.iter().find(|l| l.starts_with("exec ")).unwrap();
    assert!(launch.starts_with("exec srun "), "{launch}");
    assert!(launch.contains("--ntasks-per-node=8"), "{launch}");

    // Stand-ins: scontrol lists two hosts, srun logs what it got and runs the command once.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let srun_log = tmp.path().join("srun.log");
    let tools = [
        ("scontrol", "#!/bin/bash\n[ \"$1 $2\" = \"show hostnames\" ] || exit 9\necho gpu-node-17\necho gpu-node-18\n".to_string()),
        (
            "srun",
            format!(
                "#!/bin/bash\necho \"MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT srun $*\" >> {}\n\
                 while [ \"${{1#--}}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n",
                srun_log.display()
            ),
        ),
    ];
    for (name, body) in tools {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let task = |i: usize| {
        Command::new("bash")
            .arg(&path)
            .env("PATH", &path_var)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("SLURM_JOB_NODELIST", "gpu-node-[17-18]")
            .env("SLURM_NTASKS", "8")
            .env("SLURM_CPUS_PER_TASK", "8")
            .output()
            .unwrap()
    };
    let out = task(3);
    assert!(
        out.status.success(),
        "task 3 ({}): stdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let srun = std::fs::read_to_string(&srun_log).unwrap();
    let first = srun.lines().next().unwrap();
    assert!(
        first.starts_with("MASTER_ADDR=gpu-node-17 MASTER_PORT=20003 srun --kill-on-bad-exit=1"),
        "{first}"
    );
    assert!(first.contains("--cpus-per-task=8"), "{first}");
    assert!(
        first.contains(&format!(
            "--run-dir {}",
            layout.run_dir(&cells[3].id).display()
        )),
        "{first}"
    );
    let last = log_lines(&log, "start").pop().unwrap();
    assert_eq!(last[1], cells[3].id);
    assert!(matches!(
        read_state(&layout.run_dir(&cells[3].id)).unwrap(),
        CellState::Done(_)
    ));
    // A resubmitted task whose cell is done exits before srun.
    let out = task(3);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("is done"));
    assert_eq!(
        std::fs::read_to_string(&srun_log).unwrap().lines().count(),
        1
    );
}

/// The CPU mini-study spec: 24 cells over 3 seeds that all draw their held-out records and
/// benchmark subsets with the spec's first seed; its tables aggregate seeds with a t interval and
/// its plots include the per-source held-out loss by strategy (bars) and against k.
#[test]
fn mini_rq4_scores_every_cell_on_one_split_and_aggregates_seeds() {
    let (spec, cells) = load("mini_rq4.toml");
    assert_eq!(cells.len(), 24);
    for c in &cells {
        let plan: toml::Table = toml::from_str(&c.plan_toml().unwrap()).unwrap();
        assert_eq!(plan["run"]["split_seed"].as_integer(), Some(1), "{}", c.id);
        assert_eq!(
            plan["run"]["seed"].as_integer(),
            Some(c.seed as i64),
            "{}",
            c.id
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path().join(&spec.name));
    let s = run_cells(
        &cells,
        &layout,
        &opts(
            fake_runner(),
            2,
            &[("FAKE_RUNNER_HELDOUT", "1"), ("FAKE_RUNNER_HIDDEN", "1")],
        ),
    )
    .unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    let table = collect(&cells, &layout).unwrap();
    // 6 benchmark and held-out metrics, 18 of the representation analysis (3 models × 2 scopes
    // × 3 scores): every one in the long table.
    assert_eq!(table.rows.len(), cells.len() * (6 + 18));
    let t1 = table1(&table).unwrap();
    assert!(
        t1.contains("Math held-out loss ↓") && t1.contains("(s=3)"),
        "{t1}"
    );
    assert!(t1.contains("Student-t"), "{t1}");
    assert!(
        !t1.contains(
            "| smollm2-135m General held-out loss ↓ | smollm2-135m General held-out loss ↓"
        ),
        "the older general_heldout_loss name is not shown twice: {t1}"
    );
    // Of the representation analysis, Table 1 shows the final model's overall scores and the
    // silhouette change, not the per-pair or base-model ones.
    assert!(
        t1.contains("Source silhouette")
            && t1.contains("Source probe accuracy (%)")
            && t1.contains("Silhouette change from base"),
        "{t1}"
    );
    assert!(
        !t1.contains("math-code") && !t1.contains("hidden.base"),
        "{t1}"
    );
    // The multi-task row's math loss: the mean over its three seeds with a t interval.
    let mt: Vec<f64> = table
        .rows
        .iter()
        .filter(|r| r.strategy == "multi-task" && r.metric == "heldout_loss.math")
        .map(|r| r.value)
        .collect();
    assert_eq!(mt.len(), 3);
    let e = sft_run::Metric::mean_t(&mt);
    let row = t1.lines().find(|l| l.starts_with("| Multi-task")).unwrap();
    let want = format!("{:.2} [{:.2}, {:.2}] (s=3)", e.value, e.ci_low, e.ci_high);
    assert!(row.contains(&want), "{want} not in {row}");
    // The paired comparisons: a table per seed, every full-data strategy against the base model
    // and multi-task on the same held-out records.
    let paired = sft_sweep::paired_tables(&table, &layout).unwrap().unwrap();
    for seed in [1, 2, 3] {
        assert!(
            paired.contains(&format!("### smollm2-135m, seed {seed}")),
            "{paired}"
        );
    }
    assert!(
        paired.contains("Δ vs Multi-task") && paired.contains("Δ vs base model"),
        "{paired}"
    );
    let seq_math = paired
        .lines()
        .find(|l| l.contains("Sequential") && l.contains("held-out loss: math"))
        .unwrap_or_else(|| panic!("{paired}"));
    assert!(
        seq_math.matches('[').count() == 3,
        "value, Δ base, Δ multi-task: {seq_math}"
    );
    let plots = plot_all(&spec, &table, &layout.plots_dir()).unwrap();
    let names: Vec<String> = plots
        .png
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(
        names.contains(&"mini-rq4-heldout-by-strategy.png".to_string())
            && names.contains(&"mini-rq4-separation-by-strategy.png".to_string())
            && names.contains(&"mini-rq4-k-scan.png".to_string()),
        "{names:?}"
    );
    let separation = std::fs::read_to_string(
        plots
            .svg
            .iter()
            .find(|p| p.to_string_lossy().contains("separation-by-strategy"))
            .unwrap(),
    )
    .unwrap();
    for label in [
        "Source silhouette (base 0.30)",
        "Source 10-NN purity (base 80.00)",
        "Multi-task",
    ] {
        assert!(
            separation.contains(label),
            "{label} missing from the separation plot"
        );
    }
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep-plots");
    std::fs::create_dir_all(&keep).unwrap();
    for p in &plots.png {
        std::fs::copy(p, keep.join(p.file_name().unwrap())).unwrap();
    }
    let bars = std::fs::read_to_string(
        plots
            .svg
            .iter()
            .find(|p| p.to_string_lossy().contains("heldout-by-strategy"))
            .unwrap(),
    )
    .unwrap();
    for label in [
        "Multi-task",
        "Sequential",
        "Mixed sequential",
        "Math held-out loss",
    ] {
        assert!(bars.contains(label), "{label} missing from the bar plot");
    }
}

/// The `sft-sweep` command line: `--dry-run` lists the cells; a run with `--runner` and
/// `--runner-env` (the fake runner, told to report held-out losses through the environment)
/// finishes every cell and writes the tables and plots; a rerun runs nothing; `--slurm` exports
/// the runner's environment; without a runner it fails saying what to pass.
#[test]
fn the_command_line_runs_collects_and_writes_slurm_scripts() {
    let bin = env!("CARGO_BIN_EXE_sft-sweep");
    let spec = spec_path("tiny.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .arg(&spec)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.status.success());
    let listed = String::from_utf8_lossy(&dry.stdout);
    // A header, then a line per cell (with its memory estimate: tests/dry_run.rs).
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(listed.starts_with("index"), "{listed}");

    let none = run(&[]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("no runner") && err.contains("--runner"),
        "{err}"
    );

    let runner = fake_runner().join(" ");
    let first = run(&["--runner", &runner, "--runner-env", "FAKE_RUNNER_HELDOUT=1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (_, cells) = load("tiny.toml");
    let layout = Layout::new(&out);
    let table = collect(&cells, &layout).unwrap();
    assert!(table.cells.iter().all(|c| c.state == "done"));
    assert!(
        table.rows.iter().any(|r| r.metric == "heldout_loss.math"),
        "--runner-env reached the runner"
    );
    for f in [
        "results/table1.md",
        "results/cells.md",
        "results/results.parquet",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(std::fs::read_dir(out.join("plots")).unwrap().count() > 0);
    let again = run(&["--runner", &runner]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("4 skipped (done), 0 run"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let slurm = run(&[
        "--slurm",
        "--runner",
        "/opt/run_plan",
        "--runner-env",
        "LIBTORCH=/opt/torch",
    ]);
    assert!(slurm.status.success());
    let script = std::fs::read_to_string(out.join("slurm/sweep.sbatch")).unwrap();
    assert!(
        script.contains("LIBTORCH=/opt/torch") && script.contains("/opt/run_plan"),
        "{script}"
    );
    let bad = run(&["--runner", &runner, "--runner-env", "NOEQUALS"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NAME=VALUE"));
}
