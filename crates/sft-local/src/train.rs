//! [`LocalBackend`]'s training: one stage of a plan is one [`sft_train::TrainJob`] run by
//! [`sft_train::train`] (the path the `train` example takes too), whose self-contained `final/`
//! is then moved into the stage store. With [`crate::LocalOptions::leader`] the job trains on
//! every rank of a data-parallel launch ([`crate::dist`]).

use std::path::Path;

use sft_run::{TrainReport, TrainRequest};
use sft_train::{Resume, RunOptions, TrainData, TrainJob};

use crate::error::{Error, Result};
use crate::local::LocalBackend;

impl LocalBackend {
    /// [`sft_run::Backend::train`] with this crate's error: builds the stage's job (the
    /// backend's tokenizer, the stage's resolved config, resume from the stage's own
    /// checkpoints, the previous stage's optimizer state when carried), runs it, and moves
    /// `final/` to `req.model_out`.
    pub(crate) fn train_stage(&self, req: &TrainRequest<'_>) -> Result<TrainReport> {
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
        let job = TrainJob {
            model: req.init_model.to_path_buf(),
            tokenizer: Some(self.opts.tokenizer_from.clone()),
            data: TrainData::Path(req.data.to_path_buf()),
            config: req.stage.config.clone(),
            out_dir: req.work_dir.to_path_buf(),
            device: self.opts.device,
            run: RunOptions {
                resume: Resume::Auto,
                progress: self.opts.progress,
                stop: self.opts.stop.clone(),
                stop_after: self.opts.stop_after,
                carry_optimizer_from: req.init_optimizer.map(Path::to_path_buf),
                ..RunOptions::default()
            },
            distributed: None,
        };
        // Data parallel: the other ranks get the same job and train it with this one.
        let outcome = match &self.opts.leader {
            Some(leader) => leader.train(&job)?,
            None => sft_train::train(&job).map_err(Error::train("training"))?,
        };
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
            examples: outcome.examples,
            final_train_loss: outcome.last_loss,
            resumed_from: outcome.resumed_from,
        })
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
