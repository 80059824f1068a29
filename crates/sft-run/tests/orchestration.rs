//! The runner's guarantees, independent of tensors: stage keys, the shared store, reuse across
//! plans and reruns, resume after a failure mid-plan, status and results files.
//!
//! The backend here "trains" by writing a weights file whose content is a hash of its inputs, so
//! every check below would fail if the runner passed a stage the wrong parent or data.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sft_run::{
    run_plan, Backend, EvalRequest, Metric, RunOptions, RunResults, RunSettings, Status, Task,
    TrainReport, TrainRequest,
};
use sha2::{Digest, Sha256};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Records what it was asked to do; fails the `fail_at`-th training call.
#[derive(Default)]
struct Recorder {
    trained: RefCell<Vec<(String, String)>>, // (stage name, init model content)
    evaluated: RefCell<Vec<Task>>,
    fail_at: Option<usize>,
    calls: RefCell<usize>,
}

impl Backend for Recorder {
    fn describe(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("device".to_string(), "test".to_string())])
    }

    fn train(&self, req: &TrainRequest<'_>) -> sft_run::Result<TrainReport> {
        *self.calls.borrow_mut() += 1;
        if Some(*self.calls.borrow()) == self.fail_at {
            // A partial trainer directory, as a killed process would leave.
            std::fs::create_dir_all(req.work_dir).unwrap();
            std::fs::write(req.work_dir.join("partial"), "x").unwrap();
            return Err(sft_run::Error::Model {
                context: "training".into(),
                message: "killed".into(),
            });
        }
        let init = if req.init_model.is_dir() {
            std::fs::read_to_string(req.init_model.join("weights")).unwrap()
        } else {
            "base".to_string()
        };
        let data = std::fs::read_to_string(req.data).unwrap();
        let lines = data.lines().count();
        let mut h = Sha256::new();
        h.update(init.as_bytes());
        h.update(data.as_bytes());
        std::fs::create_dir_all(req.model_out).unwrap();
        std::fs::write(req.model_out.join("weights"), hex::encode(h.finalize())).unwrap();
        self.trained
            .borrow_mut()
            .push((req.stage.name.clone(), init));
        Ok(TrainReport {
            steps: lines as u64,
            examples: lines,
            final_train_loss: Some(1.0),
            resumed_from: None,
        })
    }

    fn evaluate(&self, task: Task, req: &EvalRequest<'_>) -> sft_run::Result<Option<Metric>> {
        self.evaluated.borrow_mut().push(task);
        match task {
            Task::Gsm8k => Ok(Some(Metric::wilson(1, 2))),
            Task::GeneralHeldoutLoss => {
                Ok(Some(Metric::mean_normal(&vec![2.0; req.heldout.len()])))
            }
            _ => Ok(None),
        }
    }
}

fn setup() -> (tempfile::TempDir, RunSettings, PathBuf) {
    let (_, settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("base.gguf");
    std::fs::write(&model, "base weights").unwrap();
    (tmp, settings, model)
}

fn opts(root: &Path, name: &str, model: &Path) -> RunOptions {
    RunOptions {
        run_dir: root.join("runs").join(name),
        stage_store: None,
        data_dir: workspace().join("fixtures/demo"),
        base_model: model.to_path_buf(),
        provenance: BTreeMap::new(),
    }
}

fn status(dir: &Path) -> Status {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap()).unwrap()
}

#[test]
fn two_stage_plan_writes_the_contract_and_reruns_without_training() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "a", &model);
    let backend = Recorder::default();
    let r = run_plan(&plan, &settings, &o, &backend).unwrap();

    // Stage 2 started from stage 1's weights.
    let trained = backend.trained.borrow().clone();
    assert_eq!(trained.len(), 2);
    assert_eq!(trained[0].1, "base");
    let s1_weights = std::fs::read_to_string(r.stages[0].store_dir.join("model/weights")).unwrap();
    assert_eq!(trained[1].1, s1_weights);

    // The run directory holds the contract's files.
    for f in [
        "status.json",
        "results.json",
        "plan.resolved.json",
        "provenance.json",
        "stages/0.json",
        "stages/1.json",
    ] {
        assert!(o.run_dir.join(f).exists(), "{f} missing");
    }
    assert_eq!(status(&o.run_dir).state, "done");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["format_version"], 1);
    assert_eq!(results["plan"], "two-stage-tiny");
    assert_eq!(results["metrics"]["gsm8k_acc"]["n"], 2);
    assert_eq!(results["metrics"]["general_heldout_loss"]["n"], 4);
    assert!(
        results["metrics"].get("humaneval_pass@1").is_none(),
        "unevaluated metrics are absent"
    );
    assert_eq!(results["provenance"]["seed"], 7);

    // Stage data: stage 1 = all 12 + 12 pool records, stage 2 = 16 general + floor(12/4) code and math.
    let s2_manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.stages[1].store_dir.join("data/manifest.json")).unwrap(),
    )
    .unwrap();
    let text = s2_manifest.to_string();
    assert_eq!(r.stages[0].records, 24);
    assert_eq!(r.stages[1].records, 16 + 3 + 3, "{text}");

    // Held-out general conversations never appear in any stage's data.
    let resolved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.run_dir.join("plan.resolved.json")).unwrap(),
    )
    .unwrap();
    let heldout: Vec<String> = resolved["heldout_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(heldout.len(), 4);
    for s in &r.stages {
        let data = std::fs::read_to_string(s.store_dir.join("data/train.jsonl")).unwrap();
        for id in &heldout {
            assert!(
                !data.contains(&format!("\"id\":\"{id}\"")),
                "held-out {id} trained on in stage {}",
                s.name
            );
        }
    }

    // Rerun: nothing is trained or evaluated again, and the results are the same.
    let again = Recorder::default();
    let r2 = run_plan(&plan, &settings, &o, &again).unwrap();
    assert!(again.trained.borrow().is_empty());
    assert!(again.evaluated.borrow().is_empty());
    assert!(r2.stages.iter().all(|s| s.reused));
    assert_eq!(r2.metrics, r.metrics);
}

#[test]
fn plans_sharing_a_stage_train_it_once() {
    let (tmp, settings, model) = setup();
    let (custom, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    // The same first stage, a different second stage (mixed sequential's general-only stage).
    let mut other = custom.clone();
    other.name = "other".into();
    other.stages[1].mixture.remove("code");
    other.stages[1].mixture.remove("math");

    let backend = Recorder::default();
    let a: RunResults =
        run_plan(&custom, &settings, &opts(tmp.path(), "a", &model), &backend).unwrap();
    let b: RunResults =
        run_plan(&other, &settings, &opts(tmp.path(), "b", &model), &backend).unwrap();
    let names: Vec<String> = backend
        .trained
        .borrow()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        names,
        vec!["specialized", "general+k", "general+k"],
        "stage 1 trained once"
    );
    assert_eq!(a.stages[0].key, b.stages[0].key);
    assert!(b.stages[0].reused && !b.stages[1].reused);
    assert_ne!(a.stages[1].key, b.stages[1].key);
}

#[test]
fn a_failure_mid_plan_is_recorded_and_a_rerun_finishes_without_retraining() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "a", &model);
    let failing = Recorder {
        fail_at: Some(2),
        ..Recorder::default()
    };
    let err = run_plan(&plan, &settings, &o, &failing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stage 1 (general+k") && err.contains("killed"),
        "{err}"
    );
    let st = status(&o.run_dir);
    assert_eq!(st.state, "failed");
    assert!(st.error.unwrap().contains("killed"));
    assert!(!o.run_dir.join("results.json").exists());

    let backend = Recorder::default();
    let r = run_plan(&plan, &settings, &o, &backend).unwrap();
    let names: Vec<String> = backend
        .trained
        .borrow()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        names,
        vec!["general+k"],
        "only the unfinished stage is trained"
    );
    assert!(r.stages[0].reused);
    // The partial trainer directory was handed back to the trainer (it resumes from there).
    assert!(r.stages[1].store_dir.join("train/partial").exists());
    assert_eq!(status(&o.run_dir).state, "done");
}

#[test]
fn bad_plans_and_settings_fail_before_any_training() {
    let (tmp, mut settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    settings.data.sources.get_mut("code").unwrap().pool = Some(1000);
    let backend = Recorder::default();
    let o = opts(tmp.path(), "a", &model);
    let err = run_plan(&plan, &settings, &o, &backend)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("source \"code\": pool = 1000 but only 12 records are available"),
        "{err}"
    );
    assert!(backend.trained.borrow().is_empty());
    assert_eq!(status(&o.run_dir).state, "failed");

    let plan_text =
        std::fs::read_to_string(workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        plan_text.replace(
            "mixture = { code = 1, math = 1 }",
            "mixture = { code = 1, maths = 1 }",
        ),
    )
    .unwrap();
    let err = sft_run::load_plan_file(&bad).unwrap_err().to_string();
    assert!(
        err.contains("unknown source \"maths\"") && err.contains("code, general, math"),
        "{err}"
    );
}
