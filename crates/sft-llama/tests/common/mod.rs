//! Shared helpers for sft-llama's integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use sft_llama::{Llama, LlamaConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// `<workspace>/fixtures/models`.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

/// A tiny fixture checkpoint loaded on the CPU in `kind`.
pub fn tiny(name: &str, kind: Kind) -> (VarStore, Llama, PathBuf) {
    let dir = models_dir().join(name);
    let cfg = LlamaConfig::from_hf_file(&dir).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let model = Llama::new(&vs.root(), &cfg).unwrap();
    sft_llama::load_safetensors(&vs, &dir).unwrap();
    vs.set_kind(kind);
    (vs, model, dir)
}

/// The tensors transformers wrote beside a fixture (`reference.safetensors`).
pub fn reference(dir: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    diff / scale
}

/// The real SmolLM2 GGUF ([`sft_testkit::smollm2_gguf`]: a missing asset fails the test).
pub fn smollm2_gguf() -> PathBuf {
    sft_testkit::smollm2_gguf()
}
