//! One long results table (a row per cell and metric, with confidence intervals) and the paper's
//! Table 1, from the cells' `results.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde::Serialize;
use sft_run::{ErrorKind, Metric};

use crate::error::{io, Error, Result};
use crate::layout::Layout;
use crate::spec::Cell;
use crate::state::{read_state, CellState};

/// The metrics the runner reports: `(key, display name, shown as percent, higher is better)`.
/// Of the representation analysis (`hidden.*`, `[run.eval.hidden]`) only the final model's
/// overall scores and its silhouette change from the base model are shown in tables and plots
/// (separation is not better or worse: "higher" only means no ↓ arrow); every `hidden.*` key is
/// in the long table.
pub const METRICS: [(&str, &str, bool, bool); 12] = [
    ("gsm8k_acc", "GSM8K (flexible-extract)", true, true),
    ("gsm8k_strict_acc", "GSM8K (strict-match)", true, true),
    ("humaneval_pass@1", "HumanEval", true, true),
    ("mtbench_score", "MT-Bench", false, true),
    ("heldout_loss.math", "Math held-out loss", false, false),
    ("heldout_loss.code", "Code held-out loss", false, false),
    (
        "heldout_loss.general",
        "General held-out loss",
        false,
        false,
    ),
    (
        "general_heldout_loss",
        "General held-out loss",
        false,
        false,
    ),
    (
        "hidden.final.all.silhouette",
        "Source silhouette",
        false,
        true,
    ),
    (
        "hidden.final.all.knn_purity",
        "Source 10-NN purity",
        true,
        true,
    ),
    (
        "hidden.final.all.probe_accuracy",
        "Source probe accuracy",
        true,
        true,
    ),
    (
        "hidden.final-vs-base.all.silhouette",
        "Silhouette change from base",
        false,
        true,
    ),
];

/// The prefix of the representation analysis' metrics.
pub(crate) const HIDDEN_PREFIX: &str = "hidden.";

/// The metrics a table or plot shows: every metric of the rows, in [`METRICS`] order, less
/// `general_heldout_loss` when `heldout_loss.general` is there (the same value under its older
/// name), and less the `hidden.*` scores that [`METRICS`] does not list (per source pair, per
/// model, per score: dozens of them).
pub(crate) fn shown_metrics<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let unlisted_hidden = k.starts_with(HIDDEN_PREFIX) && !METRICS.iter().any(|m| m.0 == k);
        if !unlisted_hidden && !out.iter().any(|m| m == k) {
            out.push(k.to_string());
        }
    }
    if out.iter().any(|m| m == "heldout_loss.general") {
        out.retain(|m| m != "general_heldout_loss");
    }
    out.sort_by_key(|m| {
        (
            METRICS
                .iter()
                .position(|x| x.0 == m.as_str())
                .unwrap_or(METRICS.len()),
            m.clone(),
        )
    });
    out
}

/// One value per seed → what a table or plot shows: the value with its own (per-item)
/// interval for one seed, the mean with a 95% Student-t interval across seeds
/// ([`Metric::mean_t`]) for several.
pub(crate) fn across_seeds(values: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    match values {
        [one] => *one,
        _ => {
            let v: Vec<f64> = values.iter().map(|t| t.0).collect();
            let e = Metric::mean_t(&v);
            (e.value, e.ci_low, e.ci_high)
        }
    }
}

/// How a metric is shown: its display name, and whether values are fractions shown in percent.
pub(crate) fn metric_info(key: &str) -> (String, bool, bool) {
    METRICS
        .iter()
        .find(|m| m.0 == key)
        .map(|m| (m.1.to_string(), m.2, m.3))
        .unwrap_or_else(|| (key.to_string(), false, true))
}

/// One row: one metric of one cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    /// The sweep.
    pub sweep: String,
    /// The cell id.
    pub cell: String,
    /// The cell's index.
    pub index: u64,
    /// The grids that produced the cell, `;`-separated.
    pub grids: String,
    /// The strategy (`dmt:1/256`).
    pub strategy: String,
    /// Its label (`DMT (k=1/256)`).
    pub strategy_label: String,
    /// The model name.
    pub model: String,
    /// The seed.
    pub seed: u64,
    /// DMT's k, if any.
    pub k: Option<String>,
    /// `source=proportion` pairs, `;`-separated.
    pub proportions: String,
    /// The metric key (`gsm8k_acc`).
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
    /// Items evaluated.
    pub n: u64,
}

/// One cell's state in a [`ResultsTable`].
#[derive(Debug, Clone, PartialEq)]
pub struct CellSummary {
    /// The cell.
    pub cell: Cell,
    /// Its state name ([`CellState::name`]).
    pub state: String,
    /// The runner's error, if failed.
    pub error: Option<String>,
    /// The error's kind, if failed and the runner recorded one (`status.json`'s `error_kind`).
    pub error_kind: Option<ErrorKind>,
}

/// Results of a sweep: metric rows of finished cells, and every cell's state.
#[derive(Debug, Clone)]
pub struct ResultsTable {
    /// A row per (done cell, metric), in cell order then metric order.
    pub rows: Vec<ResultRow>,
    /// Per cell, in order: its state, and its error and the error's kind if failed.
    pub cells: Vec<CellSummary>,
}

/// Reads every cell's state and results.
pub fn collect(cells: &[Cell], layout: &Layout) -> Result<ResultsTable> {
    let mut rows = Vec::new();
    let mut states = Vec::new();
    for cell in cells {
        let state = read_state(&layout.run_dir(&cell.id))?;
        let (error, error_kind) = match &state {
            CellState::Failed { error, kind } => (Some(error.clone()), *kind),
            _ => (None, None),
        };
        states.push(CellSummary {
            cell: cell.clone(),
            state: state.name().to_string(),
            error,
            error_kind,
        });
        let CellState::Done(results) = state else {
            continue;
        };
        let mut metrics: Vec<(&String, &Metric)> = results.metrics.iter().collect();
        let order = |k: &str| {
            METRICS
                .iter()
                .position(|m| m.0 == k)
                .unwrap_or(METRICS.len())
        };
        metrics.sort_by_key(|(k, _)| (order(k), (*k).clone()));
        for (key, m) in metrics {
            rows.push(ResultRow {
                sweep: cell.sweep.clone(),
                cell: cell.id.clone(),
                index: cell.index as u64,
                grids: cell.grids.join(";"),
                strategy: cell.strategy.clone(),
                strategy_label: cell.strategy_label.clone(),
                model: cell.model.clone(),
                seed: cell.seed,
                k: cell.k.map(|k| k.to_string()),
                proportions: cell
                    .proportions
                    .iter()
                    .map(|(s, r)| format!("{s}={r}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                metric: key.clone(),
                value: m.value,
                ci_low: m.ci_low,
                ci_high: m.ci_high,
                n: m.n as u64,
            });
        }
    }
    Ok(ResultsTable {
        rows,
        cells: states,
    })
}

const COLUMNS: [&str; 15] = [
    "sweep",
    "cell",
    "index",
    "grids",
    "strategy",
    "strategy_label",
    "model",
    "seed",
    "k",
    "proportions",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
];

fn row_strings(r: &ResultRow) -> [String; 15] {
    [
        r.sweep.clone(),
        r.cell.clone(),
        r.index.to_string(),
        r.grids.clone(),
        r.strategy.clone(),
        r.strategy_label.clone(),
        r.model.clone(),
        r.seed.to_string(),
        r.k.clone().unwrap_or_default(),
        r.proportions.clone(),
        r.metric.clone(),
        format!("{}", r.value),
        format!("{}", r.ci_low),
        format!("{}", r.ci_high),
        r.n.to_string(),
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `results.parquet`, `results.csv`, `results.md` (metric rows) and `cells.md` (every
/// cell's state) into `dir`; returns the paths.
pub fn write_tables(table: &ResultsTable, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let csv_path = dir.join("results.csv");
    let mut csv = COLUMNS.join(",") + "\n";
    for r in &table.rows {
        csv.push_str(
            &row_strings(r)
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    std::fs::write(&csv_path, csv).map_err(io(&csv_path))?;

    let md_path = dir.join("results.md");
    let mut md = String::from(
        "| cell | strategy | model | proportions | k | seed | metric | value | 95% CI | n |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---:|---|---:|\n");
    for r in &table.rows {
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {:.4} | [{:.4}, {:.4}] | {} |\n",
            r.cell,
            r.strategy_label,
            r.model,
            r.proportions.replace(';', ", "),
            r.k.as_deref().unwrap_or("–"),
            r.seed,
            r.metric,
            r.value,
            r.ci_low,
            r.ci_high,
            r.n
        ));
    }
    std::fs::write(&md_path, md).map_err(io(&md_path))?;

    let cells_path = dir.join("cells.md");
    let mut cm = String::from(
        "| # | cell | grids | state | error kind | error |\n|---:|---|---|---|---|---|\n",
    );
    for CellSummary {
        cell,
        state,
        error,
        error_kind,
    } in &table.cells
    {
        let err = error
            .as_deref()
            .unwrap_or("")
            .replace('\n', " ")
            .replace('|', "\\|");
        let err: String = err.chars().take(300).collect();
        cm.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            cell.index,
            cell.id,
            cell.grids.join(", "),
            state,
            error_kind.map(ErrorKind::as_str).unwrap_or(""),
            err
        ));
    }
    std::fs::write(&cells_path, cm).map_err(io(&cells_path))?;

    let pq_path = dir.join("results.parquet");
    write_parquet(table, &pq_path)?;
    Ok(vec![pq_path, csv_path, md_path, cells_path])
}

fn write_parquet(table: &ResultsTable, path: &Path) -> Result<()> {
    let pq = |e: &dyn std::fmt::Display| Error::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let rows = &table.rows;
    let s = |f: fn(&ResultRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let u = |f: fn(&ResultRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let fl = |f: fn(&ResultRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        s(|r| r.sweep.clone()),
        s(|r| r.cell.clone()),
        u(|r| r.index),
        s(|r| r.grids.clone()),
        s(|r| r.strategy.clone()),
        s(|r| r.strategy_label.clone()),
        s(|r| r.model.clone()),
        u(|r| r.seed),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| r.k.clone())
                .collect::<Vec<Option<String>>>(),
        )),
        s(|r| r.proportions.clone()),
        s(|r| r.metric.clone()),
        fl(|r| r.value),
        fl(|r| r.ci_low),
        fl(|r| r.ci_high),
        u(|r| r.n),
    ];
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(&columns)
        .map(|(name, col)| Field::new(*name, col.data_type().clone(), *name == "k"))
        .collect();
    debug_assert!(fields.iter().all(|f| matches!(
        f.data_type(),
        DataType::Utf8 | DataType::UInt64 | DataType::Float64
    )));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| pq(&e))?;
    let file = File::create(path).map_err(io(path))?;
    let mut writer = ArrowWriter::try_new(file, schema, None).map_err(|e| pq(&e))?;
    writer.write(&batch).map_err(|e| pq(&e))?;
    writer.close().map_err(|e| pq(&e))?;
    Ok(())
}

/// The paper's Table 1 in Markdown from the cells trained on full data (every proportion 1):
/// a row per strategy, a column per model and metric; several seeds give the mean over seeds with
/// a 95% Student-t interval across them, one seed its value with its per-item interval.
/// Percent metrics are shown ×100 as in the paper. `None` when no such cell is done.
pub fn table1(table: &ResultsTable) -> Option<String> {
    let full: BTreeSet<&str> = table
        .cells
        .iter()
        .map(|s| &s.cell)
        .filter(|c| c.proportions.values().all(|r| r.numer() == r.denom()))
        .map(|c| c.id.as_str())
        .collect();
    let rows: Vec<&ResultRow> = table
        .rows
        .iter()
        .filter(|r| full.contains(r.cell.as_str()))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let order = |label: &str, strategy: &str| -> (usize, String) {
        let rank = match strategy {
            "individual:general" => 0,
            "individual:math" => 1,
            "individual:code" => 2,
            s if s.starts_with("individual:") => 3,
            "multi-task" => 4,
            "sequential" => 5,
            "mixed-sequential" => 6,
            _ => 7,
        };
        (rank, label.to_string())
    };
    let mut labels: Vec<(usize, String, String)> = Vec::new();
    let mut models: Vec<String> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    // (label, model, metric) -> values
    let mut cells: BTreeMap<(String, String, String), Vec<&ResultRow>> = BTreeMap::new();
    for r in &rows {
        let (rank, label) = order(&r.strategy_label, &r.strategy);
        // DMT rows sort by k descending-data: larger k last.
        if !labels.iter().any(|(_, l, _)| *l == label) {
            labels.push((rank, label.clone(), r.k.clone().unwrap_or_default()));
        }
        if !models.contains(&r.model) {
            models.push(r.model.clone());
        }
        if !metrics.contains(&r.metric) {
            metrics.push(r.metric.clone());
        }
        cells
            .entry((label, r.model.clone(), r.metric.clone()))
            .or_default()
            .push(r);
    }
    labels.sort_by(|a, b| {
        let kv = |k: &str| {
            sft_schedule::Ratio::parse(k)
                .map(|r| r.as_f64())
                .unwrap_or(0.0)
        };
        (a.0, kv(&a.2).to_bits(), &a.1).cmp(&(b.0, kv(&b.2).to_bits(), &b.1))
    });
    let metrics = shown_metrics(metrics.iter().map(String::as_str));
    let mut max_seeds = 1;
    let mut out = String::from("| Method |");
    let mut sep = String::from("|---|");
    for model in &models {
        for m in &metrics {
            let (name, pct, higher) = metric_info(m);
            let arrow = if higher { "" } else { " ↓" };
            out.push_str(&format!(
                " {model} {name}{}{arrow} |",
                if pct { " (%)" } else { "" }
            ));
            sep.push_str("---:|");
        }
    }
    out.push('\n');
    out.push_str(&sep);
    out.push('\n');
    for (_, label, _) in &labels {
        out.push_str(&format!("| {label} |"));
        for model in &models {
            for m in &metrics {
                let (_, pct, _) = metric_info(m);
                let scale = if pct { 100.0 } else { 1.0 };
                match cells.get(&(label.clone(), model.clone(), m.clone())) {
                    Some(v) if !v.is_empty() => {
                        max_seeds = max_seeds.max(v.len());
                        let t: Vec<(f64, f64, f64)> =
                            v.iter().map(|r| (r.value, r.ci_low, r.ci_high)).collect();
                        let (m, lo, hi) = across_seeds(&t);
                        let seeds = if v.len() > 1 {
                            format!(" (s={})", v.len())
                        } else {
                            String::new()
                        };
                        out.push_str(&format!(
                            " {:.2} [{:.2}, {:.2}]{seeds} |",
                            m * scale,
                            lo * scale,
                            hi * scale
                        ));
                    }
                    _ => out.push_str(" – |"),
                }
            }
        }
        out.push('\n');
    }
    out.push_str(if max_seeds > 1 {
        "\nA cell with several seeds (s=N) shows the mean over seeds with a 95% Student-t interval across \
         seeds; a cell with one seed shows its value with its 95% per-item interval (results.md has every \
         seed's per-item interval). GSM8K is lm-eval's flexible-extract unless marked strict-match. \
         ↓: lower is better.\n"
    } else {
        "\nBrackets hold the 95% per-item interval (one seed). GSM8K is lm-eval's flexible-extract unless \
         marked strict-match. ↓: lower is better.\n"
    });
    Some(out)
}

/// The paired comparisons of the cells trained on full data (every proportion 1), one table per
/// model and seed: the runner's [`sft_run::table::render_comparison`] over those cells (each
/// strategy's held-out losses per source and benchmark items, with the paired difference to the
/// base model and to multi-task on the same records and items). Paired intervals only exist
/// within a seed (the same held-out records, the same base model): across seeds, compare the
/// per-seed differences. `None` when no such cell has `heldout_loss.json`.
pub fn paired_tables(table: &ResultsTable, layout: &Layout) -> Result<Option<String>> {
    struct Loaded {
        strategy: String,
        label: String,
        results: Box<sft_run::RunResults>,
        heldout: sft_run::heldout::HeldoutLosses,
        items: BTreeMap<sft_run::Task, sft_run::items::TaskItems>,
    }
    let run_err = |cell: &str| {
        let cell = cell.to_string();
        move |e: sft_run::Error| Error::RunFile {
            cell: cell.clone(),
            source: Box::new(e),
        }
    };
    // (model, seed) → the done full-data cells, in cell order.
    let mut groups: BTreeMap<(String, u64), Vec<Loaded>> = BTreeMap::new();
    for s in &table.cells {
        let c = &s.cell;
        if !c.proportions.values().all(|r| r.numer() == r.denom()) {
            continue;
        }
        let dir = layout.run_dir(&c.id);
        let CellState::Done(results) = read_state(&dir)? else {
            continue;
        };
        if !dir.join(sft_run::heldout::FILE).exists() {
            continue;
        }
        let heldout = sft_run::heldout::HeldoutLosses::read(&dir).map_err(run_err(&c.id))?;
        let items = sft_run::items::read_run(&dir).map_err(run_err(&c.id))?;
        groups
            .entry((c.model.clone(), c.seed))
            .or_default()
            .push(Loaded {
                strategy: c.strategy.clone(),
                label: c.strategy_label.clone(),
                results,
                heldout,
                items,
            });
    }
    if groups.is_empty() {
        return Ok(None);
    }
    let mut out = String::from(
        "Paired comparisons of the full-data cells: every strategy of a model and seed is scored \
         on the same held-out records (and benchmark items), so each Δ is the paired difference \
         with a 95% bootstrap interval over those records. For a loss a negative Δ means a lower \
         loss than the model compared to.\n",
    );
    for ((model, seed), cells) in &groups {
        let baseline = cells
            .iter()
            .find(|l| l.strategy == "multi-task")
            .map(|l| l.label.clone());
        let rows: Vec<sft_run::table::Row<'_>> = cells
            .iter()
            .map(|l| sft_run::table::Row {
                label: l.label.clone(),
                results: &l.results,
                heldout: Some(&l.heldout),
                items: Some(&l.items),
            })
            .collect();
        out.push_str(&format!("\n### {model}, seed {seed}\n\n"));
        out.push_str(&sft_run::table::render_comparison(
            &rows,
            baseline.as_deref(),
        ));
    }
    Ok(Some(out))
}
