//! `[run.eval] server`: the runner starts the user's server command on the stage's final model,
//! waits for `/v1/models`, generates every GSM8K and HumanEval answer through it, scores them
//! itself, and stops the server; a server that never becomes ready fails the evaluation within
//! `ready_timeout_s` and is stopped too. The server is `fixtures/server/fake_openai_server.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sft_local::{LocalBackend, LocalOptions};
use sft_run::{run_plan, RunOptions, ServerSettings};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn command(record: &Path, extra: &str) -> String {
    format!(
        "exec python3 {} --model {{model}} --port {{port}} --record {} {extra}",
        workspace()
            .join("fixtures/server/fake_openai_server.py")
            .display(),
        record.display()
    )
}

fn started(record: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(record.join("started.json")).expect("started.json"),
    )
    .expect("json")
}

fn run_options(root: &Path, model: &Path) -> RunOptions {
    RunOptions {
        run_dir: root.join("run"),
        stage_store: None,
        data_dir: workspace().join("fixtures/demo"),
        base_model: model.to_path_buf(),
        provenance: BTreeMap::new(),
    }
}

fn alive(pid: u64) -> bool {
    // A reaped process has no /proc entry; a zombie would still show "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn answers_come_from_the_server_started_on_the_final_model_and_it_is_stopped() {
    tch::manual_seed(0);
    let tmp = tempfile::tempdir().unwrap();
    let (mut plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    plan.stages.truncate(1);
    let record = tmp.path().join("server");
    settings.eval.gsm8k = 3;
    settings.eval.humaneval = 2;
    settings.eval.server = Some(ServerSettings {
        command: command(&record, ""),
        ready_timeout_s: 60.0,
        parallel: 2,
        api_key_env: None,
    });
    let model = workspace().join("fixtures/run/tiny-bytes");
    let mut o = LocalOptions::new(tch::Device::Cpu, &model);
    o.progress = false;
    let backend = LocalBackend::new(o).unwrap();
    let opts = run_options(tmp.path(), &model);
    let results = run_plan(&plan, &settings, &opts, &backend).expect("run");
    assert_eq!(backend.eval_model_loads(), 0, "no in-process generation");

    // Started once, on the stage's final model, and stopped.
    let s = started(&record);
    let served = PathBuf::from(s["model"].as_str().unwrap());
    assert!(served.join("config.json").is_file(), "{}", served.display());
    assert!(served.ends_with("model"), "{}", served.display());
    assert!(
        !alive(s["pid"].as_u64().unwrap()),
        "the server is still running"
    );

    // Every answer went through it: 3 GSM8K prompts in the stage's template, 2 raw HumanEval
    // prompts, greedy, with the stop sequences.
    let requests: Vec<serde_json::Value> = std::fs::read_to_string(record.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(requests.len(), 5);
    let chat: Vec<_> = requests
        .iter()
        .filter(|r| {
            r["prompt"]
                .as_str()
                .unwrap()
                .contains("<|im_start|>assistant")
        })
        .collect();
    assert_eq!(
        chat.len(),
        3,
        "GSM8K prompts are rendered in the stage's template"
    );
    assert!(requests
        .iter()
        .all(|r| r["model"] == "fake-served" && r["temperature"] == 0.0));
    assert!(chat.iter().all(|r| r["stop"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "Question:")));

    // Scored here, from the server's texts cut at the stop sequences.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(opts.run_dir.join("eval/gsm8k.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["generation"]["served_model"], "fake-served");
    let items = report["report"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items.iter().all(|i| i["completion"] == "#### 18\n"),
        "{items:?}"
    );
    assert_eq!(results.metrics["gsm8k_acc"].n, 3);
    assert_eq!(results.metrics["humaneval_pass@1"].n, 2);
    assert!(opts.run_dir.join("eval/server.log").is_file());
    // The canned HumanEval body, cut before "\ndef", returns 18: it fails both problems.
    let he: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(opts.run_dir.join("eval/humaneval.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(he["passed"], 0);
    assert_eq!(he["generation"]["prompts"], 2);
}

#[test]
fn a_server_that_never_becomes_ready_fails_in_time_and_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    plan.stages.clear();
    let record = tmp.path().join("server");
    settings.eval.gsm8k = 2;
    settings.eval.humaneval = 0;
    settings.eval.server = Some(ServerSettings {
        command: command(&record, "--never-ready"),
        ready_timeout_s: 3.0,
        parallel: 1,
        api_key_env: None,
    });
    let model = workspace().join("fixtures/run/tiny-bytes");
    let backend = LocalBackend::new(LocalOptions::new(tch::Device::Cpu, &model)).unwrap();
    let opts = run_options(tmp.path(), &model);
    let start = Instant::now();
    let err = run_plan(&plan, &settings, &opts, &backend).expect_err("not ready");
    assert!(start.elapsed() < Duration::from_secs(60));
    let chain = {
        let mut s = err.to_string();
        let mut e: Option<&dyn std::error::Error> = std::error::Error::source(&err);
        while let Some(c) = e {
            s.push_str(&format!(" / {c}"));
            e = c.source();
        }
        s
    };
    assert!(chain.contains("not ready after 3 s"), "{chain}");
    assert!(
        chain.contains("fake server for"),
        "the log's end is shown: {chain}"
    );
    let s = started(&record);
    assert!(
        !alive(s["pid"].as_u64().unwrap()),
        "the server is still running"
    );
}

#[test]
fn a_server_command_without_placeholders_fails_when_the_plan_loads() {
    let value = serde_json::json!({"eval": {"server": {"command": "vllm serve {model}"}}});
    let err = sft_run::RunSettings::from_plan_value(Some(&value), Path::new("plan.toml"))
        .expect_err("no {port}");
    assert!(err.to_string().contains("{port}"), "{err}");
    let value = serde_json::json!({"eval": {"server": {"command": "x {model} {port}", "ready_timeout": 3}}});
    assert!(sft_run::RunSettings::from_plan_value(Some(&value), Path::new("plan.toml")).is_err());
}
