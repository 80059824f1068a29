//! Saving and loading weights: exact round trips, sharded checkpoints, transformers'
//! acceptance of what we write, and the errors for broken checkpoints.

mod common;

use std::path::Path;

use common::{models_dir, reference, rel_err, tiny};
use sft_llama::{load_safetensors, save_safetensors, Llama, LlamaConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn fresh(cfg: &LlamaConfig) -> (VarStore, Llama) {
    let vs = VarStore::new(Device::Cpu);
    let m = Llama::new(&vs.root(), cfg).unwrap();
    (vs, m)
}

fn assert_same_vars(a: &VarStore, b: &VarStore) {
    let (va, vb) = (a.variables(), b.variables());
    assert_eq!(va.len(), vb.len());
    for (name, t) in va {
        let u = &vb[&name];
        assert_eq!(t.kind(), u.kind(), "{name}");
        assert!(t.equal(u), "{name} differs after the round trip");
    }
}

#[test]
fn save_then_load_is_exact_in_every_dtype() {
    for name in ["tiny-llama-gqa", "tiny-llama-llama3"] {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let (vs, model, _) = tiny(name, kind);
            let dir = tempfile::tempdir().unwrap();
            save_safetensors(&vs, model.config(), dir.path()).unwrap();
            let cfg = LlamaConfig::from_hf_file(dir.path()).unwrap();
            let mut want = model.config().clone();
            want.torch_dtype = Some(sft_llama::weights::hf_dtype_name(kind).unwrap().to_string());
            assert_eq!(cfg, want, "{name}: config.json round trip");
            let (mut vs2, _m2) = fresh(&cfg);
            vs2.set_kind(kind);
            load_safetensors(&vs2, dir.path()).unwrap();
            assert_same_vars(&vs, &vs2);
            // Tied embeddings are stored once, as transformers does.
            let st = Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
            let has_head = st.iter().any(|(n, _)| n == "lm_head.weight");
            assert_eq!(has_head, !cfg.tie_word_embeddings, "{name}");
        }
    }
}

#[test]
fn loads_sharded_checkpoints_through_the_index() {
    let (vs, model, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let out = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    let vars = vs.variables();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let tensors: Vec<(&str, Tensor)> = part
            .iter()
            .map(|n| (n.as_str(), vars[n].detach()))
            .collect();
        Tensor::write_safetensors(&tensors, out.path().join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        out.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(dir.join("config.json"), out.path().join("config.json")).unwrap();
    let loaded = sft_llama::load_model(out.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(
        &sft_llama::model_config(out.path()).unwrap(),
        loaded.model.config()
    );
    assert!(sft_llama::model_config(out.path().join("missing")).is_err());
    assert_same_vars(&vs, &loaded.vs);
    let r = reference(&dir);
    let logits = loaded
        .model
        .forward(&r["input_ids"], Some(&r["position_ids"]), None)
        .unwrap();
    assert!(rel_err(&logits, &r["logits"]) <= 1e-4);
    let _ = model;
}

#[test]
fn broken_checkpoints_give_named_errors() {
    let (vs, model, _dir) = tiny("tiny-llama-gqa", Kind::Float);
    let vars = vs.variables();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("model.safetensors");

    // A missing tensor is named.
    let tensors: Vec<(&str, Tensor)> = vars
        .iter()
        .filter(|(n, _)| n.as_str() != "model.layers.1.mlp.up_proj.weight")
        .map(|(n, t)| (n.as_str(), t.detach()))
        .collect();
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let (vs2, _) = fresh(model.config());
    let e = load_safetensors(&vs2, &file).unwrap_err().to_string();
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`")
            && e.contains("model.safetensors"),
        "{e}"
    );

    // A wrong shape names the tensor, the expected and the found shape.
    let mut cfg = model.config().clone();
    cfg.intermediate_size = 40;
    let (vs3, _) = fresh(&cfg);
    let e = load_safetensors(&vs3, models_dir().join("tiny-llama-gqa"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "`model.layers.0.mlp.down_proj.weight` has shape [32, 48], the model expects [32, 40]"
        ),
        "{e}"
    );

    // An integer tensor under a parameter's name is refused.
    let mut tensors: Vec<(&str, Tensor)> =
        vars.iter().map(|(n, t)| (n.as_str(), t.detach())).collect();
    for (n, t) in tensors.iter_mut() {
        if *n == "model.norm.weight" {
            *t = t.to_kind(Kind::Int64);
        }
    }
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let e = load_safetensors(&vs2, &file).unwrap_err().to_string();
    assert!(
        e.contains("`model.norm.weight` has unsupported dtype I64"),
        "{e}"
    );

    // A directory without weights, and garbage instead of a file.
    let empty = tempfile::tempdir().unwrap();
    let e = load_safetensors(&vs2, empty.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(&file, b"not a safetensors file").unwrap();
    let e = load_safetensors(&vs2, &file).unwrap_err().to_string();
    assert!(e.contains("model.safetensors:"), "{e}");
}

/// transformers loads what `save_safetensors` writes and computes the same logits.
///
/// The check itself is `fixtures/models/check_saved_checkpoint.py`, run with `SFT_PYTHON` (set-up's
/// Python with the pinned transformers; a missing one is a failure, never a skip) on a fresh
/// save. The test also compares the sha256 of the files we write with those in the committed
/// result `saved-checkpoint-check.json`, so the record stays about the current writer.
/// `SFT_RECORD_SAVE_CHECK=1` rewrites that record.
#[test]
fn saved_checkpoint_is_the_one_transformers_accepted() {
    let record = models_dir().join("saved-checkpoint-check.json");
    let cases = [
        ("tiny-llama-gqa", Kind::Float, "float32"),
        ("tiny-llama-llama3", Kind::BFloat16, "bfloat16"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for (name, kind, dtype) in cases {
        let (vs, model, _) = tiny(name, kind);
        let dir = tmp.path().join(format!("{name}-{dtype}"));
        save_safetensors(&vs, model.config(), &dir).unwrap();
        args.push(format!("{}:{name}:{dtype}", dir.display()));
    }
    // The reference Python is required: `cargo xtask setup` installs torch, transformers and
    // safetensors (pinned) into its virtualenv and `cargo xtask env` exports SFT_PYTHON.
    let python = std::env::var_os("SFT_PYTHON")
        .map(std::path::PathBuf::from)
        .expect(
            "SFT_PYTHON is not set: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` \
             (set-up installs torch, transformers and safetensors into its Python)",
        );
    let probe = std::process::Command::new(&python)
        .args(["-c", "import torch, transformers, safetensors"])
        .output()
        .unwrap_or_else(|e| panic!("SFT_PYTHON={} cannot be run: {e}", python.display()));
    assert!(
        probe.status.success(),
        "SFT_PYTHON={} lacks torch/transformers/safetensors (run `cargo xtask setup`, or \
         `{} -m pip install -r xtask/python-requirements.txt`): {}",
        python.display(),
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let recording = std::env::var_os("SFT_RECORD_SAVE_CHECK").is_some();
    let out = std::process::Command::new(&python)
        .arg(models_dir().join("check_saved_checkpoint.py"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_cases(&live);
    if recording {
        std::fs::write(&record, serde_json::to_string_pretty(&live).unwrap() + "\n").unwrap();
    }
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    check_cases(&committed);
    for ((name, _, dtype), arg) in cases.iter().zip(&args) {
        let dir = Path::new(arg.split(':').next().unwrap());
        let case = committed["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["fixture"] == *name && c["dtype"] == *dtype)
            .unwrap_or_else(|| panic!("{name} {dtype} is not in {}", record.display()));
        for file in ["model.safetensors", "config.json"] {
            assert_eq!(
                sha256(&dir.join(file)),
                case["sha256"][file].as_str().unwrap(),
                "{name} {dtype}: {file} differs from the one transformers checked; re-run with SFT_RECORD_SAVE_CHECK=1"
            );
        }
    }
}

fn check_cases(doc: &serde_json::Value) {
    for case in doc["cases"].as_array().unwrap() {
        assert!(
            case["max_abs_logit_diff"].as_f64().unwrap() <= case["tolerance"].as_f64().unwrap(),
            "{case}"
        );
        assert!(
            case["unexpected_or_missing_keys"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{case}"
        );
        assert_eq!(case["loaded_dtype"], case["dtype"], "{case}");
    }
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The one tensor → safetensors conversion keeps dtypes, shapes, order-independent names and
/// the header metadata, and names the tensor it cannot save.
#[test]
fn safetensors_bytes_keeps_dtypes_shapes_and_metadata() {
    let tensors = vec![
        ("step".to_string(), Tensor::from_slice(&[7i64])),
        (
            "w".to_string(),
            Tensor::from_slice(&[1.5f32, -2.0, 0.25, 8.0])
                .reshape([2, 2])
                .to_kind(Kind::BFloat16),
        ),
        (
            "v".to_string(),
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])
                .reshape([2, 3])
                .transpose(0, 1),
        ),
    ];
    let bytes = sft_llama::safetensors_bytes(&tensors, Some(sft_llama::pt_metadata())).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let step = st.tensor("step").unwrap();
    assert_eq!(step.dtype(), safetensors::Dtype::I64);
    assert_eq!(step.data(), 7i64.to_le_bytes());
    let w = st.tensor("w").unwrap();
    assert_eq!(
        (w.dtype(), w.shape()),
        (safetensors::Dtype::BF16, &[2usize, 2][..])
    );
    // A non-contiguous (transposed) tensor is written in its logical order.
    let v = st.tensor("v").unwrap();
    assert_eq!(v.shape(), &[3usize, 2][..]);
    let vals: Vec<f32> = v
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);

    let bad = vec![("mask".to_string(), Tensor::from_slice(&[true, false]))];
    let err = sft_llama::safetensors_bytes(&bad, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mask"), "{err}");
}
