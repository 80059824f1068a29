//! `--dump-batches`: the first global batches as JSON and as readable text, so users can see
//! exactly which tokens carry loss.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::batch::StepPlan;
use crate::checkpoint::write_atomic;
use crate::config::TrainConfig;
use crate::data::{ChatEncoder, Example, IGNORE};
use crate::error::{Error, Result};

/// Opening and closing markers around trained spans in the readable view.
pub const TRAINED_OPEN: &str = "\u{27e6}";
/// See [`TRAINED_OPEN`].
pub const TRAINED_CLOSE: &str = "\u{27e7}";

#[derive(Serialize)]
struct DumpRow<'a> {
    record_ids: Vec<&'a str>,
    sources: Vec<&'a str>,
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    position_ids: Vec<i64>,
}

#[derive(Serialize)]
struct DumpStep<'a> {
    step: usize,
    packed: bool,
    micro_batches: Vec<Vec<DumpRow<'a>>>,
}

/// Renders one example with trained spans wrapped in `⟦…⟧`.
pub fn readable(ex: &Example, encoder: &dyn ChatEncoder) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ex.input_ids.len() {
        let trained = i > 0 && ex.labels[i] != IGNORE;
        let mut j = i + 1;
        while j < ex.input_ids.len() && (ex.labels[j] != IGNORE) == trained {
            j += 1;
        }
        let text = encoder.decode(&ex.input_ids[i..j]);
        if trained {
            let _ = write!(out, "{TRAINED_OPEN}{text}{TRAINED_CLOSE}");
        } else {
            out.push_str(&text);
        }
        i = j;
    }
    out
}

/// Writes `step-NNNN.json` and `step-NNNN.txt` for the first `cfg.dump_batches` steps.
pub fn dump_batches(
    dir: &Path,
    examples: &[Example],
    plans: &[Vec<StepPlan>],
    cfg: &TrainConfig,
    encoder: &dyn ChatEncoder,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    for (k, step) in plans.iter().flatten().take(cfg.dump_batches).enumerate() {
        let mut text = format!(
            "# step {} ({} micro-batches); trained tokens are inside {TRAINED_OPEN}…{TRAINED_CLOSE}\n",
            k + 1,
            step.micro.len()
        );
        let mut micro = Vec::new();
        for (m, mb) in step.micro.iter().enumerate() {
            let mut rows = Vec::new();
            for (r, row) in mb.rows.iter().enumerate() {
                let mut d = DumpRow {
                    record_ids: vec![],
                    sources: vec![],
                    input_ids: vec![],
                    labels: vec![],
                    position_ids: vec![],
                };
                for (n, &i) in row.iter().enumerate() {
                    let ex = &examples[i];
                    d.record_ids.push(&ex.record_id);
                    d.sources.push(&ex.source);
                    d.input_ids.extend(&ex.input_ids);
                    // As collated: the first label of every conversation is never a target.
                    d.labels.push(IGNORE);
                    d.labels.extend(&ex.labels[1..]);
                    d.position_ids.extend(0..ex.input_ids.len() as i64);
                    let _ = write!(
                        text,
                        "\n## micro-batch {m} row {r} sample {n}: {} ({}), {} tokens, {} trained\n{}\n",
                        ex.record_id,
                        ex.source,
                        ex.input_ids.len(),
                        ex.target_tokens(),
                        readable(ex, encoder)
                    );
                }
                rows.push(d);
            }
            micro.push(rows);
        }
        let js = DumpStep {
            step: k + 1,
            packed: cfg.packing,
            micro_batches: micro,
        };
        let body = serde_json::to_vec(&js).map_err(|source| Error::Serialize {
            what: "batch dump",
            source,
        })?;
        write_atomic(&dir.join(format!("step-{:04}.json", k + 1)), &body)?;
        write_atomic(&dir.join(format!("step-{:04}.txt", k + 1)), text.as_bytes())?;
    }
    tracing::info!(dir = %dir.display(), "dumped the first batches");
    Ok(())
}
