//! MT-Bench through the runner: the tiny byte-level model answers two turns of the fixture
//! questions, a fake OpenAI-compatible judge on 127.0.0.1 grades them, and the score lands in
//! `results.json` and the table. A judge outage fails the evaluation (never a silent gap), keeps
//! the trained stage and the generated answers, and a rerun only sends the judge calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use sft_local::{LocalBackend, LocalOptions};
use sft_run::{run_plan, JudgeSettings, RunOptions};
use sft_testkit::fake_openai::{chat_reply, FakeOpenAi};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `sft_testkit`'s fake OpenAI server: 401 while `down`, else `[[6]]` for first turns and
/// `[[8]]` for second turns (FastChat's multi-turn prompt shows "### Assistant A:").
struct Judge {
    _server: FakeOpenAi,
    url: String,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl Judge {
    fn start() -> Judge {
        let down = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(AtomicUsize::new(0));
        let (d, r) = (down.clone(), requests.clone());
        let server = FakeOpenAi::start(move |req, _| {
            r.fetch_add(1, Ordering::Relaxed);
            if d.load(Ordering::Relaxed) {
                return (401, vec![], "{\"error\":\"judge unavailable\"}".to_string());
            }
            let score = if req.prompt_text().contains("### Assistant A:") {
                8
            } else {
                6
            };
            chat_reply(&format!("A fair answer. Rating: [[{score}]]"))
        });
        Judge {
            url: server.url.clone(),
            _server: server,
            down,
            requests,
        }
    }
}

/// FastChat's layout (`question.jsonl`, `judge_prompts.jsonl`, `reference_answer/gpt-4.jsonl`)
/// from the hand-written fixtures in `fixtures/eval/mt_bench`.
fn mt_bench_dir(root: &Path) -> PathBuf {
    let src = workspace().join("fixtures/eval/mt_bench");
    let dir = root.join("mt_bench");
    std::fs::create_dir_all(dir.join("reference_answer")).unwrap();
    for f in ["question.jsonl", "judge_prompts.jsonl"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        src.join("reference_gpt-4.jsonl"),
        dir.join("reference_answer/gpt-4.jsonl"),
    )
    .unwrap();
    dir
}

#[test]
fn mtbench_is_answered_judged_reported_and_survives_a_judge_outage() {
    tch::manual_seed(0);
    let tmp = tempfile::tempdir().unwrap();
    let (mut plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    plan.stages.truncate(1);
    let judge = Judge::start();
    settings.eval.gsm8k = 0;
    settings.eval.humaneval = 0;
    settings.eval.mtbench_dir = mt_bench_dir(tmp.path());
    settings.eval.mtbench = 4;
    settings.eval.mtbench_max_new_tokens = 4;
    settings.eval.judge = Some(JudgeSettings {
        api_key_env: "SFT_RUN_TEST_JUDGE_KEY_UNSET".into(),
        parallel: 2,
        ..JudgeSettings::new(judge.url.clone())
    });
    let model = workspace().join("fixtures/run/tiny-bytes");
    let backend = || {
        let mut o = LocalOptions::new(tch::Device::Cpu, &model);
        o.progress = false;
        LocalBackend::new(o).unwrap()
    };
    let opts = RunOptions {
        run_dir: tmp.path().join("run"),
        stage_store: None,
        data_dir: workspace().join("fixtures/demo"),
        base_model: model.clone(),
        provenance: BTreeMap::new(),
    };

    // 1. The judge refuses every call: the evaluation fails and says why; the stage and the
    //    answers are kept.
    let err = run_plan(&plan, &settings, &opts, &backend())
        .unwrap_err()
        .to_string();
    assert!(err.contains("mtbench") && err.contains("coverage"), "{err}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(opts.run_dir.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(status["error_kind"], "eval", "{status}");
    assert_eq!(
        judge.requests.load(Ordering::Relaxed),
        8,
        "4 questions × 2 turns"
    );
    let answers_path = opts.run_dir.join("eval/mtbench/model_answer.jsonl");
    let answers: Vec<serde_json::Value> = std::fs::read_to_string(&answers_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 4);
    for a in &answers {
        assert_eq!(a["choices"][0]["turns"].as_array().unwrap().len(), 2, "{a}");
    }
    let answers_time = std::fs::metadata(&answers_path)
        .unwrap()
        .modified()
        .unwrap();

    // 2. The judge is back: the stage is reused, the answers are not regenerated, 8 calls go
    //    out, and the score is the mean over (question, turn) items.
    judge.down.store(false, Ordering::Relaxed);
    let rejudge = backend();
    let r = run_plan(&plan, &settings, &opts, &rejudge).unwrap();
    assert_eq!(
        rejudge.eval_model_loads(),
        0,
        "the held-out loss was kept from the failed run and the answers are reused: no model load"
    );
    assert!(r.stages[0].reused);
    assert_eq!(judge.requests.load(Ordering::Relaxed), 16);
    assert_eq!(
        std::fs::metadata(&answers_path)
            .unwrap()
            .modified()
            .unwrap(),
        answers_time,
        "answers were regenerated"
    );
    let m = r.metrics["mtbench_score"];
    assert_eq!(m.n, 8);
    assert!((m.value - 7.0).abs() < 1e-12, "{m:?}");
    assert!(r.metrics.contains_key("general_heldout_loss"));
    let judgments =
        std::fs::read_to_string(opts.run_dir.join("eval/mtbench/judgments.jsonl")).unwrap();
    assert_eq!(judgments.lines().count(), 8);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(opts.run_dir.join("eval/mtbench.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["estimate"], report["summary"]["estimate"]);
    assert_eq!(
        serde_json::to_value(m).unwrap(),
        report["estimate"],
        "results.json's metric is the report's estimate"
    );
    assert_eq!(report["estimate"]["method"], "mean_se");
    assert_eq!(report["summary"]["all"]["turn1"], 6.0);
    assert_eq!(report["summary"]["all"]["turn2"], 8.0);
    let table = sft_run::table::render(&[sft_run::table::Row {
        label: "Specialized".into(),
        results: &r,
        heldout: None,
        items: None,
    }]);
    assert!(
        table.contains("MT-Bench") && table.contains("7.000"),
        "{table}"
    );

    // 3. A rerun reuses the evaluation: no judge call at all.
    let r2 = run_plan(&plan, &settings, &opts, &backend()).unwrap();
    assert_eq!(judge.requests.load(Ordering::Relaxed), 16);
    assert_eq!(r2.metrics, r.metrics);
}
