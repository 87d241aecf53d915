//! Slurm job arrays over a sweep's manifest.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Resources of every array task.
#[derive(clap::Args, Debug, Clone)]
pub struct SlurmArgs {
    /// CPUs per array task.
    #[arg(long, default_value_t = 2)]
    pub cpus_per_task: usize,
    /// Wall-time limit per task (HH:MM:SS).
    #[arg(long, default_value = "04:00:00")]
    pub slurm_time: String,
    /// Partition to submit to.
    #[arg(long)]
    pub partition: Option<String>,
    /// Memory per task (e.g. 8G).
    #[arg(long)]
    pub mem: Option<String>,
    /// Ask for one GPU per task.
    #[arg(long)]
    pub gpus: bool,
    /// Folder of the per-task logs [default: OUT/slurm-logs].
    #[arg(long)]
    pub slurm_log_dir: Option<PathBuf>,
    /// At most this many tasks at once.
    #[arg(long)]
    pub max_parallel: Option<usize>,
}

/// An sbatch script for an array of `runs` tasks, task `i` running line `i`.
pub fn sbatch_script(
    args: &SlurmArgs,
    sprout_bin: &Path,
    manifest: &Path,
    runs: usize,
    log_dir: &Path,
    gpus: bool,
) -> Result<String> {
    if runs == 0 {
        bail!("the sweep has no runs");
    }
    let mut s = String::from("#!/bin/bash\n#SBATCH --job-name=sprout-sweep\n");
    let throttle = args
        .max_parallel
        .map(|n| format!("%{n}"))
        .unwrap_or_default();
    s += &format!("#SBATCH --array=0-{}{throttle}\n", runs - 1);
    s += &format!("#SBATCH --cpus-per-task={}\n", args.cpus_per_task);
    s += &format!("#SBATCH --time={}\n", args.slurm_time);
    if gpus {
        s += "#SBATCH --gres=gpu:1\n";
    }
    s += "#SBATCH --requeue\n";
    s += &format!("#SBATCH --output={}/%A_%a.out\n", log_dir.display());
    s += &format!(
        "exec '{}' run-job --manifest '{}' --index \"$SLURM_ARRAY_TASK_ID\"\n",
        sprout_bin.display(),
        manifest.display()
    );
    Ok(s)
}
