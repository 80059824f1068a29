//! The GPU check's plumbing on the CPU (`--device cpu --quick`), as the bundle runs it: the
//! model exported to config + tokenizer (`--export`), trained with random weights
//! (`--random-weights`), one JSON with the timed step and every GPU-only check recorded as
//! skipped with its reason, never as passed.

use std::process::Command;

const HINT: &str = "; it links libtorch: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` (sets LIBTORCH)";

#[test]
fn the_gpu_check_runs_on_the_cpu_and_marks_gpu_checks_skipped() {
    let bin = sft_testkit::example_binary("sft-examples", "gpu_check", HINT);
    let tmp = tempfile::tempdir().unwrap();
    let model = sft_testkit::workspace_root().join("fixtures/run/tiny-bytes");
    let bundle = tmp.path().join("model");
    let o = Command::new(&bin)
        .arg("--model")
        .arg(&model)
        .arg("--export")
        .arg(&bundle)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(bundle.join("config.json").exists() && bundle.join("tokenizer.json").exists());
    assert!(
        !bundle.join("model.safetensors").exists(),
        "the export carries no weights"
    );
    let out = tmp.path().join("gpu_check.json");
    let o = Command::new(&bin)
        .arg("--model")
        .arg(&bundle)
        .args([
            "--random-weights",
            "--device",
            "cpu",
            "--quick",
            "--seq",
            "512",
        ])
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["cuda_used"], false);
    for key in ["parity", "nccl", "train_1b", "peer"] {
        assert!(r[key]["skipped"].is_string(), "{key}: {}", r[key]);
    }
    let t = &r["train_small"];
    assert_eq!(t["steps_timed"], 2, "{t}");
    assert!(t["step_s_median"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["tokens_per_step"].as_u64().unwrap() > 100, "{t}");
    assert!(t["last_loss"].as_f64().unwrap().is_finite(), "{t}");
    assert!(t["memory_estimate_bytes"].as_u64().unwrap() > 0, "{t}");
    assert!(t["mfu"].is_null(), "no peak FLOP/s is known for a CPU: {t}");
}
