//! `sft_local::hidden` against transformers: the pooled hidden states of fixture queries through
//! the tiny byte-level LLaMA (fixtures/run/tiny-bytes) equal `hidden_states[layer]` pooled the
//! same way (fixtures/hidden/reference.json, made by fixtures/hidden/make_reference.py), for
//! every layer, both poolings and both views, batched with padding; plus the input errors.

use std::path::PathBuf;

use serde_json::Value;
use sft_analyze::Pool;
use sft_chat::ChatTokenizer;
use sft_compose::{load_source, LoadOptions, Record};
use sft_local::hidden::{self, HiddenRequest, QueryView};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> Value {
    let p = workspace().join("fixtures/hidden/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The first 4 records of each demo source, as the reference script takes them.
fn records() -> Vec<Record> {
    let demo = workspace().join("fixtures/demo");
    let mut out = Vec::new();
    for (name, file) in [
        ("math", "math.jsonl"),
        ("code", "code.json"),
        ("general", "general.json"),
    ] {
        let src = load_source(name, &demo.join(file), &LoadOptions::strict()).unwrap();
        out.extend(src.records.into_iter().take(4));
    }
    out
}

fn model() -> (sft_llama::LoadedModel, ChatTokenizer) {
    let dir = workspace().join("fixtures/run/tiny-bytes");
    let loaded = sft_llama::load_model(&dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
    (loaded, ChatTokenizer::from_path(&dir).unwrap())
}

fn rel_err(got: &[f32], want: &[Value]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut w) = (0.0f64, 0.0f64);
    for (g, x) in got.iter().zip(want) {
        let x = x.as_f64().unwrap();
        d += (f64::from(*g) - x).powi(2);
        w += x * x;
    }
    (d / w.max(1e-30)).sqrt()
}

#[test]
fn pooled_states_equal_transformers_for_every_layer_pool_and_view() {
    let r = reference();
    let recs = records();
    let refs = r["records"].as_array().unwrap();
    assert_eq!(recs.len(), refs.len());
    let (loaded, tok) = model();
    let layers = loaded.model.config().num_hidden_layers;
    assert_eq!(r["num_hidden_layers"].as_u64().unwrap() as usize, layers);
    for (view, key) in [
        (QueryView::Template("model".into()), "template"),
        (QueryView::Raw, "raw"),
    ] {
        // The same token ids as transformers' tokenizer and chat template.
        let ids = hidden::encode_queries(&tok, &view, &recs).unwrap();
        for (got, want) in ids.iter().zip(refs) {
            let want: Vec<u32> = want[key]["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got, &want, "{key} ids");
        }
        for layer in 0..=layers as i64 {
            for pool in [Pool::Mean, Pool::Last] {
                // Batches of 5 mix lengths, so padding is exercised; -1 is the last state.
                let asked = if layer == layers as i64 { -1 } else { layer };
                let req = HiddenRequest {
                    label: "tiny".into(),
                    layer: asked,
                    pool,
                    view: view.clone(),
                    batch_size: 5,
                    max_tokens: 4096,
                    progress: false,
                };
                let (emb, report) = hidden::embed(&loaded.model, &tok, &recs, &req).unwrap();
                assert_eq!(report.layer as i64, layer);
                assert_eq!(report.truncated, 0);
                assert_eq!(emb.layer, layer);
                assert_eq!(emb.dim, loaded.model.config().hidden_size);
                assert_eq!(emb.vectors.len(), recs.len() * emb.dim);
                for (i, want) in refs.iter().enumerate() {
                    assert_eq!(emb.ids[i], want["id"].as_str().unwrap());
                    assert_eq!(emb.sources[i], want["source"].as_str().unwrap());
                    assert_eq!(emb.n_tokens[i], ids[i].len());
                    let w = want[key]["layers"][layer.to_string()][pool.to_string()]
                        .as_array()
                        .unwrap();
                    let got = &emb.vectors[i * emb.dim..(i + 1) * emb.dim];
                    let e = rel_err(got, w);
                    assert!(
                        e <= 1e-4,
                        "{key} layer {layer} {pool}: {} relative error {e}",
                        emb.ids[i]
                    );
                }
            }
        }
    }
}

#[test]
fn queries_are_sampled_per_source_with_the_seed_and_inputs_are_checked() {
    let recs = records();
    let by_source = |n: usize| -> Vec<(String, Vec<Record>)> {
        ["math", "code", "general"]
            .iter()
            .map(|s| {
                let v: Vec<Record> = recs.iter().filter(|r| r.source == *s).cloned().collect();
                (s.to_string(), v[..n].to_vec())
            })
            .collect()
    };
    let a = hidden::sample_queries(&by_source(4), 3, 7).unwrap();
    let b = hidden::sample_queries(&by_source(4), 3, 7).unwrap();
    let ids = |v: &[Record]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "same seed, same queries");
    assert_eq!(a.len(), 9);
    assert!(a[..3].iter().all(|r| r.source == "math"));
    assert!(a[6..].iter().all(|r| r.source == "general"));
    let other: Vec<Vec<String>> = (0..8)
        .map(|s| ids(&hidden::sample_queries(&by_source(4), 3, s).unwrap()))
        .collect();
    assert!(other.iter().any(|o| o != &ids(&a)), "the seed matters");

    let e = hidden::sample_queries(&by_source(2), 3, 7)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source math has 2 records, fewer than the 3"),
        "{e}"
    );
    let mut empty = by_source(4);
    empty[1].1.clear();
    let e = hidden::sample_queries(&empty, 3, 7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("source code has no records"), "{e}");

    let (loaded, tok) = model();
    let mut req = HiddenRequest {
        label: "tiny".into(),
        layer: 3,
        pool: Pool::Mean,
        view: QueryView::Raw,
        batch_size: 4,
        max_tokens: 8,
        progress: false,
    };
    let e = hidden::embed(&loaded.model, &tok, &recs, &req)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 3 is out of range: the model has 2 layers"),
        "{e}"
    );
    req.layer = -4;
    assert!(hidden::embed(&loaded.model, &tok, &recs, &req).is_err());
    req.layer = -3;
    let (emb, report) = hidden::embed(&loaded.model, &tok, &recs, &req).unwrap();
    assert_eq!((report.layer, emb.layer), (0, 0));
    assert!(
        report.truncated > 0,
        "the demo queries are longer than 8 bytes"
    );
    assert!(emb.n_tokens.iter().all(|&n| n <= 8));
    req.view = QueryView::Template("no-such-template".into());
    let e = hidden::embed(&loaded.model, &tok, &recs, &req)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-template"), "{e}");
    let mut no_user = recs[..1].to_vec();
    no_user[0]
        .messages
        .retain(|m| m.role != sft_record::Role::User);
    req.view = QueryView::Raw;
    let e = hidden::embed(&loaded.model, &tok, &no_user, &req)
        .unwrap_err()
        .to_string();
    assert!(e.contains("record math:0 has no user message"), "{e}");
}

#[test]
fn a_layer_is_checked_from_the_config_alone_naming_the_model() {
    let dir = workspace().join("fixtures/run/tiny-bytes");
    assert_eq!(hidden::check_layer(&dir, -1).unwrap(), 2);
    assert_eq!(hidden::check_layer(&dir, 0).unwrap(), 0);
    let e = hidden::check_layer(&dir, 15).unwrap_err().to_string();
    assert!(
        e.contains("tiny-bytes") && e.contains("layer 15 is out of range"),
        "{e}"
    );
    assert!(hidden::check_layer(&dir.join("missing"), 0).is_err());
}
