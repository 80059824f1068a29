//! [`LocalBackend`]'s training: one stage of a plan with `sft-train`.

use std::path::Path;

use sft_run::{TrainReport, TrainRequest};

use crate::error::{Error, Result};
use crate::local::LocalBackend;

impl LocalBackend {
    /// [`Backend::train`] with this crate's error.
    pub(crate) fn train_stage(&self, req: &TrainRequest<'_>) -> Result<TrainReport> {
        let cfg = req.stage.config.clone();
        if let Some(prev) = req.init_optimizer {
            let has_state = std::fs::read_dir(prev.join("checkpoints"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if !has_state && !req.work_dir.join("checkpoints").exists() {
                return Err(Error::Settings(format!(
                    "optimizer_state = \"carry\": the previous stage's optimizer state is not in {} \
                     (it was trained by a plan whose next stage restarts the optimizer, and its \
                     checkpoints were removed); delete that stage's store directory so it is retrained \
                     with its state kept",
                    prev.display()
                )));
            }
        }
        let encoder = self.encoder(&cfg.template)?;
        let records =
            sft_train::read_records(req.data).map_err(Error::train("reading stage data"))?;
        let (examples, data_report) = sft_train::tokenize(
            &records,
            &encoder,
            cfg.max_len,
            cfg.overlong,
            cfg.on_mask_error,
        )
        .map_err(Error::train("tokenizing stage data"))?;
        let mut loaded = self.load(req.init_model)?;
        let run = sft_train::RunOptions {
            resume: sft_train::Resume::Auto,
            progress: self.opts.progress,
            stop: self.opts.stop.clone(),
            stop_after: self.opts.stop_after,
            carry_optimizer_from: req.init_optimizer.map(Path::to_path_buf),
            ..sft_train::RunOptions::default()
        };
        let outcome = sft_train::train_model(
            &loaded.model,
            &mut loaded.vs,
            &examples,
            &data_report,
            &encoder,
            &cfg,
            req.work_dir,
            &run,
        )
        .map_err(Error::train("training"))?;
        if outcome.interrupted {
            return Err(Error::Interrupted {
                step: outcome.steps,
                total: outcome.total_steps,
            });
        }
        let final_dir = outcome.final_dir.clone().ok_or_else(|| Error::Model {
            context: "training".into(),
            source: "the trainer finished without a final model".into(),
        })?;
        move_dir(&final_dir, req.model_out)?;
        self.save_tokenizer(req.model_out);
        if !req.keep_optimizer_state {
            // The weights are in model_out; the checkpoints (weights + AdamW moments, 3× the
            // model) are only needed to resume this stage, which is now done.
            let ckpts = req.work_dir.join("checkpoints");
            if ckpts.exists() {
                std::fs::remove_dir_all(&ckpts).map_err(Error::io("remove", &ckpts))?;
            }
        }
        Ok(TrainReport {
            steps: outcome.steps,
            examples: examples.len(),
            final_train_loss: outcome.last_loss,
            resumed_from: outcome.resumed_from,
        })
    }

    fn save_tokenizer(&self, dir: &Path) {
        if let Err(e) = self.tokenizer.save_hf_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not write the tokenizer next to the weights");
        }
    }
}

/// Moves the trainer's `final/` directory to `to` (replacing it) with one rename: the files
/// are not copied, so a stage costs one copy of the weights on disk.
fn move_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(Error::io("remove", to))?;
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    std::fs::rename(from, to).map_err(Error::io("rename", from))?;
    Ok(())
}
