//! HumanEval on the real 164 problems: canonical solutions all pass, empty completions all fail.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use sft_eval::humaneval::{self, Sample, DEFAULT_KS};
use sft_eval::sandbox::{Sandbox, SandboxConfig, SandboxMode};

#[test]
fn canonical_solutions_pass_and_empty_completions_fail() {
    let data = common::shared_data();
    let problems =
        humaneval::load_problems(&data.join("humaneval/HumanEval.jsonl.gz")).expect("problems");
    assert_eq!(problems.len(), 164);
    let sandbox = Sandbox::new(SandboxConfig::default())
        .expect("sandbox must be available (run `cargo xtask setup`)");
    eprintln!("sandbox mode: {}", sandbox.mode());
    if common::effective_uid() == 0 {
        assert!(
            sandbox.mode().is_cgroup(),
            "root gets a cgroup mode, got {}",
            sandbox.mode()
        );
    }

    let canonical: Vec<Sample> = problems
        .iter()
        .map(|p| Sample::new(p.task_id.clone(), p.canonical_solution.clone()))
        .collect();
    let empty: Vec<Sample> = problems
        .iter()
        .map(|p| Sample::new(p.task_id.clone(), ""))
        .collect();
    let all: Vec<Sample> = canonical.iter().chain(&empty).cloned().collect();

    let start = Instant::now();
    let results = humaneval::evaluate(&problems, &all, &sandbox, 2).expect("evaluation runs");
    eprintln!(
        "328 samples (164 canonical + 164 empty), 2 workers, mode {}: {:.1} s",
        sandbox.mode(),
        start.elapsed().as_secs_f64()
    );
    let (good, bad) = results.split_at(164);
    let failures: Vec<String> = good
        .iter()
        .filter(|(r, _)| !r.passed)
        .map(|(r, e)| format!("{}: {} (stderr: {})", r.task_id, r.result, e.stderr.trim()))
        .collect();
    assert!(
        failures.is_empty(),
        "canonical solutions failed:\n{}",
        failures.join("\n")
    );

    let good: Vec<_> = good.iter().map(|(r, _)| r.clone()).collect();
    let report = humaneval::pass_at_k_report(&good, DEFAULT_KS);
    assert_eq!(report.pass_at_k["pass@1"], 1.0);
    assert_eq!(report.tasks, 164);

    let bad: Vec<_> = bad.iter().map(|(r, _)| r.clone()).collect();
    assert!(
        bad.iter()
            .all(|r| !r.passed && r.result.starts_with("failed")),
        "an empty completion passed"
    );
    assert_eq!(
        humaneval::pass_at_k_report(&bad, DEFAULT_KS).pass_at_k["pass@1"],
        0.0
    );
}

#[test]
fn fixture_samples_give_the_recorded_results() {
    let dir = common::fixtures().join("humaneval");
    let problems = humaneval::load_problems(&dir.join("problems.jsonl")).expect("problems");
    let samples = humaneval::load_samples(&dir.join("samples.jsonl")).expect("samples");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("read"))
            .expect("json");
    let config = SandboxConfig {
        cpu_time_s: 1,
        wall_time_s: 4.0,
        ..SandboxConfig::default()
    };
    let sandbox =
        Sandbox::new(config).expect("sandbox must be available (run `cargo xtask setup`)");
    let results: Vec<_> = humaneval::evaluate(&problems, &samples, &sandbox, 2)
        .expect("runs")
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let passed: Vec<bool> = results.iter().map(|r| r.passed).collect();
    let want: Vec<bool> = serde_json::from_value(expected["passed"].clone()).expect("bools");
    assert_eq!(passed, want);
    let result: Vec<&str> = results.iter().map(|r| r.result.as_str()).collect();
    let want: Vec<String> = serde_json::from_value(expected["result"].clone()).expect("strings");
    assert_eq!(result, want);
    let report = humaneval::pass_at_k_report(&results, DEFAULT_KS);
    assert!((report.pass_at_k["pass@1"] - expected["pass@1"].as_f64().expect("f64")).abs() < 1e-12);
    assert!(
        !report.pass_at_k.contains_key("pass@10"),
        "only 3 samples per task"
    );
}

#[test]
fn groups_left_by_a_dead_run_are_removed() {
    // A pid above the kernel's maximum (2^22) can never be alive.
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup membership");
    let pids_rel = own
        .lines()
        .find_map(|l| {
            l.splitn(3, ':')
                .nth(2)
                .filter(|_| l.split(':').nth(1) == Some("pids"))
        })
        .expect("a v1 pids hierarchy");
    let stale = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(pids_rel.trim_start_matches('/'))
        .join("sft-eval-99999999-0");
    std::fs::create_dir(&stale).expect("create a stale group");
    let _sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    assert!(
        !stale.exists(),
        "stale group {} was not removed",
        stale.display()
    );
}

#[test]
fn unsafe_mode_runs_benign_code_without_bubblewrap() {
    // Only the fixture's benign samples: this mode has no isolation at all.
    let dir = common::fixtures().join("humaneval");
    let problems = humaneval::load_problems(&dir.join("problems.jsonl")).expect("problems");
    let samples: Vec<Sample> = problems
        .iter()
        .map(|p| Sample::new(p.task_id.clone(), p.canonical_solution.clone()))
        .collect();
    let config = SandboxConfig {
        isolation: sft_eval::sandbox::Isolation::UnsafeNone,
        bwrap: std::path::PathBuf::from("/nonexistent/bwrap"),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config).expect("unsafe mode needs no bubblewrap");
    let results = humaneval::evaluate(&problems, &samples, &sandbox, 2).expect("runs");
    assert!(results.iter().all(|(r, _)| r.passed), "{results:?}");
}

#[test]
fn canonical_solutions_pass_as_an_unprivileged_user() {
    let data = common::shared_data();
    let uid = common::ensure_test_user();
    let problems_src = data.join("humaneval/HumanEval.jsonl.gz");
    let problems = humaneval::load_problems(&problems_src).expect("problems");
    let dir = common::open_tempdir();
    let eval = common::eval_binary_in(dir.path());
    let problems_copy = dir.path().join("HumanEval.jsonl.gz");
    std::fs::copy(&problems_src, &problems_copy).expect("copy problems");
    let samples_path = dir.path().join("canonical.jsonl");
    let canonical: Vec<Sample> = problems
        .iter()
        .map(|p| Sample::new(p.task_id.clone(), p.canonical_solution.clone()))
        .collect();
    sft_eval::io::write_jsonl(&samples_path, &canonical).expect("samples");
    for f in [&problems_copy, &samples_path] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let out = dir.path().join("results.jsonl");
    let start = Instant::now();
    let run = common::as_test_user()
        .arg(&eval)
        .args(["humaneval", "--workers", "2"])
        .arg("--problems")
        .arg(&problems_copy)
        .arg("--samples")
        .arg(&samples_path)
        .arg("--out")
        .arg(&out)
        .current_dir(dir.path())
        .output()
        .expect("run the eval example under setpriv");
    let elapsed = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "eval failed ({}): {stderr}",
        run.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("eval prints its report as JSON");
    let mode = report["sandbox_mode"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "164 canonical solutions as {}, 2 workers, mode {mode}: {elapsed:.1} s",
        common::TEST_USER
    );
    assert!(
        stderr.contains(&format!("sandbox mode: {mode}")),
        "mode not printed: {stderr}"
    );
    assert_ne!(mode, SandboxMode::Unsafe.name());
    assert_eq!(report["passed"], 164, "report: {report}");
    assert_eq!(report["pass_at_k"]["pass@1"], 1.0);
    let results: Vec<humaneval::SampleResult> = sft_eval::io::read_jsonl(&out).expect("results");
    let failures: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.task_id, r.result))
        .collect();
    assert!(
        failures.is_empty(),
        "canonical solutions failed:\n{}",
        failures.join("\n")
    );
    let left = common::tasks_of_uid(uid);
    assert!(
        left.is_empty(),
        "{} still runs: {left:?}",
        common::TEST_USER
    );
}
