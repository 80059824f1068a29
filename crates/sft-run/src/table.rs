//! A plain-text table shaped like the paper's Table 1: one row per strategy, one column per ability.

use std::collections::BTreeMap;

use crate::backend::{Metric, Task};
use crate::heldout::{paired, HeldoutLosses};
use crate::items::TaskItems;
use crate::runner::RunResults;

/// One row: a label (`DMT (k=1/256)`) and its results.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The strategy's label.
    pub label: String,
    /// Its run's results.
    pub results: &'a RunResults,
    /// Its per-record held-out losses (`heldout_loss.json`), for the paired comparisons of
    /// [`render_comparison`].
    pub heldout: Option<&'a HeldoutLosses>,
    /// Its per-item benchmark scores (`eval/<task>.items.json`, [`crate::items::read_run`]).
    pub items: Option<&'a BTreeMap<Task, TaskItems>>,
}

fn signed(m: Option<&Metric>) -> String {
    match m {
        None => "—".to_string(),
        Some(m) => format!("{:+.3} [{:+.3}, {:+.3}]", m.value, m.ci_low, m.ci_high),
    }
}

/// Renders rows of cells as a Markdown table.
fn markdown(header: &[String], body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = line(header);
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in body {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// What a comparison row measures.
enum Measure {
    /// Held-out loss on one source.
    Loss(String),
    /// A benchmark score from its items: task, score name, label.
    Bench(Task, &'static str, &'static str),
}

/// The comparison table: per strategy, the final model's held-out loss on each source and its
/// benchmark scores (GSM8K under both filters, HumanEval pass@1), each with its paired
/// difference (same records, same items) to the base model (held-out losses only: the base
/// model is not run on the benchmarks) and to the row labelled `baseline` (e.g. `Multi-task`;
/// that column is left out when no row has the label). For the loss a negative difference
/// means a lower loss than the model compared to; for the benchmarks a positive one means more
/// items solved.
pub fn render_comparison(rows: &[Row<'_>], baseline: Option<&str>) -> String {
    let base_row = baseline.and_then(|b| rows.iter().find(|r| r.label == b));
    let mut header: Vec<String> = vec![
        "Strategy".into(),
        "Measure".into(),
        "Value [95% CI]".into(),
        "Δ vs base model".into(),
    ];
    if let Some(b) = base_row {
        header.push(format!("Δ vs {}", b.label));
    }
    let mut sources: Vec<String> = Vec::new();
    for r in rows {
        if let Some(h) = r.heldout {
            for s in h.ids.keys() {
                if !sources.contains(s) {
                    sources.push(s.clone());
                }
            }
        }
    }
    sources.sort();
    let mut measures: Vec<Measure> = sources.iter().cloned().map(Measure::Loss).collect();
    for (task, score, label) in [
        (
            Task::Gsm8k,
            crate::items::FLEXIBLE,
            "GSM8K acc % (flexible-extract)",
        ),
        (
            Task::Gsm8k,
            crate::items::STRICT,
            "GSM8K acc % (strict-match)",
        ),
        (
            Task::HumanEval,
            crate::items::PASS_AT_1,
            "HumanEval pass@1 %",
        ),
    ] {
        if rows
            .iter()
            .any(|r| r.items.is_some_and(|i| i.contains_key(&task)))
        {
            measures.push(Measure::Bench(task, score, label));
        }
    }
    let pct = |m: Option<Metric>| {
        m.map(|m| Metric {
            value: 100.0 * m.value,
            ci_low: 100.0 * m.ci_low,
            ci_high: 100.0 * m.ci_high,
            ..m
        })
    };
    let mut body = Vec::new();
    if let Some(base) = rows.iter().find_map(|r| r.heldout.and_then(|h| h.base())) {
        let est = base.estimates();
        for s in &sources {
            let mut row = vec![
                "Base model".to_string(),
                format!("held-out loss: {s}"),
                cell(est.get(s), false),
                "—".into(),
            ];
            if base_row.is_some() {
                row.push("—".into());
            }
            body.push(row);
        }
    }
    for r in rows {
        for m in &measures {
            let (name, value, vs_base, vs_other) = match m {
                Measure::Loss(s) => {
                    let fin = r.heldout.and_then(|h| h.final_model());
                    let base = r.heldout.and_then(|h| h.base());
                    let other = base_row.and_then(|b| b.heldout.and_then(|h| h.final_model()));
                    (
                        format!("held-out loss: {s}"),
                        cell(
                            fin.and_then(|f| f.estimates().get(s).copied()).as_ref(),
                            false,
                        ),
                        signed(fin.zip(base).and_then(|(f, b)| paired(f, b, s)).as_ref()),
                        signed(fin.zip(other).and_then(|(f, o)| paired(f, o, s)).as_ref()),
                    )
                }
                Measure::Bench(task, score, label) => {
                    let mine = r.items.and_then(|i| i.get(task));
                    let other = base_row.and_then(|b| b.items.and_then(|i| i.get(task)));
                    (
                        label.to_string(),
                        cell(mine.and_then(|i| i.proportion(score)).as_ref(), true),
                        "—".to_string(),
                        signed_pct(pct(mine
                            .zip(other)
                            .and_then(|(a, b)| crate::items::paired(a, b, score)))),
                    )
                }
            };
            let mut row = vec![r.label.clone(), name, value, vs_base];
            if let Some(b) = base_row {
                row.push(if b.label == r.label {
                    "(baseline)".to_string()
                } else {
                    vs_other
                });
            }
            body.push(row);
        }
    }
    let mut out = markdown(&header, &body);
    out.push_str(
        "Held-out loss: mean over each source's held-out records (never trained on) of the \
         per-token loss on assistant tokens (nats), mean ± 1.96·SE; lower is better. Benchmarks: \
         the seeded subset shared by every strategy, Wilson intervals. Δ: paired difference on \
         the same records or items (strategy − other), 95% paired bootstrap (2000 resamples).\n",
    );
    out
}

fn signed_pct(m: Option<Metric>) -> String {
    match m {
        None => "—".to_string(),
        Some(m) => format!("{:+.1} [{:+.1}, {:+.1}]", m.value, m.ci_low, m.ci_high),
    }
}

fn cell(m: Option<&Metric>, percent: bool) -> String {
    match m {
        None => "—".to_string(),
        Some(m) if percent => {
            format!(
                "{:.1} [{:.1}, {:.1}] n={}",
                100.0 * m.value,
                100.0 * m.ci_low,
                100.0 * m.ci_high,
                m.n
            )
        }
        Some(m) => format!(
            "{:.3} [{:.3}, {:.3}] n={}",
            m.value, m.ci_low, m.ci_high, m.n
        ),
    }
}

/// Renders the table. The general ability is the MT-Bench score (1–10, higher is better) when
/// any row was judged, always followed by the held-out loss on general conversations (lower is
/// better); each header says which is which, and a row without a value shows `—`.
pub fn render(rows: &[Row<'_>]) -> String {
    let judged = rows
        .iter()
        .any(|r| r.results.metrics.contains_key("mtbench_score"));
    let mut header: Vec<&str> = vec!["Strategy", "GSM8K acc %", "HumanEval pass@1 %"];
    if judged {
        header.push("General: MT-Bench (1-10)");
    }
    header.push("General: held-out loss (nats/token, lower is better)");
    header.push("Stages trained/reused");
    let mut body: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let m = &r.results.metrics;
        let reused = r.results.stages.iter().filter(|s| s.reused).count();
        let mut row = vec![
            r.label.clone(),
            cell(m.get("gsm8k_acc"), true),
            cell(m.get("humaneval_pass@1"), true),
        ];
        if judged {
            row.push(cell(m.get("mtbench_score"), false));
        }
        row.push(cell(m.get("general_heldout_loss"), false));
        row.push(format!("{}/{}", r.results.stages.len() - reused, reused));
        body.push(row);
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = markdown(&header, &body);
    out.push_str(if judged {
        "Intervals are 95% (Wilson for accuracies, mean ± 1.96·SE for the loss and MT-Bench).\n"
    } else {
        "Intervals are 95% (Wilson for accuracies, mean ± 1.96·SE for the loss).\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_column_says_what_it_is() {
        let mut metrics = BTreeMap::new();
        metrics.insert("gsm8k_acc".to_string(), Metric::wilson(1, 4));
        metrics.insert(
            "general_heldout_loss".to_string(),
            Metric::mean_se(&[1.0, 2.0]),
        );
        let r = RunResults {
            format_version: 1,
            plan: "p".into(),
            metrics,
            stages: vec![],
            base_heldout_loss: BTreeMap::new(),
            provenance: BTreeMap::new(),
        };
        let t = render(&[Row {
            label: "Multi-task".into(),
            results: &r,
            heldout: None,
            items: None,
        }]);
        assert!(t.contains("held-out loss"), "{t}");
        assert!(t.contains("25.0 ["), "{t}");
        assert!(t.contains("1.500 ["), "{t}");
        assert!(t.contains("| —"), "HumanEval was not evaluated: {t}");
        assert!(!t.contains("MT-Bench"), "no row was judged: {t}");

        let mut judged = r.clone();
        judged
            .metrics
            .insert("mtbench_score".into(), Metric::mean_se(&[6.0, 8.0]));
        let t = render(&[
            Row {
                label: "DMT".into(),
                results: &judged,
                heldout: None,
                items: None,
            },
            Row {
                label: "Multi-task".into(),
                results: &r,
                heldout: None,
                items: None,
            },
        ]);
        assert!(t.contains("MT-Bench") && t.contains("7.000 ["), "{t}");
        assert!(
            t.contains("1.500 ["),
            "the loss stays beside the judge score: {t}"
        );
        let mt_row = t.lines().find(|l| l.starts_with("| Multi-task")).unwrap();
        assert_eq!(mt_row.matches('—').count(), 2, "{t}");
    }

    fn losses(model: &[(&str, &str, f64)]) -> crate::heldout::ModelLosses {
        let mut m = crate::heldout::ModelLosses {
            label: "x".into(),
            stage: Some(0),
            model_key: "k".into(),
            losses: BTreeMap::new(),
        };
        for (source, id, loss) in model {
            m.losses
                .entry(source.to_string())
                .or_default()
                .push(crate::RecordLoss {
                    id: id.to_string(),
                    source: source.to_string(),
                    loss: *loss,
                    tokens: 1,
                });
        }
        m
    }

    #[test]
    fn heldout_table_shows_paired_differences_to_base_and_baseline() {
        let base = crate::heldout::ModelLosses {
            stage: None,
            ..losses(&[
                ("math", "m:1", 3.0),
                ("math", "m:2", 3.0),
                ("code", "c:1", 2.0),
            ])
        };
        let h = |fin: crate::heldout::ModelLosses| HeldoutLosses {
            format_version: 1,
            split_seed: 1,
            ids: BTreeMap::from([
                ("code".to_string(), vec!["c:1".to_string()]),
                (
                    "math".to_string(),
                    vec!["m:1".to_string(), "m:2".to_string()],
                ),
            ]),
            models: vec![base.clone(), fin],
        };
        let mt = h(losses(&[
            ("math", "m:1", 2.0),
            ("math", "m:2", 2.0),
            ("code", "c:1", 1.5),
        ]));
        let seq = h(losses(&[
            ("math", "m:1", 2.5),
            ("math", "m:2", 2.5),
            ("code", "c:1", 1.0),
        ]));
        let r = RunResults {
            format_version: 1,
            plan: "p".into(),
            metrics: BTreeMap::new(),
            stages: vec![],
            base_heldout_loss: BTreeMap::new(),
            provenance: BTreeMap::new(),
        };
        let rows = [
            Row {
                label: "Multi-task".into(),
                results: &r,
                heldout: Some(&mt),
                items: None,
            },
            Row {
                label: "Sequential".into(),
                results: &r,
                heldout: Some(&seq),
                items: None,
            },
        ];
        let t = render_comparison(&rows, Some("Multi-task"));
        assert!(t.contains("Δ vs Multi-task"), "{t}");
        let line = |who: &str, src: &str| {
            t.lines()
                .find(|l| {
                    l.starts_with(&format!("| {who}")) && l.contains(&format!("loss: {src} "))
                })
                .unwrap_or_else(|| panic!("no {who}/{src} row in {t}"))
                .to_string()
        };
        // Constant differences: zero-width intervals at the difference.
        assert!(
            line("Sequential", "math")
                .contains("-0.500 [-0.500, -0.500] | +0.500 [+0.500, +0.500]"),
            "{t}"
        );
        assert!(
            line("Sequential", "code").contains("-1.000 [-1.000, -1.000] | -0.500"),
            "{t}"
        );
        assert!(line("Multi-task", "math").contains("(baseline)"), "{t}");
        assert!(
            line("Base model", "math").contains("3.000 [3.000, 3.000] n=2"),
            "{t}"
        );
        let no_baseline = render_comparison(&rows, Some("DMT"));
        assert!(!no_baseline.contains("Δ vs DMT"), "{no_baseline}");
    }
}
