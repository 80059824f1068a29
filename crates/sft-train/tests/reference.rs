//! One step and three AdamW steps against transformers + torch.optim.AdamW
//! (`fixtures/train/make_reference.py`).

mod common;

use std::collections::BTreeMap;

use sft_train::batch::{collate, MicroBatch};
use sft_train::loss::token_losses;
use sft_train::optim::{AdamW, AdamWParams};
use sft_train::{
    train_model, CausalLm, DataReport, Example, RunOptions, Schedule, StepMetrics, TrainConfig,
};
use tch::{Device, Kind};

fn reference() -> (serde_json::Value, Vec<Example>) {
    let path = common::workspace().join("fixtures/train/reference.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let exs = v["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            record_id: e["record_id"].as_str().unwrap().into(),
            source: e["source"].as_str().unwrap().into(),
            input_ids: e["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect(),
            labels: e["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect(),
        })
        .collect();
    (v, exs)
}

#[test]
fn one_step_loss_and_grad_norm_match_transformers() {
    let (r, exs) = reference();
    let m = sft_train::llama::load_model(&common::tiny_llama_dir(), Device::Cpu).unwrap();
    let c = collate(
        &exs,
        &MicroBatch {
            rows: vec![vec![0], vec![1]],
        },
        false,
        Device::Cpu,
    )
    .unwrap();
    let logits = CausalLm::forward(&m.model, &c.input_ids, None, None).unwrap();
    let tl = token_losses(&logits, &c.labels).unwrap();
    let loss = tl.sum(Kind::Float) / c.target_tokens as f64;
    loss.backward();
    let hp = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let opt = AdamW::new(&m.vs, hp, false).unwrap();
    let norm = opt.grad_norm(None).unwrap();
    let want_loss = r["one_step"]["loss"].as_f64().unwrap();
    let want_norm = r["one_step"]["grad_norm"].as_f64().unwrap();
    let got = loss.double_value(&[]);
    assert!(
        (got - want_loss).abs() < 1e-4,
        "loss {got} vs transformers {want_loss}"
    );
    assert!(
        (norm - want_norm).abs() < 1e-4,
        "grad norm {norm} vs torch {want_norm}"
    );
}

#[test]
fn three_adamw_steps_match_torch_optim_adamw() {
    let (r, exs) = reference();
    let mut m = sft_train::llama::load_model(&common::tiny_llama_dir(), Device::Cpu).unwrap();
    let cfg = TrainConfig {
        lr: 1e-2,
        epochs: 3,
        micro_batch_size: 2,
        grad_accum: 1,
        warmup_ratio: 0.0,
        schedule: Schedule::Constant,
        weight_decay: 0.1,
        max_grad_norm: 1.0,
        max_len: 64,
        group_by_length: false,
        ..TrainConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let o = train_model(
        &sft_train::TrainContext {
            model: &m.model,
            examples: &exs,
            data_report: &DataReport::default(),
            encoder: &common::ToyEncoder,
            config: &cfg,
            out_dir: out.path(),
            run: &RunOptions::default(),
            group: None,
        },
        &mut m.vs,
    )
    .unwrap();
    assert_eq!(o.steps, 3);
    let lines: Vec<StepMetrics> = std::fs::read_to_string(out.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want_l = r["adamw"]["losses"].as_array().unwrap();
    let want_n = r["adamw"]["grad_norms"].as_array().unwrap();
    for (i, m) in lines.iter().enumerate() {
        let (wl, wn) = (want_l[i].as_f64().unwrap(), want_n[i].as_f64().unwrap());
        assert!(
            (m.loss - wl).abs() < 1e-4,
            "step {}: loss {} vs torch {wl}",
            i + 1,
            m.loss
        );
        assert!(
            (m.grad_norm - wn).abs() < 1e-4,
            "step {}: grad norm {} vs torch {wn}",
            i + 1,
            m.grad_norm
        );
    }
    let ours: BTreeMap<String, tch::Tensor> =
        sft_train::checkpoint::read_safetensors(&out.path().join("final/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let theirs = sft_train::checkpoint::read_safetensors(
        &common::workspace().join("fixtures/train/after_3_steps.safetensors"),
    )
    .unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (name, t) in theirs {
        let o = ours.get(&name).unwrap_or_else(|| panic!("missing {name}"));
        let diff = (o - &t).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: max |diff| {diff}");
    }
    // The final directory loads back as an HF model.
    let back = sft_train::llama::load_model(&out.path().join("final"), Device::Cpu).unwrap();
    assert_eq!(back.vs.variables().len(), m.vs.variables().len());
}
