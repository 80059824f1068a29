//! Data-parallel plans through the `run_plan` CLI: `--nproc-per-node 2` runs two Gloo ranks as
//! separate processes over loopback, rank 0 running the plan and handing each stage it trains to
//! rank 1. A two-stage plan trained by 2 ranks must give, stage by stage, the weights the same
//! plan gives in one process with `grad_accum` doubled (the same global batch, ≤ 1e-5
//! relative; the one-process run is started as the one-GPU Slurm script starts it, in a batch
//! step of one task); rerunning the finished 2-rank run trains nothing and exits 0 (the follower
//! gets `end` and does not wait); ZeRO-1 with a carried optimizer state matches one process too;
//! the follower waits through an evaluation longer than `--dist-timeout-s` but not for a rank 0
//! stopped longer than it; and killing the follower mid-stage fails the launch within 90 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{children, max_rel_diff, HINT};

fn root() -> PathBuf {
    sft_testkit::workspace_root()
}

/// A two-stage plan on the demo data (24 code + math records, then 22 general + code + math),
/// micro-batches of 2, `grad_accum` and `epochs` as given; GSM8K on 2 questions so rank 0
/// evaluates too.
fn write_plan(path: &Path, grad_accum: usize, epochs: usize) {
    write_plan_with(path, grad_accum, epochs, "", "");
}

/// [`write_plan`] with more `[train]` lines and more lines for the second stage.
fn write_plan_with(path: &Path, grad_accum: usize, epochs: usize, train: &str, stage2: &str) {
    let text = format!(
        r#"format_version = 1
name = "ddp-tiny"

[train]
template = "model"
epochs = {epochs}
lr = 1e-3
micro_batch_size = 2
grad_accum = {grad_accum}
max_len = 128
warmup_ratio = 0.0
schedule = "constant"
{train}

[[stages]]
name = "specialized"
mixture = {{ code = 1, math = 1 }}

[[stages]]
name = "general+k"
mixture = {{ general = 1, code = "1/4", math = "1/4" }}
train = {{ lr = 5e-4 }}
{stage2}

[run]
seed = 7

[run.data]
general_heldout = 2

[run.data.sources.code]
path = "code.json"
format = "alpaca"

[run.data.sources.math]
path = "math.jsonl"
format = "gsm8k"

[run.data.sources.general]
path = "general.json"
format = "sharegpt"

[run.eval]
gsm8k_path = "gsm8k_test.jsonl"
gsm8k = 2
gsm8k_max_new_tokens = 4
humaneval = 0
batch_size = 2
"#
    );
    std::fs::write(path, text).unwrap();
}

fn cmd(plan: &Path, run_dir: &Path, store: &Path, extra: &[&str]) -> Command {
    let bin = sft_testkit::example_binary("sft-examples", "run_plan", HINT);
    let mut c = Command::new(bin);
    c.arg("--plan")
        .arg(plan)
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--stage-store")
        .arg(store)
        .arg("--data-dir")
        .arg(root().join("fixtures/demo"))
        .arg("--model")
        .arg(root().join("fixtures/run/tiny-bytes"))
        .args(["--device", "cpu", "--quiet"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_ok(mut c: Command, what: &str) -> f64 {
    let t0 = Instant::now();
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let s = t0.elapsed().as_secs_f64();
    eprintln!("{what}: {s:.1} s");
    s
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Each stage's store directory, from `results.json`.
fn stage_dirs(run_dir: &Path) -> Vec<PathBuf> {
    read_json(&run_dir.join("results.json"))["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| PathBuf::from(s["store_dir"].as_str().unwrap()))
        .collect()
}

fn steps(stage_dir: &Path) -> u64 {
    read_json(&stage_dir.join("done.json"))["steps"]
        .as_u64()
        .unwrap()
}

#[test]
fn two_ranks_train_every_stage_as_one_process_with_doubled_grad_accum_and_rerun_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dp_plan, one_plan) = (tmp.path().join("dp.toml"), tmp.path().join("one.toml"));
    write_plan(&dp_plan, 1, 1);
    write_plan(&one_plan, 2, 1);
    let (dp_run, dp_store) = (tmp.path().join("dp/run"), tmp.path().join("dp/stages"));
    let (one_run, one_store) = (tmp.path().join("one/run"), tmp.path().join("one/stages"));

    run_ok(
        cmd(&dp_plan, &dp_run, &dp_store, &["--nproc-per-node", "2"]),
        "2 ranks, grad_accum 1",
    );
    // As the one-GPU Slurm script runs it: in a batch step of one task (SLURM_PROCID set, no
    // MASTER_ADDR), which is a plain run.
    let mut one = cmd(&one_plan, &one_run, &one_store, &[]);
    one.env("SLURM_PROCID", "0")
        .env("SLURM_NTASKS", "1")
        .env("SLURM_LOCALID", "0")
        .env_remove("MASTER_ADDR")
        .env_remove("MASTER_PORT");
    run_ok(one, "1 process, grad_accum 2");
    for run in [&dp_run, &one_run] {
        assert_eq!(read_json(&run.join("status.json"))["state"], "done");
    }
    let (dp, one) = (stage_dirs(&dp_run), stage_dirs(&one_run));
    assert_eq!(dp.len(), 2);
    for (i, (a, b)) in dp.iter().zip(&one).enumerate() {
        assert_eq!(steps(a), steps(b), "stage {i}: steps");
        assert!(steps(a) >= 3, "stage {i}: only {} steps", steps(a));
        let d = max_rel_diff(&a.join("model"), &b.join("model"));
        eprintln!("stage {i}: {} steps, weights differ by {d:e}", steps(a));
        assert!(d <= 1e-5, "stage {i}: weights differ by {d:e}");
        // The stage key says 2 ranks trained it (a 1-process stage is never reused for it).
        assert_eq!(read_json(&a.join("stage.json"))["world_size"], 2);
        // Only rank 0 wrote the trainer's files, once.
        let metrics = std::fs::read_to_string(a.join("train/metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count() as u64, steps(a), "stage {i}");
    }
    // Rank 0 evaluated; the rest of the run directory is the one-process contract.
    let results = read_json(&dp_run.join("results.json"));
    assert_eq!(results["metrics"]["gsm8k_acc"]["n"], 2, "{results}");
    assert_eq!(results["provenance"]["world_size"], "2");

    // A rerun of the finished 2-rank run trains nothing, and the follower exits at `end`.
    let s = run_ok(
        cmd(&dp_plan, &dp_run, &dp_store, &["--nproc-per-node", "2"]),
        "rerun of the 2-rank run",
    );
    let again = read_json(&dp_run.join("results.json"));
    assert!(
        again["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reused"] == true),
        "{again}"
    );
    assert_eq!(again["metrics"], results["metrics"]);
    assert!(s < 30.0, "the rerun took {s:.1} s");
}

/// What the paper-scale specs use: ZeRO-1 (`zero = 1`, optimizer shards written by every rank
/// into the stage's checkpoint) and a second stage carrying the first one's optimizer state.
#[test]
fn zero_1_and_a_carried_optimizer_state_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (dp_plan, one_plan) = (tmp.path().join("dp.toml"), tmp.path().join("one.toml"));
    let carry = "optimizer_state = \"carry\"";
    write_plan_with(&dp_plan, 1, 1, "zero = 1", carry);
    write_plan_with(&one_plan, 2, 1, "zero = 1", carry);
    let (dp_run, dp_store) = (tmp.path().join("dp/run"), tmp.path().join("dp/stages"));
    let (one_run, one_store) = (tmp.path().join("one/run"), tmp.path().join("one/stages"));
    run_ok(
        cmd(&dp_plan, &dp_run, &dp_store, &["--nproc-per-node", "2"]),
        "2 ranks, ZeRO-1, carried optimizer state",
    );
    run_ok(
        cmd(&one_plan, &one_run, &one_store, &[]),
        "1 process, carried optimizer state",
    );
    let (dp, one) = (stage_dirs(&dp_run), stage_dirs(&one_run));
    // The first stage kept its optimizer state for the second.
    assert!(dp[0].join("train/checkpoints").is_dir());
    for (i, (a, b)) in dp.iter().zip(&one).enumerate() {
        assert_eq!(steps(a), steps(b), "stage {i}: steps");
        let d = max_rel_diff(&a.join("model"), &b.join("model"));
        eprintln!("stage {i}: {} steps, weights differ by {d:e}", steps(a));
        assert!(d <= 1e-5, "stage {i}: weights differ by {d:e}");
    }
}

/// Between stages the follower waits on rank 0, bounded by `--dist-timeout-s` only while rank 0
/// is silent: an evaluation longer than the timeout is fine (rank 0's heartbeats), a rank 0
/// stopped with SIGSTOP for longer than it fails the follower with a timeout.
#[test]
fn the_follower_waits_through_a_long_evaluation_but_not_for_a_silent_rank_0() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("long-eval.toml");
    write_plan(&plan, 1, 1);
    // 4 prompts × up to 6000 generated tokens in 2 slots: an evaluation of several seconds, well
    // over the timeout (2 × 4000 tokens took 2.9 s once decoding got faster, under the 3 s).
    let text = std::fs::read_to_string(&plan).unwrap();
    let text = text
        .replace(
            "gsm8k_max_new_tokens = 4\n",
            "gsm8k_max_new_tokens = 6000\n",
        )
        .replace("gsm8k = 2\n", "gsm8k = 4\n");
    std::fs::write(&plan, text).unwrap();
    const TIMEOUT_S: u64 = 3;
    let timeout = TIMEOUT_S.to_string();
    let args = ["--nproc-per-node", "2", "--dist-timeout-s", &timeout];

    let (run, store) = (tmp.path().join("a/run"), tmp.path().join("a/stages"));
    let mut c = cmd(&plan, &run, &store, &args);
    c.env("RUST_LOG", "warn,sft_run::runner=info");
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // How long rank 0 evaluated, from its log line `evaluated task=gsm8k seconds=…`.
    let eval_s: f64 = strip_ansi(&stderr)
        .lines()
        .find(|l| l.contains("evaluated") && l.contains("gsm8k"))
        .and_then(|l| l.split("seconds").nth(1))
        .map(|rest| {
            rest.trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .unwrap_or_else(|| panic!("no gsm8k evaluation logged:\n{stderr}"));
    eprintln!("rank 0 evaluated for {eval_s:.1} s with a {TIMEOUT_S} s timeout");
    assert!(
        eval_s > TIMEOUT_S as f64,
        "the evaluation took only {eval_s} s"
    );

    // Rank 0 stopped once both stages are trained: the follower gives up after the timeout.
    let (run, store) = (tmp.path().join("b/run"), tmp.path().join("b/stages"));
    let mut launcher = cmd(&plan, &run, &store, &args).spawn().unwrap();
    let t0 = Instant::now();
    let done_stages = || {
        std::fs::read_dir(&store)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("done.json").exists())
                    .count()
            })
            .unwrap_or(0)
    };
    while done_stages() < 2 {
        assert!(launcher.try_wait().unwrap().is_none(), "launch ended early");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "stages not trained within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "ranks {ranks:?}");
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &ranks[0].to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(TIMEOUT_S + 4));
    signal("-CONT");
    let o = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the launch must fail:\n{stderr}");
    assert!(
        stderr.contains("waiting for rank 0 (control group): Timeout"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rank 1 of 2 exited with status 1"),
        "{stderr}"
    );
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Steps logged so far by any stage in `store`.
fn steps_logged(store: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(store) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("train/metrics.jsonl")).ok())
        .map(|m| m.lines().count())
        .sum()
}

#[test]
fn killing_the_follower_mid_stage_fails_the_launch_within_90_s() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("long.toml");
    // Many epochs: the first stage is still training when the follower is killed.
    write_plan(&plan, 1, 200);
    let (run, store) = (tmp.path().join("run"), tmp.path().join("stages"));
    let launcher = cmd(&plan, &run, &store, &["--nproc-per-node", "2"])
        .spawn()
        .unwrap();
    let (_, took, _) = common::kill_rank_1(launcher, || steps_logged(&store) >= 2);
    // Rank 0 saw its peer go and recorded the failed run.
    let status = read_json(&run.join("status.json"));
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("PeerLost"),
        "{status}"
    );
    eprintln!(
        "the launch failed {:.1} s after the kill",
        took.as_secs_f64()
    );
}

/// `run_plan --estimate` prints every stage's memory estimate (for the ranks asked for and the
/// stage's settings) and runs nothing.
#[test]
fn run_plan_estimate_prints_each_stage_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.toml");
    write_plan_with(
        &plan,
        1,
        1,
        "activation_checkpointing = true\nzero = 1\n",
        "",
    );
    let (run, store) = (tmp.path().join("run"), tmp.path().join("stages"));
    let est = |ranks: &str| -> Vec<serde_json::Value> {
        let o = cmd(
            &plan,
            &run,
            &store,
            &["--estimate", "--nproc-per-node", ranks],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let table = String::from_utf8_lossy(&o.stderr);
        assert!(
            table.contains("peak") && table.contains(&format!("{ranks} rank(s)")),
            "{table}"
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (one, two) = (est("1"), est("2"));
    assert_eq!(one.len(), 2, "two stages");
    for (a, b) in one.iter().zip(&two) {
        let peak = |v: &serde_json::Value| v["estimate"]["peak"].as_u64().unwrap();
        assert!(peak(a) > 0);
        // ZeRO-1 over 2 ranks shards the optimizer state: less per device.
        assert!(peak(b) < peak(a), "{a} vs {b}");
    }
    assert!(
        !run.exists() && !store.exists(),
        "--estimate must not create run directories"
    );
}
