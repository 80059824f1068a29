//! `analyze` end to end on synthetic clusters: separated sources score near 1, shuffled sources
//! near chance, reruns give byte-identical `tsne.csv`, outputs are written and read back, and bad
//! inputs fail with messages naming the problem.

mod common;

use common::{clusters, same_records, Normal, SOURCES};
use indicatif::ProgressBar;
use sft_analyze::{
    analyze, read_embeddings, separation_table, write_outputs, Analysis, AnalysisSettings,
    Embeddings, Error, Pool,
};

fn settings() -> AnalysisSettings {
    AnalysisSettings {
        resamples: 400,
        ..AnalysisSettings::default()
    }
}

fn run(models: &[Embeddings]) -> Analysis {
    analyze(models, &settings(), &ProgressBar::hidden()).expect("analysis")
}

#[test]
fn separated_clusters_score_near_one() {
    // 3 × 40 records in 64 dimensions; centres ~10× the noise apart.
    let e = clusters("base", 40, 64, 10.0, 1);
    let a = run(&[e]);
    let m = &a.models[0];
    assert_eq!(m.pca_dims, 50);
    let s = &m.separation.overall;
    assert!(s.silhouette.value > 0.8, "silhouette {:?}", s.silhouette);
    assert!(s.knn_purity.value > 0.99, "purity {:?}", s.knn_purity);
    assert!(
        s.probe_accuracy.value > 0.99,
        "probe {:?}",
        s.probe_accuracy
    );
    assert_eq!(s.silhouette.n, 120);
    assert!(
        s.silhouette.ci_low <= s.silhouette.value && s.silhouette.value <= s.silhouette.ci_high
    );
    let keys: Vec<&str> = m.separation.pairs.keys().map(String::as_str).collect();
    assert_eq!(keys, ["code-general", "math-code", "math-general"]);
    for (pair, p) in &m.separation.pairs {
        assert_eq!(p.silhouette.n, 80, "{pair}");
        assert!(p.silhouette.value > 0.8, "{pair}: {:?}", p.silhouette);
        assert!(p.knn_purity.value > 0.99, "{pair}");
        assert!(p.probe_accuracy.value > 0.99, "{pair}");
    }
    // The t-SNE map keeps the clusters apart too: each point's nearest map neighbour shares its
    // source.
    let same = (0..m.n)
        .filter(|&i| {
            let near = (0..m.n)
                .filter(|&j| j != i)
                .min_by(|&x, &y| {
                    let d = |j: usize| {
                        (m.tsne[i][0] - m.tsne[j][0]).powi(2)
                            + (m.tsne[i][1] - m.tsne[j][1]).powi(2)
                    };
                    d(x).total_cmp(&d(y))
                })
                .unwrap();
            near % 3 == i % 3
        })
        .count();
    assert_eq!(same, m.n, "t-SNE neighbours across sources");
}

#[test]
fn shuffled_sources_score_near_chance() {
    let mut e = clusters("base", 40, 64, 10.0, 1);
    // Deal the sources at random (seeded Fisher–Yates): the labels no longer follow the clusters.
    let mut rng = Normal::new(7);
    for i in (1..e.sources.len()).rev() {
        let j = rng.index(i + 1);
        e.sources.swap(i, j);
    }
    let a = run(&[e]);
    let s = &a.models[0].separation.overall;
    assert!(
        s.silhouette.value.abs() < 0.1,
        "silhouette {:?}",
        s.silhouette
    );
    assert!(
        (s.knn_purity.value - 1.0 / 3.0).abs() < 0.1,
        "purity {:?}",
        s.knn_purity
    );
    assert!(
        s.probe_accuracy.value < 0.55,
        "probe {:?}",
        s.probe_accuracy
    );
}

#[test]
fn changes_are_paired_differences_against_the_first_model() {
    let base = clusters("base", 40, 64, 10.0, 1);
    let blurred = same_records(&base, "tuned", 0.4, 2);
    let a = run(&[base.clone(), blurred, base.clone().relabel("copy")]);
    assert_eq!(a.changes.len(), 2);
    let c = &a.changes[0];
    assert_eq!((c.model.as_str(), c.baseline.as_str()), ("tuned", "base"));
    let want = a.models[1].separation.overall.silhouette.value
        - a.models[0].separation.overall.silhouette.value;
    assert!((c.overall.silhouette.value - want).abs() < 1e-12);
    assert!(
        c.overall.silhouette.ci_high < 0.0,
        "{:?}",
        c.overall.silhouette
    );
    assert_eq!(
        c.overall.silhouette.method,
        Some(sft_eval::Method::PairedBootstrap)
    );
    assert_eq!(c.pairs.len(), 3);
    // The same vectors under another label: no change at all.
    let same = &a.changes[1];
    for e in [
        same.overall.silhouette,
        same.overall.knn_purity,
        same.overall.probe_accuracy,
    ] {
        assert_eq!((e.value, e.ci_low, e.ci_high), (0.0, 0.0, 0.0));
    }
    // The flat metric map: 4 scopes × 3 scores for each of 3 models and 2 changes.
    let metrics = a.metrics();
    assert_eq!(metrics.len(), 5 * 4 * 3);
    assert_eq!(
        metrics["tuned-vs-base.all.silhouette"], c.overall.silhouette,
        "change key"
    );
    assert_eq!(
        metrics["base.math-general.knn_purity"],
        a.models[0].separation.pairs["math-general"].knn_purity
    );
    let table = separation_table(&a);
    assert!(table.contains("| tuned − base | all | 120 |"), "{table}");
    assert!(table.contains("| base | math-general | 80 |"), "{table}");
}

trait Relabel {
    fn relabel(self, label: &str) -> Self;
}
impl Relabel for Embeddings {
    fn relabel(mut self, label: &str) -> Self {
        self.model = label.to_string();
        self
    }
}

#[test]
fn rerun_writes_byte_identical_tsne_csv_and_readable_outputs() {
    let base = clusters("base", 35, 48, 3.0, 11);
    let tuned = same_records(&base, "tuned", 1.5, 12);
    let models = [base, tuned];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut written = Vec::new();
    for d in &dirs {
        let a = run(&models);
        written.push((write_outputs(d.path(), &models, &a).unwrap(), a));
    }
    let csv: Vec<Vec<u8>> = written
        .iter()
        .map(|(o, _)| std::fs::read(&o.tsne_csv).unwrap())
        .collect();
    assert_eq!(csv[0], csv[1], "tsne.csv differs between reruns");
    let text = String::from_utf8(csv[0].clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "model,id,source,x,y");
    assert_eq!(lines.len(), 1 + 2 * 105);
    assert!(lines[1].starts_with("base,math-0,math,"), "{}", lines[1]);
    assert!(
        lines[106].starts_with("tuned,math-0,math,"),
        "{}",
        lines[106]
    );

    let (out, analysis) = &written[0];
    // separation.json is the analysis.
    let back: Analysis =
        serde_json::from_str(&std::fs::read_to_string(&out.separation).unwrap()).unwrap();
    assert_eq!(&back, analysis);
    // embeddings.parquet holds every (model, record) row with its vector.
    let read = read_embeddings(&out.embeddings).unwrap();
    assert_eq!(read, models.to_vec());
    let file = std::fs::File::open(&out.embeddings).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    assert_eq!(builder.metadata().file_metadata().num_rows(), 210);
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["model", "id", "source", "layer", "pool", "n_tokens", "vector"]
    );
    // The plots exist, are a real PNG and SVG, and the SVG carries the panel titles and legend.
    let png = std::fs::read(&out.tsne_png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(&out.tsne_svg).unwrap();
    assert!(svg.contains("base · layer 15 · mean"), "svg title");
    assert!(svg.contains("tuned · layer 15 · mean"), "svg title");
    for s in SOURCES {
        assert!(svg.contains(&format!("{s} (35)")), "legend entry for {s}");
    }
}

#[test]
fn barnes_hut_path_is_deterministic_too() {
    let e = clusters("base", 35, 20, 5.0, 3);
    let s = AnalysisSettings {
        tsne_exact_max: 0,
        iterations: 300,
        ..settings()
    };
    let a = analyze(std::slice::from_ref(&e), &s, &ProgressBar::hidden()).unwrap();
    let b = analyze(std::slice::from_ref(&e), &s, &ProgressBar::hidden()).unwrap();
    assert!(matches!(
        a.models[0].tsne_method,
        sft_analyze::TsneMethod::BarnesHut { .. }
    ));
    assert_eq!(a.models[0].tsne, b.models[0].tsne);
}

fn err(models: &[Embeddings]) -> String {
    match analyze(models, &settings(), &ProgressBar::hidden()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let good = clusters("base", 35, 16, 5.0, 1);

    let mut empty = good.clone();
    empty.ids.clear();
    empty.sources.clear();
    empty.n_tokens.clear();
    empty.vectors.clear();
    assert_eq!(err(&[empty]), "embeddings of model `base`: no records");

    let mut short = good.clone();
    short.sources.pop();
    assert_eq!(
        err(&[short]),
        "embeddings of model `base`: 105 ids but 104 sources"
    );

    let mut ragged = good.clone();
    ragged.vectors.pop();
    assert!(err(&[ragged])
        .contains("1679 values in `vectors`, expected 105 records × 16 dimensions = 1680"));

    let mut one = good.clone();
    one.sources.iter_mut().for_each(|s| *s = "math".into());
    assert_eq!(
        err(&[one]),
        "embeddings of model `base`: separation needs at least 2 sources, found 1 (math)"
    );

    let mut few = good.clone();
    for (i, s) in few.sources.iter_mut().enumerate() {
        *s = if i < 3 { "code".into() } else { "math".into() };
    }
    assert!(
        err(&[few]).contains("source `code` has 3 record(s); the 5-fold probe needs at least 5")
    );

    let mut nan = good.clone();
    nan.vectors[16 * 4 + 2] = f32::NAN;
    assert!(err(&[nan]).contains("record `code-1` has a non-finite value (NaN) at dimension 2"));

    let mut other = good.clone().relabel("tuned");
    other.ids.swap(0, 1);
    other.sources.swap(0, 1);
    assert!(err(&[good.clone(), other]).contains("model `tuned` holds different records"));

    assert!(err(&[good.clone(), good.clone()]).contains("two models are labelled `base`"));
    assert_eq!(err(&[]), "no models to analyse");

    let small = clusters("base", 20, 16, 5.0, 1);
    let e = err(&[small]);
    assert!(matches!(
        analyze(
            &[clusters("base", 20, 16, 5.0, 1)],
            &settings(),
            &ProgressBar::hidden()
        ),
        Err(Error::Settings(_))
    ));
    assert!(e.contains("perplexity 30 needs at least 91 records"), "{e}");
}

#[test]
fn pool_names_round_trip() {
    for p in [Pool::Mean, Pool::Last] {
        assert_eq!(p.to_string().parse::<Pool>().unwrap(), p);
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
    }
    assert_eq!("mean".parse::<Pool>(), Ok(Pool::Mean));
    assert!("max"
        .parse::<Pool>()
        .unwrap_err()
        .contains("unknown pooling `max`"));
}
