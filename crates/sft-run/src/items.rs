//! Per-item benchmark scores (`<run>/eval/<task>.items.json`), so two runs scored on the same
//! items (the seeded GSM8K and HumanEval subsets are the same for every strategy and seed) can be
//! compared item by item ([`paired`]).
//!
//! A backend writes them with [`write`] when it reports a task; GSM8K's carry both of lm-eval's
//! filters (`flexible-extract`, the headline `gsm8k_acc`, and `strict-match`, reported as
//! `gsm8k_strict_acc`), HumanEval's `pass@1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Metric, Task};
use crate::error::Result;
use crate::files::{read_json, write_json};

/// GSM8K's headline score: lm-eval's `exact_match,flexible-extract`.
pub const FLEXIBLE: &str = "flexible-extract";
/// GSM8K's `exact_match,strict-match` (the `#### N` answer).
pub const STRICT: &str = "strict-match";
/// HumanEval's score per problem (one greedy sample).
pub const PASS_AT_1: &str = "pass@1";

/// One item's scores (0 or 1 for the benchmarks), by score name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// The item's id (`gsm8k/test.jsonl:17`, `HumanEval/3`).
    pub id: String,
    /// Score name → value.
    pub scores: BTreeMap<String, f64>,
}

/// `eval/<task>.items.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskItems {
    /// The task.
    pub task: Task,
    /// Every item scored, in order.
    pub items: Vec<ItemScore>,
}

impl TaskItems {
    /// The values of one score, by item id.
    pub fn by_id(&self, score: &str) -> BTreeMap<&str, f64> {
        self.items
            .iter()
            .filter_map(|i| i.scores.get(score).map(|v| (i.id.as_str(), *v)))
            .collect()
    }

    /// The proportion of items with score 1 under `score`, with its Wilson interval.
    pub fn proportion(&self, score: &str) -> Option<Metric> {
        let v = self.by_id(score);
        if v.is_empty() {
            return None;
        }
        let k = v.values().filter(|x| **x >= 0.5).count();
        Some(Metric::wilson(k, v.len()))
    }
}

/// The path of a task's items in an evaluation directory.
pub fn path(eval_dir: &Path, task: Task) -> PathBuf {
    eval_dir.join(format!("{}.items.json", task.file_name()))
}

/// Writes a task's items to `eval_dir`.
pub fn write(eval_dir: &Path, items: &TaskItems) -> Result<()> {
    write_json(&path(eval_dir, items.task), items)
}

/// Every task's items of a run directory (tasks without a file are absent).
pub fn read_run(run_dir: &Path) -> Result<BTreeMap<Task, TaskItems>> {
    let mut out = BTreeMap::new();
    for task in Task::ALL {
        let p = path(&run_dir.join("eval"), task);
        if p.exists() {
            out.insert(task, read_json(&p)?);
        }
    }
    Ok(out)
}

/// The paired difference `a − b` under `score` over the items both scored (matched by id, in
/// `a`'s order):
/// [`Metric::paired_bootstrap`] with [`crate::heldout::RESAMPLES`] draws and
/// [`crate::heldout::BOOTSTRAP_SEED`]. `None` without a shared item.
pub fn paired(a: &TaskItems, b: &TaskItems, score: &str) -> Option<Metric> {
    let theirs = b.by_id(score);
    let (x, y): (Vec<f64>, Vec<f64>) = a
        .items
        .iter()
        .filter_map(|i| {
            let va = i.scores.get(score)?;
            theirs.get(i.id.as_str()).map(|vb| (*va, *vb))
        })
        .unzip();
    if x.is_empty() {
        return None;
    }
    Metric::paired_bootstrap(
        &x,
        &y,
        crate::heldout::RESAMPLES,
        crate::heldout::BOOTSTRAP_SEED,
    )
    .ok()
}
