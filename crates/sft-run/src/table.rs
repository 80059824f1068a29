//! A plain-text table shaped like the paper's Table 1: one row per strategy, one column per ability.

use crate::backend::Metric;
use crate::runner::RunResults;

/// One row: a label (`DMT (k=1/256)`) and its results.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The strategy's label.
    pub label: String,
    /// Its run's results.
    pub results: &'a RunResults,
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

/// Renders the table. The general column is the MT-Bench score when every row has one, else the
/// held-out loss on general conversations (lower is better), and its header says which.
pub fn render(rows: &[Row<'_>]) -> String {
    let judged = !rows.is_empty()
        && rows
            .iter()
            .all(|r| r.results.metrics.contains_key("mtbench_score"));
    let general_header = if judged {
        "General: MT-Bench score (1-10)"
    } else {
        "General: held-out loss (nats/token, lower is better)"
    };
    let header = [
        "Strategy",
        "GSM8K acc %",
        "HumanEval pass@1 %",
        general_header,
        "Stages trained/reused",
    ];
    let mut body: Vec<[String; 5]> = Vec::new();
    for r in rows {
        let m = &r.results.metrics;
        let general = if judged {
            m.get("mtbench_score")
        } else {
            m.get("general_heldout_loss")
        };
        let reused = r.results.stages.iter().filter(|s| s.reused).count();
        body.push([
            r.label.clone(),
            cell(m.get("gsm8k_acc"), true),
            cell(m.get("humaneval_pass@1"), true),
            cell(general, false),
            format!("{}/{}", r.results.stages.len() - reused, reused),
        ]);
    }
    let mut widths = header.map(|h| h.chars().count());
    for row in &body {
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
    let mut out = String::new();
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in &body {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str("Intervals are 95% (Wilson for accuracies, mean ± 1.96·SE for the loss).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn general_column_says_what_it_is() {
        let mut metrics = BTreeMap::new();
        metrics.insert("gsm8k_acc".to_string(), Metric::wilson(1, 4));
        metrics.insert(
            "general_heldout_loss".to_string(),
            Metric::mean_normal(&[1.0, 2.0]),
        );
        let r = RunResults {
            format_version: 1,
            plan: "p".into(),
            metrics,
            stages: vec![],
            provenance: BTreeMap::new(),
        };
        let t = render(&[Row {
            label: "Multi-task".into(),
            results: &r,
        }]);
        assert!(t.contains("held-out loss"), "{t}");
        assert!(t.contains("25.0 ["), "{t}");
        assert!(t.contains("1.500 ["), "{t}");
        assert!(t.contains("| —"), "HumanEval was not evaluated: {t}");
    }
}
