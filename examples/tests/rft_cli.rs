//! The `rft` example end to end: `filter` on the hand-written fixture, and `sample` with the
//! embedded SmolLM2 on 8 real GSM8K train questions × k = 4 (killed midway and resumed), then `filter`, then
//! loading the result as source format `rft`.

use std::path::PathBuf;

use sft_compose::rft::{filter_files, FilterOptions, FilterStats, RftRecord};
use sft_compose::{load_source, LoadOptions, SourceFormat};

fn fixture(name: &str) -> PathBuf {
    sft_testkit::workspace_root()
        .join("fixtures/rft")
        .join(name)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

const HINT: &str = " (the rft example links libtorch: run `cargo xtask setup` and `source` what `cargo xtask env` prints)";

// ---------------------------------------------------------------------------------------------
// The CLI example end to end.

#[test]
fn cli_filter_end_to_end() {
    let bin = sft_testkit::example_binary("sft-examples", "rft", HINT);
    let dir = tempdir();
    let out = dir.path().join("rft.jsonl");
    let stats = dir.path().join("stats.json");
    let run = std::process::Command::new(&bin)
        .arg("filter")
        .arg("--questions")
        .arg(fixture("questions.jsonl"))
        .arg("--candidates")
        .arg(fixture("candidates.jsonl"))
        .arg("--out")
        .arg(&out)
        .arg("--stats")
        .arg(&stats)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "rft filter failed: {stderr}");
    assert!(stderr.contains("10 kept"), "{stderr}");
    assert!(
        stderr.contains("matches no question"),
        "the unmatched candidate is reported: {stderr}"
    );
    let (want, want_stats) = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let got: Vec<RftRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);
    // Exactly the two fields, query first.
    assert!(text
        .lines()
        .all(|l| l.starts_with("{\"query\":") && l.contains(",\"response\":")));
    let got_stats: FilterStats =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(got_stats, want_stats);
    let loaded = load_source("math", &out, &LoadOptions::strict()).unwrap();
    assert_eq!(
        (loaded.format, loaded.records.len()),
        (SourceFormat::Rft, 15)
    );

    // --no-dedup
    let run = std::process::Command::new(&bin)
        .arg("filter")
        .arg("--questions")
        .arg(fixture("questions.jsonl"))
        .arg("--candidates")
        .arg(fixture("candidates.jsonl"))
        .arg("--out")
        .arg(&out)
        .arg("--no-dedup")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        5 + 21
    );

    // An error names the file and line and exits non-zero.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"query\": 1}\n").unwrap();
    let run = std::process::Command::new(&bin)
        .arg("filter")
        .arg("--questions")
        .arg(fixture("questions.jsonl"))
        .arg("--candidates")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!("{}:1: invalid candidate line", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid type"),
        "the cause is printed: {stderr}"
    );
}

#[test]
fn sample_with_smollm2_is_killed_resumed_filtered_and_composed() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let bin = sft_testkit::example_binary("sft-examples", "rft", HINT);
    let questions = sft_testkit::shared_data().join("gsm8k/train.jsonl");
    let model = sft_testkit::smollm2_gguf();
    let dir = tempdir();
    let out = dir.path().join("cand");
    let shard = |i: usize| out.join(format!("sample-{i:04}.jsonl"));
    let sample = |cmd: &mut Command| {
        cmd.arg("sample")
            .arg("--model")
            .arg(&model)
            .arg("--questions")
            .arg(&questions)
            .args(["--limit", "8", "--k", "4", "--temperature", "0.7"])
            .args([
                "--max-new-tokens",
                "32",
                "--prompt",
                "alpaca",
                "--seed",
                "3",
            ])
            .args(["--device", "cpu", "--batch-size", "8", "--chunk", "8"])
            .arg("--out")
            .arg(&out);
    };

    // Killed (SIGKILL) as soon as the first shard is complete.
    let mut cmd = Command::new(&bin);
    sample(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rft sample");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !shard(0).exists() {
        assert!(Instant::now() < deadline, "no shard after 10 minutes");
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("rft sample exited before its first shard: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    let done: Vec<usize> = (0..4).filter(|&i| shard(i).exists()).collect();
    assert!(
        !done.is_empty() && done.len() < 4,
        "the kill came midway: {done:?}"
    );
    let mtime = |i| {
        std::fs::metadata(shard(i))
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let before: Vec<_> = done.iter().map(|&i| mtime(i)).collect();

    // The rerun completes the rest and leaves finished shards alone.
    let mut cmd = Command::new(&bin);
    sample(&mut cmd);
    let run = cmd.output().expect("rerun rft sample");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "rerun failed: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{} shards written, {} already complete",
            4 - done.len(),
            done.len()
        )),
        "{stderr}"
    );
    let after: Vec<_> = done.iter().map(|&i| mtime(i)).collect();
    assert_eq!(before, after, "finished shards were redone");
    let qs = sft_compose::rft::read_questions(&questions).expect("questions");
    for i in 0..4 {
        let text = std::fs::read_to_string(shard(i)).expect("shard");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 8, "shard {i}");
        for (q, l) in qs.iter().zip(&lines) {
            assert_eq!(l["query"], q.query.as_str());
            assert_eq!(l["sample"], i);
            assert!(l["response"].is_string());
        }
    }
    // Samples differ (temperature 0.7, a seed per sample and question).
    let a = std::fs::read_to_string(shard(0)).expect("shard 0");
    let b = std::fs::read_to_string(shard(1)).expect("shard 1");
    assert_ne!(a, b);

    // Filter, then compose loads the result as `rft`.
    let rft = dir.path().join("rft.jsonl");
    let run = Command::new(&bin)
        .arg("filter")
        .arg("--questions")
        .arg(&questions)
        .arg("--candidates")
        .arg(&out)
        .arg("--out")
        .arg(&rft)
        .output()
        .expect("filter");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "filter failed: {stderr}");
    let (want, stats) =
        filter_files(&questions, &out, FilterOptions::default()).expect("filter in process");
    assert_eq!(stats.candidates, 32);
    assert_eq!(stats.unmatched_candidates, 0);
    let loaded = load_source("math", &rft, &LoadOptions::strict()).expect("compose loads it");
    assert_eq!(loaded.format, SourceFormat::Rft);
    assert_eq!(loaded.records.len(), want.len());
    assert_eq!(want.len(), stats.questions + stats.kept);
}
