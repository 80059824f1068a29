//! The `train` CLI under real signals: SIGTERM, and in a second run SIGINT, sent to the process
//! mid-run (after its first step is in `metrics.jsonl`) make it finish the step, commit a
//! complete checkpoint and exit 0 as documented (the printed outcome says `interrupted`); the
//! same command run again resumes and ends with final weights byte-identical to an
//! uninterrupted run's. Tiny byte-level model (`fixtures/run/tiny-bytes`), synthetic chat data.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a failed build of `train` most likely lacks.
const HINT: &str = "; it links libtorch: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` (sets LIBTORCH)";

/// Epochs of the run: long enough (hundreds of steps) that a signal sent after the first step
/// lands mid-run, short enough for a few seconds per run.
const EPOCHS: u32 = 40;
/// 48 records / (4 × 2) per step = 6 steps per epoch.
const RECORDS: usize = 48;

fn write_data(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..RECORDS {
        let (a, b) = (i % 9, i % 7);
        let rec = serde_json::json!({
            "id": format!("toy:{i}"),
            "source": if i % 3 == 0 { "code" } else { "math" },
            "messages": [
                {"role": "user", "content": format!("What is {a} plus {b}?")},
                {"role": "assistant", "content": format!("{a} plus {b} is {}.", a + b)},
            ],
            "tags": [],
        });
        writeln!(f, "{rec}").unwrap();
    }
}

fn train_cmd(bin: &Path, data: &Path, out: &Path) -> Command {
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
            "--epochs",
            &EPOCHS.to_string(),
            "--micro-batch-size",
            "4",
            "--grad-accum",
            "2",
            "--max-len",
            "64",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0.05",
            "--seed",
            "3",
            "--device",
            "cpu",
        ])
        // The same thread count in every run keeps CPU reductions in the same order.
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The outcome JSON `train` prints on stdout.
fn outcome(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "train printed no outcome JSON ({e}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// (step, loss bits, grad-norm bits, lr bits) of every line of `metrics.jsonl`.
fn trajectory(out: &Path) -> Vec<(u64, u64, u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let m: sft_train::StepMetrics = serde_json::from_str(l).unwrap();
            (
                m.step,
                m.loss.to_bits(),
                m.grad_norm.to_bits(),
                m.lr.to_bits(),
            )
        })
        .collect()
}

fn run_to_end(bin: &Path, data: &Path, out: &Path) -> serde_json::Value {
    let o = train_cmd(bin, data, out).output().unwrap();
    assert!(
        o.status.success(),
        "train failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    outcome(&o.stdout)
}

/// Starts a run, waits until its first step is logged, sends `signal`, and checks the clean
/// stop: exit 0, `interrupted`, a complete checkpoint at the printed step, no `final/`.
fn interrupt(bin: &Path, data: &Path, out: &Path, signal: &str) -> u64 {
    let mut child = train_cmd(bin, data, out).spawn().unwrap();
    let metrics = out.join("metrics.jsonl");
    let t0 = Instant::now();
    loop {
        let started = std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 1);
        if started {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "train exited ({status}) before its first step:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no step logged within 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} failed");
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "SIG{signal}: train must checkpoint and exit 0 ({}):\n{stderr}",
        o.status
    );
    let res = outcome(&o.stdout);
    let steps = res["steps"].as_u64().unwrap();
    let total = res["total_steps"].as_u64().unwrap();
    assert_eq!(res["interrupted"], true, "SIG{signal}: {res}");
    assert!(res["final_dir"].is_null(), "SIG{signal}: {res}");
    assert!(
        steps >= 1 && steps < total,
        "SIG{signal}: stopped at {steps} of {total} steps, not mid-run"
    );
    let (dir, manifest) = sft_train::checkpoint::latest_complete(&out.join("checkpoints"))
        .unwrap()
        .unwrap_or_else(|| panic!("SIG{signal}: no complete checkpoint"));
    assert_eq!(
        manifest.step,
        steps,
        "SIG{signal}: checkpoint {}",
        dir.display()
    );
    sft_train::checkpoint::verify(&dir).unwrap();
    assert!(!out.join("final").exists(), "SIG{signal}: final/ written");
    assert_eq!(
        trajectory(out).len() as u64,
        steps,
        "SIG{signal}: metrics lines"
    );
    steps
}

#[test]
fn sigterm_and_sigint_checkpoint_cleanly_and_a_rerun_is_byte_identical() {
    let bin = sft_testkit::example_binary("sft-examples", "train", HINT);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_data(&data);

    let full = tmp.path().join("full");
    let t0 = Instant::now();
    let done = run_to_end(&bin, &data, &full);
    let total = done["total_steps"].as_u64().unwrap();
    assert_eq!(done["steps"].as_u64(), Some(total));
    assert_eq!(total, u64::from(EPOCHS) * (RECORDS as u64 / 8));
    eprintln!(
        "uninterrupted: {total} steps in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let want = std::fs::read(full.join("final/model.safetensors")).unwrap();

    for signal in ["TERM", "INT"] {
        let out = tmp.path().join(format!("sig{signal}"));
        let stopped = interrupt(&bin, &data, &out, signal);
        eprintln!("SIG{signal}: stopped cleanly at step {stopped} of {total}");
        let res = run_to_end(&bin, &data, &out);
        assert_eq!(res["interrupted"], false, "{res}");
        assert_eq!(res["resumed_from"].as_u64(), Some(stopped), "{res}");
        assert_eq!(res["steps"].as_u64(), Some(total), "{res}");
        assert_eq!(
            trajectory(&out),
            trajectory(&full),
            "SIG{signal}: the resumed run's losses differ"
        );
        assert!(
            std::fs::read(out.join("final/model.safetensors")).unwrap() == want,
            "SIG{signal}: final weights differ from the uninterrupted run's"
        );
    }
}
