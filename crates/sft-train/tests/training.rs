//! End-to-end behaviour on the tiny LLaMA with a toy encoder: overfitting, accumulation
//! invariance, packing isolation, resume (also after a kill during a save), NaN policies,
//! graceful stop and batch dumps.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sft_train::batch::MicroBatch;
use sft_train::{
    per_example_losses, train_model, Dtype, Error, Example, NanPolicy, Resume, RunOptions,
    Schedule, StepMetrics, TrainConfig, TrainOutcome,
};
use tch::{Device, Kind};

fn examples(n: usize) -> Vec<Example> {
    common::toy_examples(n)
}

fn cfg() -> TrainConfig {
    common::small_cfg()
}

fn run(
    exs: &[Example],
    cfg: &TrainConfig,
    out: &Path,
    opts: &RunOptions,
) -> sft_train::Result<TrainOutcome> {
    common::run_tiny(exs, cfg, out, opts)
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss, grad_norm, lr) with exact f64 values.
fn trajectory(out: &Path) -> Vec<(u64, u64, u64, u64)> {
    metrics(out)
        .iter()
        .map(|m| {
            (
                m.step,
                m.loss.to_bits(),
                m.grad_norm.to_bits(),
                m.lr.to_bits(),
            )
        })
        .collect()
}

#[test]
fn loss_falls_on_a_small_overfit_set() {
    let exs = examples(8);
    let c = TrainConfig {
        lr: 1e-2,
        epochs: 25,
        micro_batch_size: 4,
        grad_accum: 1,
        schedule: Schedule::Constant,
        warmup_ratio: 0.0,
        ..cfg()
    };
    let out = tempfile::tempdir().unwrap();
    let o = run(&exs, &c, out.path(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 50);
    let m = metrics(out.path());
    let first = m[0].loss;
    let last = m[m.len() - 2..].iter().map(|x| x.loss).sum::<f64>() / 2.0;
    assert!(last < 0.3 * first, "loss {first} -> {last}");
    assert!(m[0].per_source_loss.contains_key("math") || m[0].per_source_loss.contains_key("code"));
    assert!(m
        .iter()
        .all(|x| x.tokens > 0 && x.target_tokens > 0 && x.lr == 1e-2));
}

#[test]
fn gradient_accumulation_does_not_change_the_step() {
    let exs = examples(8);
    let base = TrainConfig {
        group_by_length: false,
        epochs: 1,
        ..cfg()
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    run(
        &exs,
        &TrainConfig {
            micro_batch_size: 4,
            grad_accum: 1,
            ..base.clone()
        },
        a.path(),
        &RunOptions::default(),
    )
    .unwrap();
    run(
        &exs,
        &TrainConfig {
            micro_batch_size: 1,
            grad_accum: 4,
            ..base
        },
        b.path(),
        &RunOptions::default(),
    )
    .unwrap();
    let (ma, mb) = (metrics(a.path()), metrics(b.path()));
    assert_eq!(ma.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        assert!((x.loss - y.loss).abs() < 1e-5, "{} vs {}", x.loss, y.loss);
        assert!(
            (x.grad_norm - y.grad_norm).abs() < 1e-5,
            "{} vs {}",
            x.grad_norm,
            y.grad_norm
        );
        assert_eq!(x.target_tokens, y.target_tokens);
    }
}

#[test]
fn packed_rows_give_the_same_per_sample_losses_as_unpacked() {
    let exs = examples(6);
    let m = sft_train::llama::load_model(&common::tiny_llama_dir(), Device::Cpu).unwrap();
    let packed = MicroBatch {
        rows: vec![vec![0, 1, 2], vec![3, 4], vec![5]],
    };
    let unpacked = MicroBatch {
        rows: (0..6).map(|i| vec![i]).collect(),
    };
    let p: BTreeMap<usize, f64> = per_example_losses(&m.model, &exs, &packed, true, Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let u: BTreeMap<usize, f64> = per_example_losses(&m.model, &exs, &unpacked, false, Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(p.len(), 6);
    for (i, lu) in &u {
        assert!(
            (p[i] - lu).abs() < 1e-5,
            "example {i}: packed {} vs unpacked {lu}",
            p[i]
        );
    }
    // Without the block-diagonal mask the later samples of a row would see their neighbours.
    let leaky = {
        let c = sft_train::batch::collate(&exs, &packed, true, Device::Cpu).unwrap();
        let logits =
            sft_train::CausalLm::forward(&m.model, &c.input_ids, c.position_ids.as_ref(), None)
                .unwrap();
        sft_train::loss::token_losses(&logits, &c.labels)
            .unwrap()
            .sum(tch::Kind::Double)
            .double_value(&[])
    };
    let honest: f64 = {
        let c = sft_train::batch::collate(&exs, &packed, true, Device::Cpu).unwrap();
        let logits = sft_train::CausalLm::forward(
            &m.model,
            &c.input_ids,
            c.position_ids.as_ref(),
            c.attn_mask.as_ref(),
        )
        .unwrap();
        sft_train::loss::token_losses(&logits, &c.labels)
            .unwrap()
            .sum(tch::Kind::Double)
            .double_value(&[])
    };
    assert!(
        (leaky - honest).abs() > 1e-4,
        "the mask test has no power: {leaky} vs {honest}"
    );
}

#[test]
fn packed_training_runs_and_learns() {
    let exs = examples(12);
    let c = TrainConfig {
        packing: true,
        lr: 1e-2,
        epochs: 6,
        micro_batch_size: 2,
        grad_accum: 1,
        ..cfg()
    };
    let out = tempfile::tempdir().unwrap();
    let o = run(&exs, &c, out.path(), &RunOptions::default()).unwrap();
    let m = metrics(out.path());
    assert_eq!(m.len() as u64, o.steps);
    assert!(m.last().unwrap().loss < m[0].loss);
}

fn final_weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("final/model.safetensors")).unwrap()
}

#[test]
fn resume_is_bit_identical_on_cpu() {
    let exs = examples(10);
    // 10 examples, global batch 4 -> 3 steps per epoch; 3 epochs = 9 steps.
    let c = TrainConfig {
        epochs: 3,
        save_every: 2,
        ..cfg()
    };
    let full = tempfile::tempdir().unwrap();
    let o = run(&exs, &c, full.path(), &RunOptions::default()).unwrap();
    assert_eq!(o.steps, 9);
    // Stop after 4 (mid-epoch 1) and after 6 (an epoch boundary), resuming each time.
    let part = tempfile::tempdir().unwrap();
    let stop = run(
        &exs,
        &c,
        part.path(),
        &RunOptions {
            stop_after: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(stop.interrupted && stop.final_dir.is_none() && stop.steps == 4);
    let stop = run(
        &exs,
        &c,
        part.path(),
        &RunOptions {
            stop_after: Some(6),
            resume: Resume::Require,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(stop.resumed_from, Some(4));
    let done = run(
        &exs,
        &c,
        part.path(),
        &RunOptions {
            resume: Resume::Require,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(done.resumed_from, Some(6));
    assert_eq!(trajectory(full.path()), trajectory(part.path()));
    assert_eq!(final_weights(full.path()), final_weights(part.path()));
    // keep_last = 2.
    let n = std::fs::read_dir(part.path().join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(n, 2);
    // Resuming with a different batch size is refused, naming the field.
    let err = run(
        &exs,
        &TrainConfig {
            grad_accum: 1,
            ..c.clone()
        },
        part.path(),
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("grad_accum"), "{err}");
    // --resume with no checkpoint is an error, not a fresh start.
    let empty = tempfile::tempdir().unwrap();
    let err = run(
        &exs,
        &c,
        empty.path(),
        &RunOptions {
            resume: Resume::Require,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
}

#[test]
fn kill_during_save_then_resume() {
    use std::os::unix::process::ExitStatusExt;
    let (exs, c) = common::crash_run();
    let full = tempfile::tempdir().unwrap();
    run(&exs, &c, full.path(), &RunOptions::default()).unwrap();
    // The child binary (tests/bin/crash_child.rs) trains the same run with the hook armed; it
    // exists only with the crash-injection feature, which the dev-dependency enables.
    let exe = Path::new(env!("CARGO_BIN_EXE_sft-train-crash-child"));
    assert!(
        sft_train::checkpoint::CRASH_INJECTION,
        "sft-train's tests must be built with the crash-injection feature"
    );
    // Events 1..10 write train_config.json and data_report.json; each checkpoint save is 19
    // file events (create-dir, 3 per file x 5 files, 2 fsync-dir, rename). Cover every event of
    // the first save and a spread over later ones.
    let points: Vec<u64> = (11..=29).chain([30, 48]).collect();
    for k in points {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(exe)
            .arg(dir.path())
            .env("SFT_TRAIN_CRASH_AT", k.to_string())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(
            child.status.signal(),
            Some(6),
            "crash point {k}: the child was not aborted by the hook ({}); stderr:\n{stderr}",
            child.status
        );
        assert!(
            stderr.contains(&format!("SFT_TRAIN_CRASH_AT={k}: aborting at")),
            "crash point {k}: {stderr}"
        );
        let o = run(&exs, &c, dir.path(), &RunOptions::default())
            .unwrap_or_else(|e| panic!("crash point {k}: resume failed: {e}"));
        assert!(!o.interrupted);
        assert_eq!(
            trajectory(full.path()),
            trajectory(dir.path()),
            "crash point {k}: loss sequence differs"
        );
        assert_eq!(
            final_weights(full.path()),
            final_weights(dir.path()),
            "crash point {k}: final weights differ"
        );
    }
}

/// bf16 mixed precision, the path CUDA uses, run on the CPU: the model's variables are bf16
/// (forward and backward in bf16), the optimizer keeps f32 master weights and f32 moments, and
/// checkpoints store the f32 master. The loss falls, and it tracks the f32 run of the same
/// config within tolerances derived from bf16's precision (see the constants).
#[test]
fn bf16_mixed_precision_learns_and_tracks_f32() {
    // bf16 keeps 8 significant bits: unit roundoff u = 2^-8 ≈ 0.0039 per rounding.
    const U: f64 = 1.0 / 256.0;
    // Step 1 sees identical starting weights and batch, so the only difference is rounding:
    // the weights once (u/2 relative), then every matmul/norm/activation output of the 2-layer
    // forward (about a dozen roundings on the path to the logits, partly cancelling over the
    // batch's ~100 target tokens). 4u ≈ 1.6% relative bounds that with margin (measured on
    // this machine: 0.1u; the test prints every step).
    const FIRST_STEP_REL: f64 = 4.0 * U;
    // Later steps add the divergence of two training trajectories whose gradients differ by
    // O(u) relative; Adam normalises the update per coordinate, so a relative gradient error
    // of a few u moves each update by about as much. Averaged over the 16 steps the curves
    // stay within a few u (measured 2.4u; bound 6u); a single step can spike where the
    // trajectory is sensitive (measured worst 9.9u, at step 6 where the f32 loss stalls;
    // bound 24u ≈ 9.4%). A systematic error (updates lost to bf16 rounding, a wrong
    // gradient) drifts the mean, which is what the mean bound is for.
    const MEAN_REL: f64 = 6.0 * U;
    const EVERY_STEP_REL: f64 = 24.0 * U;
    let exs = examples(8);
    // 8 examples, global batch 4: 2 steps per epoch, 16 steps.
    let c = TrainConfig {
        lr: 1e-2,
        epochs: 8,
        micro_batch_size: 4,
        grad_accum: 1,
        schedule: Schedule::Constant,
        warmup_ratio: 0.0,
        ..cfg()
    };
    let f32_out = tempfile::tempdir().unwrap();
    run(&exs, &c, f32_out.path(), &RunOptions::default()).unwrap();

    let bf = TrainConfig {
        dtype: Dtype::Bf16,
        ..c.clone()
    };
    let out = tempfile::tempdir().unwrap();
    let mut m = sft_train::llama::load_model(&common::tiny_llama_dir(), Device::Cpu).unwrap();
    let o = train_model(
        &sft_train::TrainContext {
            model: &m.model,
            examples: &exs,
            data_report: &sft_train::DataReport::default(),
            encoder: &common::ToyEncoder,
            config: &bf,
            out_dir: out.path(),
            run: &RunOptions::default(),
            group: None,
        },
        &mut m.vs,
    )
    .unwrap();
    assert_eq!(o.steps, 16);
    // The forward and backward ran on bf16 variables.
    let vars = m.vs.variables();
    assert!(!vars.is_empty());
    for (name, t) in &vars {
        assert_eq!(t.kind(), Kind::BFloat16, "{name} trained in {:?}", t.kind());
    }
    // The checkpoint holds f32 master weights and f32 moments; final/ the f32 master.
    let ckpt = out.path().join("checkpoints/step-000000016");
    let moments =
        sft_train::checkpoint::read_safetensors(&ckpt.join("optimizer.safetensors")).unwrap();
    assert_eq!(moments.len(), 2 * vars.len());
    for (name, t) in &moments {
        assert_eq!(t.kind(), Kind::Float, "optimizer state {name}");
    }
    let master =
        sft_train::checkpoint::read_safetensors(&out.path().join("final/model.safetensors"))
            .unwrap();
    assert_eq!(master.len(), vars.len());
    let mut off_grid = 0usize;
    for (name, w) in &master {
        assert_eq!(w.kind(), Kind::Float, "final weight {name}");
        // A bf16 master could only hold bf16 values; the f32 master accumulates updates
        // smaller than a bf16 ulp, so (almost) every tensor has values off the bf16 grid.
        let rounded = w.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        if (w - rounded).abs().max().double_value(&[]) > 0.0 {
            off_grid += 1;
        }
        // The live bf16 variable is the master rounded.
        let var = &vars[name];
        assert!(
            var.to_kind(Kind::Float)
                .equal(&w.to_kind(Kind::BFloat16).to_kind(Kind::Float)),
            "{name}: the bf16 variable is not the rounded f32 master"
        );
    }
    assert_eq!(
        off_grid,
        master.len(),
        "every master tensor keeps f32 precision"
    );

    let a = metrics(f32_out.path());
    let b = metrics(out.path());
    assert_eq!(a.len(), b.len());
    let rel: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (y.loss - x.loss).abs() / x.loss)
        .collect();
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        eprintln!(
            "step {:2}: f32 {:.5}  bf16 {:.5}  rel {:.2e} ({:.1}u)",
            i + 1,
            x.loss,
            y.loss,
            rel[i],
            rel[i] / U
        );
    }
    eprintln!(
        "bf16 vs f32 loss: step 1 {:.5} vs {:.5} (rel {:.2e}), last {:.5} vs {:.5}; worst rel {:.2e}, mean rel {:.2e}",
        b[0].loss,
        a[0].loss,
        rel[0],
        b[b.len() - 1].loss,
        a[a.len() - 1].loss,
        worst,
        rel.iter().sum::<f64>() / rel.len() as f64
    );
    assert!(
        rel[0] <= FIRST_STEP_REL,
        "step 1: bf16 loss {} vs f32 {} (rel {} > {FIRST_STEP_REL})",
        b[0].loss,
        a[0].loss,
        rel[0]
    );
    let mean = rel.iter().sum::<f64>() / rel.len() as f64;
    assert!(
        mean <= MEAN_REL,
        "mean relative gap {mean} ({:.1}u) > {MEAN_REL}",
        mean / U
    );
    for (i, r) in rel.iter().enumerate() {
        assert!(
            *r <= EVERY_STEP_REL,
            "step {}: bf16 loss {} vs f32 {} (rel {r} > {EVERY_STEP_REL})",
            i + 1,
            b[i].loss,
            a[i].loss
        );
    }
    // It learns: the last two steps' mean loss is under half the first step's.
    let last = (b[b.len() - 1].loss + b[b.len() - 2].loss) / 2.0;
    assert!(last < 0.5 * b[0].loss, "bf16 loss {} -> {last}", b[0].loss);
    assert!(b
        .iter()
        .all(|x| x.loss.is_finite() && x.grad_norm.is_finite()));
}

#[test]
fn nan_loss_aborts_before_the_update_or_is_skipped() {
    let exs = examples(10);
    let c = TrainConfig { epochs: 1, ..cfg() };
    let out = tempfile::tempdir().unwrap();
    let err = run(
        &exs,
        &c,
        out.path(),
        &RunOptions {
            inject_nan_at: Some(2),
            ..Default::default()
        },
    )
    .unwrap_err();
    match &err {
        Error::NonFinite {
            what,
            step,
            record_ids,
        } => {
            assert_eq!((*what, *step), ("loss", 2));
            assert_eq!(record_ids.split(',').count(), 4, "{record_ids}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    let skip = TrainConfig {
        nan_policy: NanPolicy::Skip,
        ..c
    };
    let out = tempfile::tempdir().unwrap();
    let o = run(
        &exs,
        &skip,
        out.path(),
        &RunOptions {
            inject_nan_at: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(o.skipped_steps, 1);
    let m = metrics(out.path());
    assert!(m[1].skipped && !m[0].skipped && !m[2].skipped);
    assert!(m[1].loss.is_nan() && m[0].loss.is_finite());
    assert!(o.last_loss.unwrap().is_finite());
}

#[test]
fn stop_flag_checkpoints_and_returns_cleanly() {
    let exs = examples(10);
    let out = tempfile::tempdir().unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let o = run(
        &exs,
        &cfg(),
        out.path(),
        &RunOptions {
            stop: Some(flag),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(o.interrupted);
    assert!(out
        .path()
        .join("checkpoints/step-000000000/manifest.json")
        .exists());
}

#[test]
fn dump_batches_show_the_masking() {
    let exs = examples(6);
    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("dump");
    let c = TrainConfig {
        epochs: 1,
        dump_batches: 1,
        ..cfg()
    };
    run(
        &exs,
        &c,
        out.path(),
        &RunOptions {
            dump_batches: Some(dump.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let js: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dump.join("step-0001.json")).unwrap()).unwrap();
    let row = &js["micro_batches"][0][0];
    let ids = row["input_ids"].as_array().unwrap();
    let labels = row["labels"].as_array().unwrap();
    assert_eq!(ids.len(), labels.len());
    assert!(labels.iter().any(|l| l.as_i64() == Some(-100)));
    assert!(labels
        .iter()
        .zip(ids)
        .all(|(l, i)| l.as_i64() == Some(-100) || l == i));
    let txt = std::fs::read_to_string(dump.join("step-0001.txt")).unwrap();
    assert!(txt.contains("<eot>\u{27e7}"), "{txt}");
    assert!(!std::path::Path::new(&dump.join("step-0002.json")).exists());
}

/// `carry_optimizer_from`: stage B continuing from stage A's moments and step count is the same
/// as one run over both stages' steps (one global batch per epoch, constant LR, no warm-up, so
/// the only thing that differs between "A then B" and "2 epochs" is the optimizer state).
/// Restarting the optimizer instead gives different weights.
#[test]
fn carried_optimizer_state_continues_the_run() {
    let exs = examples(4);
    let one_batch = TrainConfig {
        epochs: 1,
        micro_batch_size: 4,
        grad_accum: 1,
        warmup_ratio: 0.0,
        schedule: Schedule::Constant,
        ..cfg()
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    run(&exs, &one_batch, &a, &RunOptions::default()).unwrap();

    // B starts from A's weights (as a stage does) and carries A's optimizer.
    let weights_a = a.join("final");
    let carry = |out: &Path, from: Option<&Path>| {
        let mut m = sft_train::llama::load_model(&weights_a, Device::Cpu).unwrap();
        let opts = RunOptions {
            carry_optimizer_from: from.map(Path::to_path_buf),
            ..RunOptions::default()
        };
        train_model(
            &sft_train::TrainContext {
                model: &m.model,
                examples: &exs,
                data_report: &sft_train::DataReport::default(),
                encoder: &common::ToyEncoder,
                config: &one_batch,
                out_dir: out,
                run: &opts,
                group: None,
            },
            &mut m.vs,
        )
    };
    let b = tmp.path().join("b");
    carry(&b, Some(&a)).unwrap();
    let b_restart = tmp.path().join("b-restart");
    carry(&b_restart, None).unwrap();

    let both = tmp.path().join("both");
    run(
        &exs,
        &TrainConfig {
            epochs: 2,
            ..one_batch.clone()
        },
        &both,
        &RunOptions::default(),
    )
    .unwrap();

    let read = |dir: &Path| {
        sft_train::checkpoint::read_safetensors(&dir.join("final/model.safetensors")).unwrap()
    };
    let max_diff = |x: &[(String, tch::Tensor)], y: &[(String, tch::Tensor)]| {
        assert_eq!(x.len(), y.len());
        x.iter()
            .zip(y)
            .map(|((n1, t1), (n2, t2))| {
                assert_eq!(n1, n2);
                (t1 - t2).abs().max().double_value(&[])
            })
            .fold(0.0f64, f64::max)
    };
    let (wb, wr, w2) = (read(&b), read(&b_restart), read(&both));
    let carried = max_diff(&wb, &w2);
    let restarted = max_diff(&wr, &w2);
    assert!(
        carried < 1e-6,
        "carried run differs from the 2-epoch run by {carried}"
    );
    assert!(
        restarted > 100.0 * carried.max(1e-9),
        "restarting the optimizer should change the update (diff {restarted} vs {carried})"
    );
    // The carried moments came from A's final checkpoint: a missing one is an error.
    let err = carry(&tmp.path().join("c"), Some(&tmp.path().join("nowhere")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("carry"), "{err}");
}

/// `sft_train::train`, what the `train` CLI calls: a chat Parquet mixture in, a self-contained
/// `final/` out (weights, config, tokenizer files with the chat template), which loads as a
/// model and a tokenizer on its own and starts a next stage with no `--tokenizer`.
#[test]
fn train_reads_parquet_and_writes_a_self_contained_final_dir() {
    use sft_compose::{Message, Record, Role};
    let tmp = tempfile::tempdir().unwrap();
    let model = common::workspace().join("fixtures/run/tiny-bytes");
    let records: Vec<Record> = common::toy_records(8)
        .into_iter()
        .map(|r| Record {
            id: r.id,
            source: r.source,
            messages: r
                .messages
                .into_iter()
                .map(|t| {
                    let role = match t.role.as_str() {
                        "system" => Role::System,
                        "user" => Role::User,
                        _ => Role::Assistant,
                    };
                    Message::new(role, t.content)
                })
                .collect(),
            tags: vec![],
            metadata: Default::default(),
        })
        .collect();
    let data = tmp.path().join("mix.parquet");
    sft_compose::write_parquet(&data, &records).unwrap();
    let cfg = TrainConfig {
        template: "model".into(),
        epochs: 1,
        micro_batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        ..TrainConfig::default()
    };
    let out = tmp.path().join("stage1");
    let job = sft_train::TrainJob::new(
        &model,
        sft_train::TrainData::Path(data.clone()),
        cfg.clone(),
        &out,
        Device::Cpu,
    );
    let o = sft_train::train(&job).unwrap();
    assert_eq!(o.steps, 2);
    let fin = o.final_dir.unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer_source.json",
    ] {
        assert!(fin.join(f).exists(), "final/{f} missing");
    }
    // The saved tokenizer is the training tokenizer, chat template included.
    let a = sft_chat::ChatTokenizer::from_path(&model).unwrap();
    let b = sft_chat::ChatTokenizer::from_path(&fin).unwrap();
    let text = "<|im_start|>user\nq3 plus 4<|im_end|>";
    assert_eq!(a.encode(text, true).unwrap(), b.encode(text, true).unwrap());
    assert_eq!(a.chat_template(), b.chat_template());
    assert!(sft_llama::load_model(&fin, Device::Cpu, tch::Kind::Float).is_ok());

    // A second stage starts from final/ alone.
    // A second stage starts from final/ alone (its tokenizer found from final/), here with the
    // records in memory.
    let next = sft_train::TrainJob::new(
        &fin,
        sft_train::TrainData::Records(records),
        cfg,
        tmp.path().join("stage2"),
        Device::Cpu,
    );
    let o2 = sft_train::train(&next).unwrap();
    assert!(o2.final_dir.is_some());
    assert_eq!(o2.examples, o.examples);
}

/// Pins what training computes to [`sft_train::TRAINING_SEMANTICS_VERSION`]: the per-step losses
/// and pre-clip gradient norms of a 6-step run on the tiny LLaMA (relative 1e-5: far below any
/// change of semantics, above the last-bit differences between CPU instruction sets). If this
/// fails after a change, the change altered training's numbers. If that is intended, bump
/// `TRAINING_SEMANTICS_VERSION` (so `sft-run` retrains stored stages instead of reusing them)
/// and set the pin to the new version and the printed values.
#[test]
fn training_semantics_version_pins_the_numbers() {
    // Version 2 (bf16 gradients summed in f32 across micro-batches) left these f32 numbers
    // bit for bit as version 1 had them. Version 3 (libtorch's fused AdamW on the CPU too)
    // moved them by at most 2e-8 relative.
    const PIN: (u32, [(f64, f64); 6]) = (
        3,
        [
            (4.55955456324986, 4.751894950866699),
            (4.700707244873047, 5.829164981842041),
            (3.914665770530701, 3.9276773929595947),
            (3.6001109668186735, 3.1063640117645264),
            (3.3031834721565247, 3.642733335494995),
            (3.232499289512634, 3.238271951675415),
        ],
    );
    let exs = examples(12);
    let c = TrainConfig { epochs: 2, ..cfg() };
    let out = tempfile::tempdir().unwrap();
    run(&exs, &c, out.path(), &RunOptions::default()).unwrap();
    let got: Vec<(f64, f64)> = metrics(out.path())
        .iter()
        .map(|m| (m.loss, m.grad_norm))
        .collect();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-12);
    let same = got.len() == PIN.1.len()
        && got
            .iter()
            .zip(&PIN.1)
            .all(|(g, w)| close(g.0, w.0) && close(g.1, w.1));
    assert!(
        same && PIN.0 == sft_train::TRAINING_SEMANTICS_VERSION,
        "training numbers changed (pinned for TRAINING_SEMANTICS_VERSION {}, which is now {}). \
         If intended, bump sft_train::TRAINING_SEMANTICS_VERSION and set the pin to (version, {got:?})",
        PIN.0,
        sft_train::TRAINING_SEMANTICS_VERSION
    );
}
