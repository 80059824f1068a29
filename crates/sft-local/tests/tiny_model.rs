//! The whole pipeline on real crates: a 2-stage plan (fixtures/plans/two-stage-tiny.toml) on the
//! fixture data, trained and evaluated with the tiny byte-level LLaMA (fixtures/run/tiny-bytes)
//! through `LocalBackend` on the CPU. Then: a rerun trains nothing, and a run interrupted in the
//! middle of its second stage finishes on rerun without retraining the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sft_local::{LocalBackend, LocalOptions};
use sft_run::{run_plan, RunOptions, StageDone};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn backend(stop_after: Option<u64>) -> LocalBackend {
    let model = workspace().join("fixtures/run/tiny-bytes");
    let mut o = LocalOptions::new(tch::Device::Cpu, &model);
    o.progress = false;
    o.stop_after = stop_after;
    LocalBackend::new(o).unwrap()
}

fn opts(root: &Path, name: &str) -> RunOptions {
    RunOptions {
        run_dir: root.join("runs").join(name),
        stage_store: None,
        data_dir: workspace().join("fixtures/demo"),
        base_model: workspace().join("fixtures/run/tiny-bytes"),
        provenance: BTreeMap::new(),
    }
}

fn done(dir: &Path) -> StageDone {
    serde_json::from_str(&std::fs::read_to_string(dir.join("done.json")).unwrap()).unwrap()
}

/// Every record of the fixture data (fixtures/demo), by id.
fn fixture_records() -> BTreeMap<String, sft_record::Record> {
    let mut records = BTreeMap::new();
    for (source, file, format) in [
        ("code", "code.json", "alpaca"),
        ("math", "math.jsonl", "gsm8k"),
        ("general", "general.json", "sharegpt"),
    ] {
        let loaded = sft_compose::load_source(
            source,
            &workspace().join("fixtures/demo").join(file),
            &sft_compose::LoadOptions {
                format: Some(format.parse().unwrap()),
                ..sft_compose::LoadOptions::strict()
            },
        )
        .unwrap();
        for rec in loaded.records {
            records.insert(rec.id.clone(), rec);
        }
    }
    records
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn two_stage_plan_trains_evaluates_reuses_and_resumes() {
    tch::manual_seed(0);
    let (plan, settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // 1. A full run.
    let o = opts(tmp.path(), "full");
    let first = backend(None);
    let r = run_plan(&plan, &settings, &o, &first).unwrap();
    assert_eq!(
        first.eval_model_loads(),
        1,
        "one model load serves every evaluation task"
    );
    assert_eq!(r.stages.len(), 2);
    assert!(r.stages.iter().all(|s| !s.reused));
    for s in &r.stages {
        for f in [
            "model/model.safetensors",
            "model/config.json",
            "model/tokenizer.json",
            // model/ is the trainer's self-contained final/ (the train example's too).
            "model/tokenizer_config.json",
            "model/tokenizer_source.json",
            "data/train.jsonl",
            "data/manifest.json",
            "done.json",
        ] {
            assert!(
                s.store_dir.join(f).exists(),
                "stage {}: {f} missing",
                s.name
            );
        }
        assert!(s.final_train_loss.is_some_and(f64::is_finite));
    }
    // Stage 1: 24 records, micro-batch 4, 1 epoch → 6 steps.
    assert_eq!(done(&r.stages[0].store_dir).steps, 6);
    // Every stage records the semantics versions of the code that trained it.
    for s in &r.stages {
        assert_eq!(
            done(&s.store_dir).semantics,
            BTreeMap::from([
                ("chat".to_string(), sft_train::CHAT_SEMANTICS_VERSION),
                (
                    "training".to_string(),
                    sft_train::TRAINING_SEMANTICS_VERSION
                ),
            ]),
            "stage {}",
            s.name
        );
    }
    // Training changed the weights: stage 2's weights differ from stage 1's, which differ from the base.
    let bytes = |p: PathBuf| std::fs::read(p).unwrap();
    let base = bytes(workspace().join("fixtures/run/tiny-bytes/model.safetensors"));
    let w1 = bytes(r.stages[0].store_dir.join("model/model.safetensors"));
    let w2 = bytes(r.stages[1].store_dir.join("model/model.safetensors"));
    assert_ne!(w1, base);
    assert_ne!(w2, w1);
    // Every metric the plan asks for, with its n.
    assert_eq!(r.metrics["gsm8k_acc"].n, 2);
    assert_eq!(r.metrics["humaneval_pass@1"].n, 2);
    let loss = r.metrics["general_heldout_loss"];
    assert_eq!(loss.n, 4);
    assert!(
        loss.value.is_finite()
            && loss.value > 0.0
            && loss.ci_low <= loss.value
            && loss.value <= loss.ci_high
    );
    assert!(!r.metrics.contains_key("mtbench_score"));
    // results.json carries exactly each report's headline estimate, its method and the dtype.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("results.json")).unwrap())
            .unwrap();
    for (task, metric, method) in [
        ("gsm8k", "gsm8k_acc", "wilson"),
        ("humaneval", "humaneval_pass@1", "wilson"),
    ] {
        let path = o.run_dir.join(format!("eval/{task}.report.json"));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(report["estimate"], results["metrics"][metric], "{task}");
        assert_eq!(report["estimate"]["method"], method, "{task}");
        assert_eq!(report["dtype"], "f32", "{task}: auto on the CPU");
    }
    let gsm8k: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.run_dir.join("eval/gsm8k.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(gsm8k["report"]["estimate"], gsm8k["estimate"]);

    // 2. A rerun trains and evaluates nothing: the stage weights are untouched.
    let before = mtime(&r.stages[1].store_dir.join("model/model.safetensors"));
    let second = backend(None);
    let r2 = run_plan(&plan, &settings, &o, &second).unwrap();
    assert_eq!(second.eval_model_loads(), 0, "every metric is cached");
    assert_eq!(
        second.heldout_model_loads(),
        0,
        "every held-out loss is cached"
    );
    assert!(r2.stages.iter().all(|s| s.reused));
    assert_eq!(r2.metrics, r.metrics);
    assert_eq!(
        mtime(&r2.stages[1].store_dir.join("model/model.safetensors")),
        before
    );

    // 3. Another store: the run is interrupted after 2 steps of the second stage (the trainer
    //    checkpoints and returns, as on Ctrl-C), then rerun.
    let tmp2 = tempfile::tempdir().unwrap();
    let o2 = opts(tmp2.path(), "killed");
    let mut first_stage_only = plan.clone();
    first_stage_only.stages.truncate(1);
    run_plan(&first_stage_only, &settings, &o2, &backend(None)).unwrap();
    let s1_weights = o2
        .store()
        .join(&r.stages[0].key)
        .join("model/model.safetensors");
    let s1_time = mtime(&s1_weights);
    let err = run_plan(&plan, &settings, &o2, &backend(Some(2)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("interrupted at step 2"), "{err}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o2.run_dir.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["error_kind"], "interrupted", "{status}");

    let r3 = run_plan(&plan, &settings, &o2, &backend(None)).unwrap();
    assert!(
        r3.stages[0].reused,
        "the finished first stage is not retrained"
    );
    assert!(!r3.stages[1].reused);
    assert_eq!(mtime(&s1_weights), s1_time);
    assert_eq!(
        done(&r3.stages[1].store_dir).resumed_from,
        Some(2),
        "the second stage resumed from its checkpoint"
    );
    // Same keys as the uninterrupted run, and (on CPU) bit-identical final weights.
    assert_eq!(r3.stages[1].key, r.stages[1].key);
    assert_eq!(
        bytes(r3.stages[1].store_dir.join("model/model.safetensors")),
        w2
    );
}

/// A finished stage keeps one copy of its weights (`model/`) and no checkpoints, unless the
/// next stage of the plan carries the optimizer state over; carrying from a stage whose state
/// was dropped is a clear error, and a carry plan in its own store trains and differs from the
/// restart plan.
#[test]
fn stages_keep_optimizer_state_only_when_the_next_stage_carries_it() {
    use sft_schedule::OptimizerState;
    tch::manual_seed(0);
    let (plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    settings.eval.gsm8k = 0;
    settings.eval.humaneval = 0;
    let tmp = tempfile::tempdir().unwrap();

    let restart = run_plan(
        &plan,
        &settings,
        &opts(tmp.path(), "restart"),
        &backend(None),
    )
    .unwrap();
    for s in &restart.stages {
        assert!(s.store_dir.join("model/model.safetensors").exists());
        assert!(
            !s.store_dir.join("train/checkpoints").exists(),
            "{}",
            s.name
        );
        assert!(!s.store_dir.join("train/final").exists(), "{}", s.name);
        assert!(s.store_dir.join("train/metrics.jsonl").exists());
    }

    let mut carry = plan.clone();
    carry.stages[1].optimizer_state = OptimizerState::Carry;
    // Same store: stage 0 is reused from the restart run, whose state was dropped.
    let err = run_plan(
        &carry,
        &settings,
        &opts(tmp.path(), "carry"),
        &backend(None),
    )
    .unwrap_err();
    assert_eq!(err.kind(), sft_run::ErrorKind::Config);
    let err = err.to_string();
    assert!(
        err.contains("carry") && err.contains("delete that stage's store directory"),
        "{err}"
    );

    // Its own store: stage 0 keeps its checkpoints for stage 1, which carries them.
    let tmp2 = tempfile::tempdir().unwrap();
    let carried = run_plan(
        &carry,
        &settings,
        &opts(tmp2.path(), "carry"),
        &backend(None),
    )
    .unwrap();
    assert_eq!(carried.stages[0].key, restart.stages[0].key);
    assert_ne!(carried.stages[1].key, restart.stages[1].key);
    assert!(carried.stages[0]
        .store_dir
        .join("train/checkpoints")
        .is_dir());
    assert!(!carried.stages[1]
        .store_dir
        .join("train/checkpoints")
        .exists());
    let w = |r: &sft_run::RunResults| {
        std::fs::read(r.stages[1].store_dir.join("model/model.safetensors")).unwrap()
    };
    assert_ne!(
        w(&carried),
        w(&restart),
        "carrying the moments changes stage 2's updates"
    );
}

/// `[run.eval] dtype`: `auto` is bf16 on a CPU with native bf16 (AVX-512 BF16, AMX, Arm BF16;
/// detected) and f32 on any other; `bf16` loads the model in bf16 (once), is
/// recorded in the reports and evaluates again instead of reusing the f32 metrics, and the
/// held-out loss stays close to the f32 one.
#[test]
fn the_eval_dtype_is_used_recorded_and_part_of_the_cache_key() {
    tch::manual_seed(0);
    let (mut plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    plan.stages.truncate(1);
    settings.eval.humaneval = 0;
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path(), "dtype");
    let report = |task: &str| -> serde_json::Value {
        let p = o.run_dir.join(format!("eval/{task}.report.json"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };

    let f32_backend = backend(None);
    let native = sft_llama::device::CpuBf16::detect().native();
    assert_eq!(
        sft_run::Backend::eval_dtype(&f32_backend, sft_run::EvalDtype::Auto),
        if native {
            sft_run::EvalDtype::Bf16
        } else {
            sft_run::EvalDtype::F32
        }
    );
    settings.eval.dtype = sft_run::EvalDtype::F32;
    let f32_run = run_plan(&plan, &settings, &o, &f32_backend).unwrap();
    assert_eq!(f32_backend.eval_model_loads(), 1);
    assert_eq!(report("gsm8k")["dtype"], "f32");

    settings.eval.dtype = sft_run::EvalDtype::Bf16;
    let bf16_backend = backend(None);
    let bf16_run = run_plan(&plan, &settings, &o, &bf16_backend).unwrap();
    assert_eq!(
        bf16_backend.eval_model_loads(),
        1,
        "evaluated again, one load"
    );
    assert_eq!(report("gsm8k")["dtype"], "bf16");
    assert_eq!(
        bf16_backend.heldout_model_loads(),
        2,
        "the held-out losses of both models are computed again in bf16"
    );
    let (a, b) = (
        f32_run.metrics["general_heldout_loss"].value,
        bf16_run.metrics["general_heldout_loss"].value,
    );
    assert!(
        b.is_finite() && (a - b).abs() < 0.1 * a,
        "f32 {a} vs bf16 {b}"
    );
    assert_eq!(bf16_run.metrics["gsm8k_acc"].n, 2);
}

/// A chat template the tokenizer does not have, in the plan's last stage: the run fails before
/// the first stage trains (the backend checks every stage first), naming the stage and the
/// template, with the `config` kind in `status.json`.
#[test]
fn an_unknown_template_in_a_later_stage_fails_before_anything_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut plan, settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    let last = plan.stages.len() - 1;
    plan.stages[last].train.template = Some("no-such-template".into());
    let o = opts(tmp.path(), "bad-template");
    let err = run_plan(&plan, &settings, &o, &backend(None)).unwrap_err();
    let msg = err.to_string();
    let name = &plan.stages[last].name;
    assert!(
        msg.contains(name.as_str()) && msg.contains("no-such-template"),
        "{msg}"
    );
    assert_eq!(err.kind(), sft_run::ErrorKind::Config);
    let store = o.store();
    assert!(
        !store.exists() || std::fs::read_dir(&store).unwrap().next().is_none(),
        "no stage may have started training"
    );
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(status["error_kind"], "config");
}

/// Held-out records of every source, scored with the real trainer's masking for the base model
/// and after every stage: each per-record loss equals the trainer's own held-out loss
/// (`sft_train::eval_loss_at`) of that one record under the stage's settings, and training
/// changes them.
#[test]
fn every_stage_is_scored_per_source_with_the_trainers_masking() {
    tch::manual_seed(0);
    let (plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    settings.eval.gsm8k = 0;
    settings.eval.humaneval = 0;
    settings.data.general_heldout = None;
    settings.data.heldout = Some(sft_run::Heldout::PerSource(BTreeMap::from([
        ("math".to_string(), 2),
        ("code".to_string(), 2),
        ("general".to_string(), 3),
    ])));
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path(), "per-stage");
    let b = backend(None);
    let r = run_plan(&plan, &settings, &o, &b).unwrap();
    assert_eq!(b.heldout_model_loads(), 3, "the base model and both stages");
    let losses = sft_run::heldout::HeldoutLosses::read(&o.run_dir).unwrap();
    assert_eq!(losses.models.len(), 3);
    let counts: Vec<(String, usize)> = losses
        .ids
        .iter()
        .map(|(s, v)| (s.clone(), v.len()))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("code".into(), 2),
            ("general".into(), 3),
            ("math".into(), 2)
        ]
    );
    // The held-out records themselves, by id, from the source files (via the ids the runner drew).
    let resolved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.run_dir.join("plan.resolved.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        resolved["heldout_ids"],
        serde_json::to_value(&losses.ids).unwrap()
    );
    let records = fixture_records();
    let base_model = workspace().join("fixtures/run/tiny-bytes");
    for (i, m) in losses.models.iter().enumerate() {
        let (model, config) = match m.stage {
            None => (base_model.clone(), &plan.stages[0].config),
            Some(s) => (r.stages[s].store_dir.join("model"), &plan.stages[s].config),
        };
        assert_eq!(m.stage, if i == 0 { None } else { Some(i - 1) });
        for (source, ls) in &m.losses {
            assert_eq!(ls.len(), losses.ids[source].len(), "model {i} {source}");
            for l in ls {
                let one = tmp.path().join("one.jsonl");
                std::fs::write(
                    &one,
                    format!("{}\n", serde_json::to_string(&records[&l.id]).unwrap()),
                )
                .unwrap();
                let want = sft_train::eval_loss_at(
                    sft_train::ModelInput {
                        model: &model,
                        tokenizer: Some(&base_model),
                    },
                    &one,
                    config,
                    tch::Device::Cpu,
                )
                .unwrap();
                assert!(
                    (l.loss - want.mean).abs() < 1e-5 && l.tokens == want.target_tokens,
                    "model {i} {}: {} vs the trainer's {}",
                    l.id,
                    l.loss,
                    want.mean
                );
            }
        }
    }
    // Per-stage values in results.json, and training moved them.
    for source in ["math", "code", "general"] {
        let base = r.base_heldout_loss[source].value;
        let s0 = r.stages[0].heldout_loss[source].value;
        let s1 = r.stages[1].heldout_loss[source].value;
        assert!(base.is_finite() && s0.is_finite() && s1.is_finite());
        assert!(base != s0 && s0 != s1, "{source}: {base} {s0} {s1}");
        assert_eq!(
            r.metrics[&format!("heldout_loss.{source}")],
            r.stages[1].heldout_loss[source]
        );
    }
}

/// `[run.eval.hidden]` end to end: the base and final models' hidden states of the held-out
/// queries, analysed, in `results.json` and `hidden/`; the base model's vectors are exactly what
/// `sft_local::hidden::embed` gives for those records in the final stage's template; a rerun
/// analyses nothing; a layer the model does not have fails before anything trains.
#[test]
fn the_representation_analysis_compares_base_and_final_on_the_heldout_queries() {
    tch::manual_seed(0);
    let (plan, mut settings) =
        sft_run::load_plan_file(&workspace().join("fixtures/plans/two-stage-tiny.toml")).unwrap();
    settings.eval.gsm8k = 0;
    settings.eval.humaneval = 0;
    settings.data.general_heldout = None;
    settings.data.heldout = Some(sft_run::Heldout::All(6));
    let hidden = sft_run::HiddenSettings {
        layer: -1,
        perplexity: 4.0,
        iterations: 250,
        batch_size: 4,
        ..Default::default()
    };
    settings.eval.hidden = Some(hidden.clone());
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path(), "hidden");
    let r = run_plan(&plan, &settings, &o, &backend(None)).unwrap();
    for key in [
        "hidden.base.all.silhouette",
        "hidden.final.all.knn_purity",
        "hidden.final.all.probe_accuracy",
        "hidden.final-vs-base.all.silhouette",
        "hidden.final.code-math.silhouette",
        "hidden.base.general-math.knn_purity",
    ] {
        let m = r
            .metrics
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!(
            m.value.is_finite() && m.ci_low <= m.value && m.value <= m.ci_high,
            "{key}: {m:?}"
        );
        let n = if key.contains(".all.") { 18 } else { 12 };
        assert_eq!(
            m.n, n,
            "{key}: 6 held-out queries a source, 3 sources or a pair"
        );
    }
    let dir = o.run_dir.join("hidden");
    for f in [
        "embeddings.parquet",
        "tsne.csv",
        "tsne.png",
        "tsne.svg",
        "separation.json",
        "run.json",
        "metrics.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let emb = sft_analyze::read_embeddings(&dir.join("embeddings.parquet")).unwrap();
    assert_eq!(
        emb.iter().map(|e| e.model.as_str()).collect::<Vec<_>>(),
        ["base", "final"]
    );
    assert_eq!(emb[0].layer, 2, "-1 is the last of the 3 hidden states");
    // The queries are the held-out records, source by source.
    let ids = sft_run::heldout::HeldoutLosses::read(&o.run_dir)
        .unwrap()
        .ids;
    let want: Vec<String> = ids.values().flatten().cloned().collect();
    assert_eq!(emb[0].ids, want);
    assert_eq!(emb[1].ids, want);
    assert_ne!(
        emb[0].vectors, emb[1].vectors,
        "training changed the states"
    );

    // The base model's vectors: the held-out records embedded directly, in the final stage's
    // template (`model`, the tokenizer's own).
    let by_id = fixture_records();
    let records: Vec<sft_record::Record> =
        ids.values().flatten().map(|id| by_id[id].clone()).collect();
    let base = workspace().join("fixtures/run/tiny-bytes");
    let loaded = sft_llama::load_model(&base, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let tok = sft_chat::ChatTokenizer::from_path(&base).unwrap();
    let req = sft_local::hidden::HiddenRequest {
        label: "base".into(),
        layer: -1,
        pool: sft_analyze::Pool::Mean,
        view: sft_local::hidden::QueryView::Template("model".into()),
        batch_size: 4,
        max_tokens: 512,
        progress: false,
    };
    let (direct, _) = sft_local::hidden::embed(&loaded.model, &tok, &records, &req).unwrap();
    assert_eq!(direct.ids, emb[0].ids);
    assert_eq!(direct.vectors, emb[0].vectors);

    // A rerun reuses the analysis.
    let cached = mtime(&dir.join("metrics.json"));
    let again = run_plan(&plan, &settings, &o, &backend(None)).unwrap();
    assert_eq!(mtime(&dir.join("metrics.json")), cached);
    assert_eq!(again.metrics, r.metrics);

    // A layer the model does not have: a config error before the first stage trains.
    let mut bad = settings.clone();
    bad.eval.hidden = Some(sft_run::HiddenSettings { layer: 3, ..hidden });
    let o2 = RunOptions {
        stage_store: Some(tmp.path().join("empty-store")),
        ..opts(tmp.path(), "bad-layer")
    };
    let e = run_plan(&plan, &bad, &o2, &backend(None)).unwrap_err();
    assert_eq!(e.kind(), sft_run::ErrorKind::Config, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("layer 3") && msg.contains("tiny-bytes"),
        "{msg}"
    );
    assert!(
        !tmp.path().join("empty-store").exists()
            || std::fs::read_dir(tmp.path().join("empty-store"))
                .unwrap()
                .all(|e| e.unwrap().file_name() == "heldout"),
        "nothing trained"
    );
}
