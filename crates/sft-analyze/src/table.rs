//! [`separation_table`]: the markdown table the command prints.

use sft_eval::Estimate;

use crate::analysis::{Analysis, Scores};

fn cell(e: &Estimate, signed: bool) -> String {
    if signed {
        format!("{:+.3} [{:+.3}, {:+.3}]", e.value, e.ci_low, e.ci_high)
    } else {
        format!("{:.3} [{:.3}, {:.3}]", e.value, e.ci_low, e.ci_high)
    }
}

fn row(out: &mut String, who: &str, scope: &str, s: &Scores, signed: bool) {
    out.push_str(&format!(
        "| {who} | {scope} | {} | {} | {} | {} |\n",
        s.silhouette.n,
        cell(&s.silhouette, signed),
        cell(&s.knn_purity, signed),
        cell(&s.probe_accuracy, signed)
    ));
}

/// A markdown table of every model's separation scores (overall and per source pair), each
/// with its 95% bootstrap interval, then the change of each model against the first (paired
/// bootstrap), then a note on what the numbers are.
pub fn separation_table(analysis: &Analysis) -> String {
    let s = &analysis.settings;
    let mut out = String::new();
    out.push_str(&format!(
        "| model | sources | n | silhouette | {}-NN purity | probe accuracy ({}-fold) |\n",
        s.knn_k, s.folds
    ));
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
    for m in &analysis.models {
        row(&mut out, &m.label, "all", &m.separation.overall, false);
        for (pair, sc) in &m.separation.pairs {
            row(&mut out, &m.label, pair, sc, false);
        }
    }
    for c in &analysis.changes {
        let who = format!("{} − {}", c.model, c.baseline);
        row(&mut out, &who, "all", &c.overall, true);
        for (pair, sc) in &c.pairs {
            row(&mut out, &who, pair, sc, true);
        }
    }
    let dims = analysis
        .models
        .iter()
        .map(|m| {
            format!(
                "{} {} ({:.0}% of variance)",
                m.label,
                m.pca_dims,
                100.0 * m.pca_variance_kept
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    out.push_str(&format!(
        "\nScores in the PCA space ({dims} components), not on the t-SNE map; 95% bootstrap intervals over records ({} resamples, seed {}), neighbourhoods and probes not refit per resample; changes are paired differences on the same records.\n",
        s.resamples, s.seed
    ));
    out
}
