//! Data-parallel training through the `train` CLI: `--nproc-per-node N` runs N Gloo ranks as
//! separate processes over loopback. N ranks of `grad_accum a` must train exactly what one
//! process with `grad_accum N·a` trains (the same global batch): the same per-step losses and
//! final weights within 1e-5, with and without packing; a rank killed with SIGKILL ends the
//! launch with an error within 90 s; and a 2-rank run stopped and resumed from its checkpoint
//! ends where an uninterrupted 2-rank run ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use common::{max_rel_diff, HINT};

fn write_data(path: &Path, n: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        let (a, b) = (i % 9, i % 7);
        let rec = serde_json::json!({
            "id": format!("toy:{i}"),
            "source": if i % 3 == 0 { "code" } else { "math" },
            "messages": [
                {"role": "user", "content": format!("What is {a} plus {b}? {}", "x ".repeat(i % 5))},
                {"role": "assistant", "content": format!("{a} plus {b} is {}.", a + b)},
            ],
            "tags": [],
        });
        writeln!(f, "{rec}").unwrap();
    }
}

fn cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let bin = sft_testkit::example_binary("sft-examples", "train", HINT);
    let mut c = Command::new(bin);
    c.arg("--model")
        .arg(sft_testkit::workspace_root().join("fixtures/run/tiny-bytes"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--template",
            "model",
            "--micro-batch-size",
            "2",
            "--max-len",
            "64",
            "--lr",
            "1e-3",
            "--schedule",
            "constant",
            "--warmup-ratio",
            "0",
            "--seed",
            "5",
            "--device",
            "cpu",
        ])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "train failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<sft_train::StepMetrics>(l)
                .unwrap()
                .loss
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{what}: steps");
    assert!(la.len() >= 3, "{what}: only {} steps", la.len());
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs(),
            "{what}: step {} loss {x} vs {y}",
            i + 1
        );
    }
    let d = max_rel_diff(&a.join("final"), &b.join("final"));
    assert!(d <= 1e-5, "{what}: final weights differ by {d:e}");
}

#[test]
fn n_ranks_train_what_one_process_with_the_same_global_batch_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    // 22 records: the epoch's last global step is partial, so some ranks idle in it.
    write_data(&data, 22);
    let out = |n: &str| -> PathBuf { tmp.path().join(n) };
    for (ranks, accum, packing) in [(2, 1, "false"), (2, 2, "true"), (4, 1, "false")] {
        let what = format!("{ranks} ranks, grad_accum {accum}, packing {packing}");
        let dp = out(&format!("dp-{ranks}-{accum}-{packing}"));
        let one = out(&format!("one-{ranks}-{accum}-{packing}"));
        let (n, a, g) = (
            ranks.to_string(),
            accum.to_string(),
            (ranks * accum).to_string(),
        );
        let t0 = Instant::now();
        run_ok(cmd(
            &data,
            &dp,
            &[
                "--nproc-per-node",
                &n,
                "--grad-accum",
                &a,
                "--packing",
                packing,
                "--epochs",
                "1",
            ],
        ));
        eprintln!("{what}: {:.1} s", t0.elapsed().as_secs_f64());
        run_ok(cmd(
            &data,
            &one,
            &["--grad-accum", &g, "--packing", packing, "--epochs", "1"],
        ));
        assert_same_run(&dp, &one, &what);
        // Only rank 0 wrote: one metrics file, one final/ with its tokenizer.
        assert!(dp.join("final/tokenizer.json").exists(), "{what}");
    }
}

/// ZeRO-1 (master weights and moments sharded, reduce-scatter + all-gather) trains the same
/// weights as plain data parallelism, in f32 and in bf16 (f32 masters), with a parameter count
/// that does not divide by the world size; a stopped ZeRO-1 run resumes from its per-rank
/// optimizer shards exactly.
#[test]
fn zero_1_trains_what_plain_data_parallel_trains_and_resumes_from_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_data(&data, 22);
    for (ranks, accum, dtype) in [("2", "2", "f32"), ("4", "1", "bf16")] {
        let what = format!("{ranks} ranks, grad_accum {accum}, {dtype}");
        let base = [
            "--nproc-per-node",
            ranks,
            "--grad-accum",
            accum,
            "--epochs",
            "1",
            "--dtype",
            dtype,
        ];
        let plain = tmp.path().join(format!("plain-{ranks}"));
        let zero = tmp.path().join(format!("zero-{ranks}"));
        run_ok(cmd(&data, &plain, &base));
        let mut z = base.to_vec();
        z.extend(["--zero", "1"]);
        run_ok(cmd(&data, &zero, &z));
        assert_same_run(&zero, &plain, &what);
    }
    // Stop after 2 steps (a checkpoint with one optimizer shard per rank), resume, compare.
    let args = [
        "--nproc-per-node",
        "2",
        "--grad-accum",
        "1",
        "--epochs",
        "1",
        "--zero",
        "1",
    ];
    let full = tmp.path().join("zero-full");
    let parts = tmp.path().join("zero-parts");
    run_ok(cmd(&data, &full, &args));
    let mut first = args.to_vec();
    first.extend(["--stop-after", "2"]);
    run_ok(cmd(&data, &parts, &first));
    let (ckpt, _) = sft_train::checkpoint::latest_complete(&parts.join("checkpoints"))
        .unwrap()
        .unwrap();
    for r in 0..2 {
        let shard = ckpt.join(format!("optimizer-rank-{r:05}-of-00002.safetensors"));
        assert!(shard.exists(), "{}", shard.display());
    }
    assert!(!ckpt.join("optimizer.safetensors").exists());
    run_ok(cmd(&data, &parts, &args));
    assert_eq!(losses(&parts), losses(&full));
    let d = max_rel_diff(&parts.join("final"), &full.join("final"));
    assert!(d == 0.0, "resumed ZeRO-1 weights differ by {d:e}");
}

#[test]
fn a_killed_rank_fails_the_launch_within_90_s() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_data(&data, 64);
    let out = tmp.path().join("dp");
    let mut c = cmd(
        &data,
        &out,
        &[
            "--nproc-per-node",
            "2",
            "--grad-accum",
            "1",
            "--epochs",
            "200",
        ],
    );
    let metrics = out.join("metrics.jsonl");
    let (_, took, stderr) = common::kill_rank_1(c.spawn().unwrap(), || {
        std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2)
    });
    // Rank 0 saw its peer go (Gloo: connection closed) rather than hanging.
    assert!(stderr.contains("PeerLost"), "{stderr}");
    eprintln!(
        "the launch failed {:.1} s after the kill",
        took.as_secs_f64()
    );
}

#[test]
fn a_two_rank_run_resumes_exactly_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_data(&data, 24);
    let full = tmp.path().join("full");
    let parts = tmp.path().join("parts");
    let args = [
        "--nproc-per-node",
        "2",
        "--grad-accum",
        "1",
        "--epochs",
        "2",
    ];
    run_ok(cmd(&data, &full, &args));
    let mut first = args.to_vec();
    first.extend(["--stop-after", "3"]);
    run_ok(cmd(&data, &parts, &first));
    assert!(!parts.join("final").exists());
    assert_eq!(losses(&parts).len(), 3);
    run_ok(cmd(&data, &parts, &args));
    assert_eq!(losses(&parts), losses(&full));
    let d = max_rel_diff(&parts.join("final"), &full.join("final"));
    assert!(d == 0.0, "resumed weights differ by {d:e}");
    // Resuming with another world size is refused, naming it.
    let o = cmd(
        &data,
        &parts,
        &[
            "--nproc-per-node",
            "4",
            "--grad-accum",
            "1",
            "--epochs",
            "2",
            "--resume",
        ],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("world_size"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
