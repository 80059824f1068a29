//! `--slurm`: the sweep as a Slurm job array over the same run-directory layout.
//!
//! Task `i` reads line `i + 2` of `OUT/cells.tsv` (after the header) and runs that cell's plan
//! into that cell's run directory, so results merge with local runs and `cargo xtask sweep`
//! (or `--collect-only`) afterwards tabulates and plots them. A task whose cell is already done
//! exits at once, so resubmitting the array finishes only what is left.
//!
//! With `[slurm] gpus_per_node = G` above 1 (or `nodes = N` above 1) a cell is one data-parallel
//! run of `N × G` ranks: the script asks for `N` nodes with `G` tasks and `G` GPUs each, exports
//! `MASTER_ADDR` (the first host of the allocation) and `MASTER_PORT` (`20000 + task % 20000`,
//! so array tasks sharing a node do not collide), and starts the runner with `srun`, one task per
//! GPU; each task reads its rank from `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID`
//! (`sft_dist::Launch::from_env`), rank 0 runs the plan and the others train its stages with it.
//! The manifest lookup and the done-cell skip run once, in the batch step, before `srun`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::spec::{Cell, SlurmSpec};

/// Options for [`slurm_script`].
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The runner's argv prefix (program first).
    pub runner: Vec<String>,
    /// `--data-dir` for the runner.
    pub data_dir: Option<PathBuf>,
    /// `--device` for the runner inside the allocation (default `cuda`; Slurm sets
    /// `CUDA_VISIBLE_DEVICES`).
    pub device: Option<String>,
    /// Environment exported at the top of the script (`LIBTORCH`, `LD_LIBRARY_PATH`, ...).
    pub env: Vec<(String, String)>,
    /// `#SBATCH` settings from the spec.
    pub spec: SlurmSpec,
    /// The job name.
    pub job_name: String,
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The job-array script for `cells`; writes nothing. The manifest it indexes is
/// [`Layout::manifest_tsv`], written by [`crate::prepare`].
pub fn slurm_script(cells: &[Cell], layout: &Layout, opts: &SlurmOptions) -> Result<String> {
    if cells.is_empty() {
        return Err(Error::Options("no cells to submit".into()));
    }
    if opts.runner.is_empty() {
        return Err(Error::Options("the runner command is empty".into()));
    }
    let abs = |p: &Path| -> String {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let logs = layout.slurm_dir().join("logs");
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name={}\n", quote(&opts.job_name)));
    let throttle = opts
        .spec
        .max_parallel
        .map(|m| format!("%{m}"))
        .unwrap_or_default();
    s.push_str(&format!(
        "#SBATCH --array=0-{}{throttle}\n",
        cells.len() - 1
    ));
    s.push_str(&format!("#SBATCH --output={}/%A_%a.out\n", abs(&logs)));
    let (gpus, nodes) = (opts.spec.gpus_per_node(), opts.spec.nodes());
    if gpus == 0 || nodes == 0 {
        return Err(Error::Options(
            "[slurm] gpus_per_node and nodes must be at least 1".into(),
        ));
    }
    let parallel = gpus > 1 || nodes > 1;
    if parallel {
        s.push_str(&format!("#SBATCH --nodes={nodes}\n"));
        s.push_str(&format!("#SBATCH --ntasks-per-node={gpus}\n"));
    } else {
        s.push_str("#SBATCH --ntasks=1\n");
    }
    let gres = opts
        .spec
        .gres
        .clone()
        .unwrap_or_else(|| format!("gpu:{gpus}"));
    s.push_str(&format!("#SBATCH --gres={gres}\n"));
    if let Some(p) = &opts.spec.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &opts.spec.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(c) = opts.spec.cpus_per_task {
        s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    if let Some(m) = &opts.spec.mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    for extra in &opts.spec.extra {
        s.push_str(&format!("#SBATCH {extra}\n"));
    }
    s.push_str(&format!(
        "# {} cells; task i runs line i+2 of the manifest (index, id, plan, run dir).\n",
        cells.len()
    ));
    if parallel {
        s.push_str(&format!(
            "# Each cell: {} data-parallel ranks ({nodes} node(s) × {gpus} GPU(s)), one srun task per GPU.\n",
            nodes * gpus
        ));
    }
    s.push_str(&format!(
        "# Submit: sbatch {}\n\
         set -euo pipefail\n",
        abs(&layout.slurm_dir().join("sweep.sbatch"))
    ));
    for (k, v) in &opts.env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(&format!(
        "MANIFEST={}\n",
        quote(&abs(&layout.manifest_tsv()))
    ));
    s.push_str(&format!(
        "STAGE_STORE={}\n",
        quote(&abs(&layout.stage_store()))
    ));
    s.push_str(
        "TASK=\"${SLURM_ARRAY_TASK_ID:?SLURM_ARRAY_TASK_ID is not set: submit with sbatch}\"\n\
         LINE=$(sed -n \"$((TASK + 2))p\" \"$MANIFEST\")\n\
         IFS=$'\\t' read -r INDEX ID PLAN RUN_DIR <<< \"$LINE\"\n\
         if [ \"$INDEX\" != \"$TASK\" ]; then echo \"manifest line for task $TASK holds index $INDEX\" >&2; exit 2; fi\n\
         if grep -Eq '\"state\"[[:space:]]*:[[:space:]]*\"done\"' \"$RUN_DIR/status.json\" 2>/dev/null; then\n\
         \x20 echo \"cell $ID is done\"; exit 0\n\
         fi\n\
         mkdir -p \"$RUN_DIR\"\n\
         echo \"task $TASK: cell $ID\"\n",
    );
    let mut cmd: Vec<String> = opts.runner.iter().map(|a| quote(a)).collect();
    cmd.extend(
        [
            "--plan",
            "\"$PLAN\"",
            "--run-dir",
            "\"$RUN_DIR\"",
            "--stage-store",
            "\"$STAGE_STORE\"",
        ]
        .map(String::from),
    );
    if let Some(d) = &opts.data_dir {
        cmd.push("--data-dir".into());
        cmd.push(quote(&abs(d)));
    }
    cmd.push("--device".into());
    cmd.push(quote(opts.device.as_deref().unwrap_or("cuda")));
    if parallel {
        // Rank 0 hosts the rendezvous on the first host; each rank takes cuda:SLURM_LOCALID.
        // `sed -n 1p` reads all of scontrol's output: with `head -n 1`, scontrol could die of
        // SIGPIPE and `pipefail` would end the script without a word (seen in the test).
        // srun does not pass --cpus-per-task on from sbatch in every Slurm version: say it.
        s.push_str(
            "NODELIST=\"${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set: submit with sbatch}\"\n\
             MASTER_ADDR=$(scontrol show hostnames \"$NODELIST\" | sed -n 1p)\n\
             if [ -z \"$MASTER_ADDR\" ]; then echo \"no host in $NODELIST\" >&2; exit 2; fi\n\
             export MASTER_ADDR\n\
             export MASTER_PORT=$((20000 + TASK % 20000))\n\
             echo \"ranks: ${SLURM_NTASKS:-?}, rendezvous $MASTER_ADDR:$MASTER_PORT\"\n",
        );
        s.push_str(&format!(
            "exec srun --kill-on-bad-exit=1 --nodes={nodes} --ntasks-per-node={gpus} \
             ${{SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK}} {}\n",
            cmd.join(" ")
        ));
    } else {
        s.push_str(&format!("exec {}\n", cmd.join(" ")));
    }
    Ok(s)
}
