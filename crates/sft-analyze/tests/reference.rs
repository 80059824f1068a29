//! The scores, the probe, PCA and the t-SNE initialisation against scikit-learn's values in
//! `fixtures/analyze/reference.json` (made by `fixtures/analyze/make_reference.py`).

use serde_json::Value;
use sft_analyze::pca::pca;
use sft_analyze::scores::{distances, knn_purity, probe_predictions, silhouette_samples};
use sft_analyze::tsne::pca_init;

const TOL: f64 = 1e-6;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/analyze/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Bool(b) => vec![f64::from(u8::from(*b))],
        other => panic!("not numeric: {other}"),
    }
}

fn ints(v: &Value) -> Vec<usize> {
    floats(v).into_iter().map(|f| f as usize).collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, scikit-learn {w}"
        );
    }
}

#[test]
fn silhouette_matches_sklearn() {
    let r = reference();
    let (n, d) = (
        r["n"].as_u64().unwrap() as usize,
        r["d"].as_u64().unwrap() as usize,
    );
    let x = floats(&r["x"]);
    let labels = ints(&r["labels"]);
    let s = silhouette_samples(&distances(&x, n, d), &labels, 3);
    assert_close("silhouette", &s, &floats(&r["silhouette"]));

    // The pair subset (labels 0 and 1), as the per-pair scores compute it.
    let mask = ints(&r["pair_mask"]);
    let keep: Vec<usize> = (0..n).filter(|&i| mask[i] == 1).collect();
    let sub: Vec<f64> = keep
        .iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
        .collect();
    let sub_l: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
    let s = silhouette_samples(&distances(&sub, keep.len(), d), &sub_l, 2);
    assert_close("pair silhouette", &s, &floats(&r["pair_silhouette"]));
}

#[test]
fn knn_purity_matches_sklearn_neighbours() {
    let r = reference();
    let (n, d) = (
        r["n"].as_u64().unwrap() as usize,
        r["d"].as_u64().unwrap() as usize,
    );
    let k = r["k"].as_u64().unwrap() as usize;
    let x = floats(&r["x"]);
    let labels = ints(&r["labels"]);
    let p = knn_purity(&distances(&x, n, d), &labels, k);
    assert_close("knn purity", &p, &floats(&r["knn_purity"]));
}

#[test]
fn ridge_probe_predicts_as_ridge_classifier() {
    let r = reference();
    let (n, d) = (
        r["n"].as_u64().unwrap() as usize,
        r["d"].as_u64().unwrap() as usize,
    );
    let x = floats(&r["x"]);
    let labels = ints(&r["labels"]);
    let folds = ints(&r["folds"]);
    let pred = probe_predictions(&x, d, &labels, 3, &folds, 5, 1.0).unwrap();
    let want = ints(&r["probe_predictions"]);
    assert_eq!(pred, want, "three-class probe");
    // The reference has some mistakes, so agreement is not just "everything right".
    assert!(want.iter().zip(&labels).any(|(p, l)| p != l));

    let mask = ints(&r["pair_mask"]);
    let keep: Vec<usize> = (0..n).filter(|&i| mask[i] == 1).collect();
    let sub: Vec<f64> = keep
        .iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
        .collect();
    let sub_l: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
    let sub_f: Vec<usize> = keep.iter().map(|&i| folds[i]).collect();
    let pred = probe_predictions(&sub, d, &sub_l, 2, &sub_f, 5, 1.0).unwrap();
    assert_eq!(pred, ints(&r["pair_probe_predictions"]), "binary probe");
}

fn check_pca(r: &Value, data_key: &str, key: &str, rows: usize, dim: usize) {
    let x = floats(&r[data_key]);
    let want = &r[key];
    let k = want["explained_variance"].as_array().unwrap().len();
    let p = pca(&x, rows, dim, k);
    assert_close(
        &format!("{key} components"),
        &p.components,
        &floats(&want["components"]),
    );
    assert_close(
        &format!("{key} scores"),
        &p.scores,
        &floats(&want["scores"]),
    );
    assert_close(
        &format!("{key} explained variance"),
        &p.explained_variance,
        &floats(&want["explained_variance"]),
    );
    assert_close(
        &format!("{key} explained variance ratio"),
        &p.explained_variance_ratio,
        &floats(&want["explained_variance_ratio"]),
    );
}

#[test]
fn pca_matches_sklearn_with_its_signs() {
    let r = reference();
    let (n, d) = (
        r["n"].as_u64().unwrap() as usize,
        r["d"].as_u64().unwrap() as usize,
    );
    // More records than dimensions: the scatter-matrix route.
    check_pca(&r, "x", "pca_tall", n, d);
    // Fewer records than dimensions: the Gram-matrix route.
    check_pca(&r, "wide", "pca_wide", 20, 30);
}

#[test]
fn tsne_init_is_sklearns_pca_init() {
    let r = reference();
    let (n, d) = (
        r["n"].as_u64().unwrap() as usize,
        r["d"].as_u64().unwrap() as usize,
    );
    let init = pca_init(&floats(&r["x"]), n, d);
    // The values are ~1e-4: compare relative to their scale.
    let want = floats(&r["tsne_init"]);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in init.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= TOL * scale,
            "init[{i}]: got {g}, scikit-learn {w}"
        );
    }
}
