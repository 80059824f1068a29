//! The memory-lean backward ([`sft_train::forward_backward`]): activation checkpointing and the
//! chunked loss give the plain one-piece `forward` + `backward`'s loss and gradients, with
//! padding and with packing (mask and positions), tied and untied heads; bf16 gradients are
//! summed in f32 across micro-batches; and a run with both settings trains like one without.

mod common;

use std::collections::BTreeMap;

use sft_train::batch::{collate, Collated, MicroBatch};
use sft_train::loss::token_losses;
use sft_train::optim::{AdamW, AdamWParams};
use sft_train::{forward_backward, CausalLm, Memory, RunOptions, StepMetrics, TrainConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const HP: AdamWParams = AdamWParams {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.0,
};

/// The tiny LLaMA fixture, or the same config with tied embeddings and random weights.
fn model(tied: bool) -> sft_llama::LoadedModel {
    let m = sft_train::llama::load_model(&common::tiny_llama_dir(), Device::Cpu).unwrap();
    if !tied {
        return m;
    }
    let mut cfg = m.model.config().clone();
    cfg.tie_word_embeddings = true;
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = sft_llama::Llama::new(&vs.root(), &cfg).unwrap();
    sft_llama::LoadedModel {
        vs,
        model,
        source: m.source,
    }
}

/// Padded rows of different lengths, or two packed rows of several conversations each.
fn batch(packed: bool) -> Collated {
    let exs = common::toy_examples(7);
    let rows = if packed {
        vec![vec![0, 1, 2], vec![3, 4, 5, 6]]
    } else {
        vec![vec![0], vec![3], vec![5]]
    };
    collate(&exs, &MicroBatch { rows }, packed, Device::Cpu).unwrap()
}

/// Every gradient by name, cloned, then zeroed.
fn take_grads(vs: &VarStore) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, mut v) in vs.variables() {
        let g = v.grad();
        assert!(g.defined(), "{name} got no gradient");
        out.insert(name, g.copy());
        v.zero_grad();
    }
    out
}

/// The reference: the one-piece forward, the full loss and autograd's backward.
fn plain(model: &dyn CausalLm, c: &Collated, scale: f64) -> Tensor {
    let logits = model
        .forward(&c.input_ids, c.position_ids.as_ref(), c.attn_mask.as_ref())
        .unwrap();
    let tl = token_losses(&logits, &c.labels).unwrap();
    tl.sum(Kind::Float).g_mul_scalar(scale).backward();
    tl.detach()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn checkpointing_and_chunked_loss_give_the_plain_gradients() {
    for tied in [false, true] {
        let m = model(tied);
        for packed in [false, true] {
            let c = batch(packed);
            let scale = 1.0 / c.target_tokens as f64;
            let want_losses = plain(&m.model, &c, scale);
            let want = take_grads(&m.vs);
            let t = c.input_ids.size()[1] as usize;
            for memory in [
                Memory {
                    checkpoint: false,
                    loss_chunk: 0,
                },
                Memory {
                    checkpoint: true,
                    loss_chunk: 0,
                },
                Memory {
                    checkpoint: false,
                    loss_chunk: 1,
                },
                Memory {
                    checkpoint: false,
                    loss_chunk: 7,
                },
                Memory {
                    checkpoint: true,
                    loss_chunk: 5,
                },
                Memory {
                    checkpoint: true,
                    loss_chunk: t + 3,
                },
            ] {
                let losses = forward_backward(&m.model, &c, scale, memory, false).unwrap();
                let got = take_grads(&m.vs);
                let what = format!("tied {tied}, packed {packed}, {memory:?}");
                assert_eq!(losses.size(), want_losses.size(), "{what}");
                let lr = max_rel(&losses, &want_losses);
                assert!(lr <= 1e-6, "{what}: token losses differ by {lr:e}");
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>()
                );
                for (name, g) in &got {
                    let r = max_rel(g, &want[name]);
                    assert!(r <= 1e-6, "{what}: gradient of {name} differs by {r:e}");
                }
            }
        }
    }
}

#[test]
fn a_poisoned_chunked_loss_gives_non_finite_gradients() {
    let m = model(false);
    let c = batch(false);
    let memory = Memory {
        checkpoint: true,
        loss_chunk: 4,
    };
    let _ = forward_backward(&m.model, &c, 1.0, memory, true).unwrap();
    let g = take_grads(&m.vs);
    assert!(g.values().all(|g| g.isnan().any().int64_value(&[]) == 1));
}

/// In bf16 the variables' own gradients are bf16; the optimizer sums each micro-batch's
/// gradient in f32, so the step's gradient is exactly the f32 sum of the bf16 micro-batch
/// gradients, not their bf16 running sum.
#[test]
fn bf16_gradients_are_accumulated_in_f32() {
    let mut m = model(false);
    let mut opt = AdamW::new(&m.vs, HP, true).unwrap();
    m.vs.set_kind(Kind::BFloat16);
    let exs = common::toy_examples(8);
    let micro: Vec<Collated> = (0..4)
        .map(|i| {
            collate(
                &exs,
                &MicroBatch {
                    rows: vec![vec![2 * i], vec![2 * i + 1]],
                },
                false,
                Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    // Each micro-batch's bf16 gradient alone, summed here in f64.
    let mut want: BTreeMap<String, Tensor> = BTreeMap::new();
    for c in &micro {
        let _ = forward_backward(&m.model, c, 0.01, Memory::default(), false).unwrap();
        for (name, g) in take_grads(&m.vs) {
            assert_eq!(g.kind(), Kind::BFloat16, "{name}");
            let g = g.to_kind(Kind::Double);
            let sum = match want.remove(&name) {
                Some(s) => s + g,
                None => g,
            };
            want.insert(name, sum);
        }
    }
    // The same micro-batches through the optimizer's accumulation.
    let mut bf16_sum: BTreeMap<String, Tensor> = BTreeMap::new();
    for c in &micro {
        let _ = forward_backward(&m.model, c, 0.01, Memory::default(), false).unwrap();
        for (name, v) in m.vs.variables() {
            let g = v.grad().copy();
            let sum = match bf16_sum.remove(&name) {
                Some(s) => s + g,
                None => g,
            };
            bf16_sum.insert(name, sum);
        }
        opt.absorb_grads().unwrap();
    }
    let got: BTreeMap<String, Tensor> = opt.gradients().into_iter().collect();
    assert_eq!(got.len(), want.len());
    let mut bf16_worse = 0;
    for (name, g) in &got {
        assert_eq!(g.kind(), Kind::Float, "{name}");
        // Four bf16 values summed in f32 are exact to f32's precision.
        let r = max_rel(&g.to_kind(Kind::Double), &want[name]);
        assert!(r <= 1e-6, "{name}: f32 accumulation off by {r:e}");
        if max_rel(&bf16_sum[name].to_kind(Kind::Double), &want[name]) > 1e-4 {
            bf16_worse += 1;
        }
    }
    // A bf16 running sum rounds after every add; it is visibly off for most tensors.
    assert!(
        bf16_worse * 2 > got.len(),
        "bf16 sums were off for only {bf16_worse} tensors"
    );
    // zero_grad clears the accumulators for the next step.
    opt.zero_grad();
    assert!(opt
        .gradients()
        .iter()
        .all(|(_, g)| g.abs().max().double_value(&[]) == 0.0));
}

fn metrics(out: &std::path::Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A whole run with checkpointing and a chunked loss (and packing) follows the plain run's
/// trajectory; and since both are operational settings, a run stopped with them off resumes
/// with them on.
#[test]
fn a_lean_run_trains_like_the_plain_one_and_resumes_across_settings() {
    let exs = common::toy_examples(12);
    let base = TrainConfig {
        epochs: 2,
        packing: true,
        ..common::small_cfg()
    };
    let lean = TrainConfig {
        activation_checkpointing: true,
        loss_chunk: 9,
        ..base.clone()
    };
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    common::run_tiny(&exs, &base, a.path(), &RunOptions::default()).unwrap();
    common::run_tiny(&exs, &lean, b.path(), &RunOptions::default()).unwrap();
    common::run_tiny(
        &exs,
        &base,
        c.path(),
        &RunOptions {
            stop_after: Some(2),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let resumed = common::run_tiny(&exs, &lean, c.path(), &RunOptions::default()).unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    let (ma, mb, mc) = (metrics(a.path()), metrics(b.path()), metrics(c.path()));
    assert!(ma.len() >= 4);
    for other in [&mb, &mc] {
        assert_eq!(other.len(), ma.len());
        for (x, y) in ma.iter().zip(other.iter()) {
            let close = |p: f64, q: f64| (p - q).abs() <= 1e-5 * q.abs().max(1e-9);
            assert!(
                close(y.loss, x.loss),
                "step {}: {} vs {}",
                x.step,
                y.loss,
                x.loss
            );
            assert!(close(y.grad_norm, x.grad_norm), "step {}", x.step);
        }
    }
}

/// A job whose memory estimate exceeds the machine is refused before anything is loaded, with
/// the `oom` kind and the estimate's table; the override lets it start.
#[test]
fn a_job_predicted_not_to_fit_is_refused_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::workspace().join("fixtures/run/tiny-bytes");
    let records: Vec<sft_record::Record> = (0..4)
        .map(|i| sft_record::Record {
            id: format!("r{i}"),
            source: "math".into(),
            messages: vec![
                sft_record::Message::new(sft_record::Role::User, format!("q{i} plus 1")),
                sft_record::Message::new(sft_record::Role::Assistant, format!("{}", i + 1)),
            ],
            tags: vec![],
            metadata: Default::default(),
        })
        .collect();
    // 2^40 tokens per micro-batch: petabytes of activations on paper.
    let cfg = TrainConfig {
        template: "model".into(),
        epochs: 1,
        micro_batch_size: 1 << 10,
        grad_accum: 1,
        max_len: 1 << 30,
        ..TrainConfig::default()
    };
    let mut job = sft_train::TrainJob::new(
        &model,
        sft_train::TrainData::Records(records),
        cfg,
        tmp.path().join("out"),
        Device::Cpu,
    );
    let est = sft_train::memory_estimate(&job).unwrap();
    assert!(est.peak > 1 << 50, "{}", est.table());
    let err = sft_train::train(&job).unwrap_err();
    assert_eq!(err.kind(), sft_train::ErrorKind::Oom, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("activation_checkpointing") && msg.contains("activations"),
        "{msg}"
    );
    assert!(
        !tmp.path().join("out").exists(),
        "nothing may be written before the check"
    );
    job.run.ignore_memory_estimate = true;
    let o = sft_train::train(&job).unwrap();
    assert_eq!(o.examples, 4);
}

/// libtorch's fused multi-tensor AdamW (`at::_fused_adamw_` through the shim; on CUDA by
/// default, forced here on its CPU kernel) takes the same steps as our tensor-op AdamW: three
/// steps with weight decay (decayed and undecayed parameters), f32 and with bf16 variables (f32
/// masters), weights and moments within 1e-6 relative.
#[test]
fn fused_adamw_takes_the_same_steps_as_the_tensor_op_adamw() {
    let hp = AdamWParams {
        weight_decay: 0.1,
        ..HP
    };
    for bf16 in [false, true] {
        let run = |fused: bool| -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
            let mut m = model(false);
            let mut opt = AdamW::new(&m.vs, hp, bf16).unwrap();
            if bf16 {
                m.vs.set_kind(Kind::BFloat16);
            }
            opt.set_fused(fused);
            let c = batch(false);
            for step in 0..3 {
                let _ = forward_backward(
                    &m.model,
                    &c,
                    1.0 / c.target_tokens as f64,
                    Memory::default(),
                    false,
                )
                .unwrap();
                opt.absorb_grads().unwrap();
                opt.step(1e-2 * (step + 1) as f64, None).unwrap();
                opt.zero_grad();
            }
            let w = opt
                .weights()
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect();
            let s = opt
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect();
            (w, s)
        };
        let (w0, s0) = run(false);
        let (w1, s1) = run(true);
        for (a, b, what) in [(&w1, &w0, "weight"), (&s1, &s0, "state")] {
            assert_eq!(a.len(), b.len());
            for (name, t) in a {
                let r = max_rel(t, &b[name]);
                assert!(r <= 1e-6, "bf16 {bf16}: {what} {name} differs by {r:e}");
            }
        }
        // The update did something.
        let (w_init, _) = {
            let m = model(false);
            let opt = AdamW::new(&m.vs, hp, true).unwrap();
            (
                opt.weights()
                    .into_iter()
                    .map(|(n, t)| (n, t.copy()))
                    .collect::<BTreeMap<_, _>>(),
                (),
            )
        };
        assert!(w1.iter().any(|(n, t)| max_rel(t, &w_init[n]) > 1e-3));
    }
}
