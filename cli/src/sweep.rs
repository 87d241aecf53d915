//! Sweeps as independent runs, so they can run in one process, as several
//! processes on one machine (`--jobs N`) or as a Slurm job array.
//!
//! A sweep is a manifest, `manifest.jsonl`: one JSON object per line with
//! the run's index, id, directory (relative to the manifest) and its whole
//! [`Job`]. `sprout run-job --manifest M --index I` runs exactly line `I`:
//! it claims the run directory ([`RunDir::claim`]: a lock, and nothing but a
//! run of its own), refuses a directory whose `job.json`
//! differs from the line, resumes a growth run from its checkpoint, and
//! writes the completion marker [`DONE`] last, atomically. A finished run is
//! never run again.
//!
//! A sweep command (`sprout table`, `sprout pareto`) only plans its runs and
//! builds its outputs from their outcomes; [`SweepArgs`] and [`drive`] give
//! every such command the same `--plan`, `--collect`, `--emit-slurm FILE`
//! and `--jobs N`.

use crate::commands::eval::load_dataset;
use crate::commands::grow::{self, limited, RunConfig};
use crate::device::{BackendKind, DeviceArgs};
use crate::input::InputSpec;
use crate::run_dir::{max_threads, set_threads, RunDir};
use crate::slurm::{write_sbatch_script, SlurmArgs};
use crate::weights::load_arch_json;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sprout_core::data::{Dataset, Normalization};
use sprout_core::grow::GrowConfig;
use sprout_core::select::layer_budget;
use sprout_core::Arch;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The manifest format written by this version of sprout.
pub const MANIFEST_FORMAT: &str = "sprout-sweep-1";
/// The completion marker of a run: its [`Outcome`], written last.
pub const DONE: &str = "done.json";
/// The job a run directory belongs to.
pub const JOB_FILE: &str = "job.json";
/// Written when a run fails (removed when it is started again), so that
/// runs waiting on it stop waiting.
pub const FAILED: &str = "failed.txt";

/// Which data a run trains and tests on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// Dataset name as `--dataset` takes it (or the embedded subset's name).
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    /// The first N training images (`None`: all).
    pub train_limit: Option<usize>,
    /// The first N test images (`None`: all).
    pub test_limit: Option<usize>,
}

impl DataSpec {
    /// The training and test sets, the training set's normalisation and
    /// the description of the images of a network trained on them.
    pub fn load(&self) -> Result<(Dataset, Dataset, Normalization, InputSpec)> {
        let splits = load_dataset(&self.dataset, self.data_dir.as_deref())?;
        let train = limited(&splits.train, self.train_limit);
        let test = limited(&splits.test, self.test_limit);
        let norm = Normalization::of(&train);
        let input = splits.input_spec(norm.clone());
        Ok((train, test, norm, input))
    }
}

/// What a run does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Work {
    /// Train `arch` from scratch for `epochs` epochs.
    Fixed { arch: Arch, epochs: usize },
    /// Grow from `seed_arch` with the job's configuration, then train the
    /// final architecture from scratch for `retrain_epochs` epochs (the
    /// paper's protocol for reported accuracy).
    Grow {
        seed_arch: Arch,
        retrain_epochs: usize,
        /// Grow (uniform and random growth) toward the final parameter count
        /// of the run with this id, as `matching` says.
        match_params_of: Option<String>,
        #[serde(default, skip_serializing_if = "Matching::is_target")]
        matching: Matching,
    },
}

/// How a run sized to another run's parameter count gets there.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Matching {
    /// An equal share of what is left in each remaining phase
    /// ([`GrowConfig::target_params`]).
    #[default]
    Target,
    /// The per-layer fraction of every phase ([`SelectConfig::fraction`])
    /// with which uniform widening over all phases comes closest
    /// ([`matched_fraction`]).
    ///
    /// [`SelectConfig::fraction`]: sprout_core::select::SelectConfig::fraction
    Fraction,
}

impl Matching {
    fn is_target(&self) -> bool {
        *self == Matching::Target
    }
}

/// The fraction of every layer's channels that uniform growth adds per
/// phase so that after `phases` phases its parameter count is closest to
/// `target` (random growth adds the same number of channels, anywhere).
pub fn matched_fraction(seed: &Arch, phases: usize, target: u64) -> Result<f64> {
    let grown = |fraction: f64| -> Result<u64> {
        let mut widths = seed.widths.clone();
        for _ in 0..phases {
            for w in widths.iter_mut() {
                *w += layer_budget(*w, fraction);
            }
        }
        Ok(Arch::new(seed.family, seed.input, seed.classes, widths)?.params())
    };
    let mut best = (u64::MAX, 0.01);
    for i in 1..=100 {
        let fraction = i as f64 / 100.0;
        let gap = grown(fraction)?.abs_diff(target);
        if gap < best.0 {
            best = (gap, fraction);
        }
    }
    Ok(best.1)
}

/// One run of a sweep, complete: the manifest line's payload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Job {
    /// Method label (`fixed`, `gn`, `gn-noise`, `uniform`, ...).
    pub method: String,
    /// The point within the method (`width 8`, `lambda_p 1e-4`).
    pub point: String,
    pub seed: u64,
    pub data: DataSpec,
    /// Worker threads; fixed per run so that results do not depend on
    /// where it ran.
    pub threads: usize,
    /// `cpu` or `gpu`.
    pub backend: String,
    /// Training setup (and for growth runs, everything about growth).
    pub config: GrowConfig,
    pub work: Work,
}

/// One line of `manifest.jsonl`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ManifestLine {
    pub format: String,
    pub index: usize,
    pub id: String,
    /// The run directory, relative to the manifest's folder.
    pub dir: PathBuf,
    pub job: Job,
}

/// What a finished run reports: the content of [`DONE`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub method: String,
    pub point: String,
    pub seed: u64,
    pub params: u64,
    pub macs: u64,
    pub widths: Vec<usize>,
    /// Test accuracy at the end of growth (growth runs only).
    pub grown_test_accuracy: Option<f64>,
    /// Test accuracy of the architecture trained from scratch.
    pub test_accuracy: f64,
    /// Per phase: the true change of the held-out loss right after the
    /// morphisms, with frozen BN statistics and with them refreshed.
    pub true_delta_loss: Vec<f64>,
    pub true_delta_loss_recalibrated: Vec<f64>,
    /// Per phase: eq. (1) for the applied set (where the rule computes it).
    pub estimated_delta_loss: Vec<Option<f64>>,
    /// Per phase: mean `|theta| / |w_in|` of the applied splits.
    pub theta_ratio: Vec<f64>,
    pub growth_seconds: Option<f64>,
    pub train_seconds: f64,
}

/// A finished run: its manifest line and outcome.
pub type Finished<'a> = (&'a ManifestLine, Outcome);

/// A manifest read from disk.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub lines: Vec<ManifestLine>,
}

impl Manifest {
    /// Numbers and checks `(id, dir, job)` triples: ids must be unique.
    pub fn new(path: &Path, runs: Vec<(String, Job)>) -> Result<Manifest> {
        let mut lines = Vec::with_capacity(runs.len());
        for (index, (id, job)) in runs.into_iter().enumerate() {
            if lines.iter().any(|l: &ManifestLine| l.id == id) {
                bail!("sweep: two runs share the id {id}");
            }
            lines.push(ManifestLine {
                format: MANIFEST_FORMAT.into(),
                index,
                dir: PathBuf::from("runs").join(&id),
                id,
                job,
            });
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            lines,
        })
    }

    fn text(&self) -> Result<String> {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&serde_json::to_string(l)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes the manifest, or checks that the file already holds exactly
    /// this sweep (planning twice gives the same ids and lines); a
    /// different sweep in the same place is refused.
    pub fn write(&self) -> Result<()> {
        let text = self.text()?;
        if let Ok(old) = fs::read_to_string(&self.path) {
            if old == text {
                return Ok(());
            }
            bail!(
                "{} holds a different sweep (other settings); choose another --out",
                self.path.display()
            );
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::weights::write_atomic(&self.path, text.as_bytes())
    }

    /// Reads and checks every line: one-line errors name the file and line.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("--manifest {}: cannot read", path.display()))?;
        let mut lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), n + 1);
            let v: serde_json::Value =
                serde_json::from_str(raw).with_context(|| format!("{}: not JSON", at()))?;
            let format = v["format"].as_str().unwrap_or("");
            if format != MANIFEST_FORMAT {
                bail!(
                    "{}: manifest format '{format}' is not {MANIFEST_FORMAT} (written by another sprout version?)",
                    at()
                );
            }
            let line: ManifestLine =
                serde_json::from_value(v).map_err(|e| anyhow!("{}: not a sweep run: {e}", at()))?;
            if line.index != n {
                bail!("{}: index {} on line {}", at(), line.index, n + 1);
            }
            if line.dir.is_absolute()
                || line
                    .dir
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                bail!(
                    "{}: run directory {} must lie inside the sweep folder",
                    at(),
                    line.dir.display()
                );
            }
            lines.push(line);
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            lines,
        })
    }

    /// The sweep's folder: run directories are relative to it.
    pub fn root(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn dir_of(&self, line: &ManifestLine) -> PathBuf {
        self.root().join(&line.dir)
    }

    /// The finished outcome of `line`, if its marker is there.
    pub fn outcome(&self, line: &ManifestLine) -> Result<Option<Outcome>> {
        let path = self.dir_of(line).join(DONE);
        match fs::read(&path) {
            Ok(bytes) => {
                let o: Outcome = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a run outcome", path.display()))?;
                if o.id != line.id {
                    bail!(
                        "{}: belongs to run {}, not {}",
                        path.display(),
                        o.id,
                        line.id
                    );
                }
                Ok(Some(o))
            }
            Err(_) => Ok(None),
        }
    }

    /// The finished runs with their lines, in manifest order, and the ids
    /// of the others.
    pub fn finished(&self) -> Result<(Vec<Finished<'_>>, Vec<String>)> {
        let mut done = Vec::new();
        let mut missing = Vec::new();
        for line in &self.lines {
            match self.outcome(line)? {
                Some(o) => done.push((line, o)),
                None => missing.push(line.id.clone()),
            }
        }
        Ok((done, missing))
    }

    fn line(&self, index: usize) -> Result<&ManifestLine> {
        self.lines.get(index).ok_or_else(|| {
            anyhow!(
                "--index {index}: {} has {} runs (0 to {})",
                self.path.display(),
                self.lines.len(),
                self.lines.len().saturating_sub(1)
            )
        })
    }
}

/// Runs line `index` of `manifest` in this process (the global thread pool
/// must already have the job's thread count) unless it finished before.
pub fn run_line(manifest: &Manifest, index: usize) -> Result<Outcome> {
    let r = run_line_inner(manifest, index);
    if let (Err(e), Ok(line)) = (&r, manifest.line(index)) {
        let dir = manifest.dir_of(line);
        if dir.is_dir() && !dir.join(DONE).exists() {
            let _ = fs::write(dir.join(FAILED), format!("{e:#}\n"));
        }
    }
    r
}

fn run_line_inner(manifest: &Manifest, index: usize) -> Result<Outcome> {
    let line = manifest.line(index)?;
    if let Some(o) = manifest.outcome(line)? {
        return Ok(o);
    }
    let dir = manifest.dir_of(line);
    // One process per run directory; a directory of anything else is refused.
    let (_, _lock) = RunDir::claim(&dir, "run-job", false)?;
    // Another process may have finished it while we waited for nothing.
    if let Some(o) = manifest.outcome(line)? {
        return Ok(o);
    }
    let _ = fs::remove_file(dir.join(FAILED));
    let job_path = dir.join(JOB_FILE);
    match fs::read(&job_path) {
        Ok(bytes) => {
            let stored: Job = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a sweep job", job_path.display()))?;
            if stored != line.job {
                bail!(
                    "{}: differs from {} line {} (another sweep's run?); nothing was overwritten",
                    job_path.display(),
                    manifest.path.display(),
                    index + 1
                );
            }
        }
        Err(_) => RunDir::create(&dir)?.write_json(JOB_FILE, &line.job)?,
    }
    let job = &line.job;
    let device = DeviceArgs {
        backend: match job.backend.as_str() {
            "gpu" => BackendKind::Gpu,
            _ => BackendKind::Cpu,
        },
        adapter: None,
    };
    let (train, test, norm, input) = job.data.load()?;
    let cfg = &job.config;
    let retrain = |arch: &Arch, epochs: usize, file: &str| -> Result<(f64, f64)> {
        let (_, tested, secs) = grow::retrain_to(
            &dir.join(file),
            arch,
            cfg,
            job.seed,
            epochs,
            (&train, &test, &norm),
            &input,
            &device,
        )?;
        Ok((f64::from(tested.accuracy), secs))
    };
    // The outcome, and the architecture of the run directory's network
    // (model.safetensors of a fixed run, retrained.safetensors of a growth run).
    let (outcome, arch) = match &job.work {
        Work::Fixed { arch, epochs } => {
            let (acc, secs) = retrain(arch, *epochs, "model.safetensors")?;
            let outcome = Outcome {
                id: line.id.clone(),
                method: job.method.clone(),
                point: job.point.clone(),
                seed: job.seed,
                params: arch.params(),
                macs: arch.macs(),
                widths: arch.widths.clone(),
                grown_test_accuracy: None,
                test_accuracy: acc,
                true_delta_loss: Vec::new(),
                true_delta_loss_recalibrated: Vec::new(),
                estimated_delta_loss: Vec::new(),
                theta_ratio: Vec::new(),
                growth_seconds: None,
                train_seconds: secs,
            };
            (outcome, arch.clone())
        }
        Work::Grow {
            seed_arch,
            retrain_epochs,
            match_params_of,
            matching,
        } => {
            let mut grow_cfg = cfg.clone();
            if let Some(other) = match_params_of {
                let target = wait_for(manifest, other)?.params;
                match matching {
                    Matching::Target => grow_cfg.target_params = Some(target),
                    Matching::Fraction => {
                        grow_cfg.select.fraction =
                            matched_fraction(seed_arch, grow_cfg.phases, target)?
                    }
                }
            }
            let run_cfg = RunConfig {
                seed_arch: seed_arch.clone(),
                dataset: job.data.dataset.clone(),
                data_dir: job.data.data_dir.clone(),
                train_limit: job.data.train_limit,
                test_limit: job.data.test_limit,
                seed: job.seed,
                retrain_epochs: 0,
                grow: grow_cfg,
            };
            let grow_dir = dir.join("grow");
            let start = Instant::now();
            grow::start_or_resume(&grow_dir, &run_cfg, &device)
                .with_context(|| format!("growth run {}", grow_dir.display()))?;
            let growth_seconds = start.elapsed().as_secs_f64();
            let arch = load_arch_json(&grow_dir.join("arch.json"))?;
            let fin = read_json(&grow_dir.join("final.json"))?;
            let phases = read_jsonl(&grow_dir.join("metrics.jsonl"))?;
            let col =
                |k: &str| -> Vec<f64> { phases.iter().filter_map(|p| p[k].as_f64()).collect() };
            let (acc, secs) = retrain(&arch, *retrain_epochs, "retrained.safetensors")?;
            let outcome = Outcome {
                id: line.id.clone(),
                method: job.method.clone(),
                point: job.point.clone(),
                seed: job.seed,
                params: arch.params(),
                macs: arch.macs(),
                widths: arch.widths.clone(),
                grown_test_accuracy: fin["test_accuracy"].as_f64(),
                test_accuracy: acc,
                true_delta_loss: col("true_delta_loss"),
                true_delta_loss_recalibrated: col("true_delta_loss_recalibrated"),
                estimated_delta_loss: phases
                    .iter()
                    .map(|p| p["joint_estimated_delta_loss"].as_f64())
                    .collect(),
                theta_ratio: col("theta_ratio_mean"),
                growth_seconds: Some(growth_seconds),
                train_seconds: secs,
            };
            (outcome, arch)
        }
    };
    // What the network was trained on, for `sprout eval` and other
    // frameworks; then the completion marker, last.
    let config = serde_json::json!({
        "command": "run-job",
        "id": line.id,
        "dataset": job.data.dataset,
        "data_dir": job.data.data_dir,
        "train_limit": job.data.train_limit,
        "test_limit": job.data.test_limit,
        "seed": job.seed,
    });
    let run = RunDir::create(&dir)?;
    run.write_json("config.json", &input.describe(&config, Some(&arch)))?;
    run.write_json(DONE, &outcome)?;
    Ok(outcome)
}

/// Waits until the run `id` of the manifest has finished (it comes earlier
/// in the manifest, so a pool that starts lines in order never deadlocks).
fn wait_for(manifest: &Manifest, id: &str) -> Result<Outcome> {
    let line = manifest
        .lines
        .iter()
        .find(|l| l.id == id)
        .ok_or_else(|| anyhow!("{}: no run {id} to match", manifest.path.display()))?;
    let mut said = false;
    loop {
        if let Some(o) = manifest.outcome(line)? {
            return Ok(o);
        }
        let failed = manifest.dir_of(line).join(FAILED);
        if failed.exists() {
            bail!(
                "run {id}, whose parameter count sizes this run, failed (see {})",
                failed.display()
            );
        }
        if !said {
            println!("waiting for run {id} to finish (its parameter count sizes this run)");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))
}

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))
        })
        .collect()
}

/// `sprout run-job`: one manifest line in this process.
#[derive(clap::Args, Debug, Clone)]
pub struct RunJobArgs {
    /// The sweep's manifest.jsonl.
    #[arg(long)]
    pub manifest: PathBuf,
    /// 0-based line of the manifest (a Slurm array task id).
    #[arg(long)]
    pub index: usize,
    /// Must match the thread count the manifest fixes for its runs, if given.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run_job(args: &RunJobArgs) -> Result<()> {
    let manifest = Manifest::read(&args.manifest)?;
    let line = manifest.line(args.index)?;
    if let Some(t) = args.threads {
        if t != line.job.threads {
            bail!(
                "--threads {t}: {} fixes {} threads for its runs (results depend on the thread count)",
                args.manifest.display(),
                line.job.threads
            );
        }
    }
    set_threads(Some(line.job.threads))?;
    let o = run_line(&manifest, args.index)?;
    println!(
        "{}: test {:.2}% ({} params)",
        line.id,
        100.0 * o.test_accuracy,
        o.params
    );
    Ok(())
}

/// Runs every unfinished line: in this process when `jobs` is 1, otherwise
/// as `jobs` child processes of `sprout run-job` at a time, started in
/// manifest order. Returns the ids that failed, with their log files.
pub fn run_all(manifest: &Manifest, jobs: usize) -> Result<Vec<(String, PathBuf)>> {
    let total = manifest.lines.len();
    let pending: Vec<usize> = (0..total)
        .filter(|&i| {
            manifest
                .outcome(&manifest.lines[i])
                .map(|o| o.is_none())
                .unwrap_or(true)
        })
        .collect();
    println!(
        "{} of {total} runs to do ({} finished before), {jobs} at a time",
        pending.len(),
        total - pending.len()
    );
    let logs = manifest.root().join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let failed = std::sync::Mutex::new(Vec::new());
    if jobs <= 1 {
        if let Some(first) = pending.first() {
            set_threads(Some(manifest.lines[*first].job.threads))?;
        }
        for (k, &i) in pending.iter().enumerate() {
            let line = &manifest.lines[i];
            match run_line(manifest, i) {
                Ok(o) => println!(
                    "[{}/{}] {}: test {:.2}% ({} params)",
                    k + 1,
                    pending.len(),
                    line.id,
                    100.0 * o.test_accuracy,
                    o.params
                ),
                Err(e) => {
                    eprintln!("[{}/{}] {} failed: {e:#}", k + 1, pending.len(), line.id);
                    failed
                        .lock()
                        .expect("lock")
                        .push((line.id.clone(), PathBuf::new()));
                }
            }
        }
        return Ok(failed.into_inner().expect("lock"));
    }
    let exe = std::env::current_exe().context("cannot find the sprout binary")?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(pending.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&i) = pending.get(k) else { break };
                let line = &manifest.lines[i];
                let log = logs.join(format!("{}.log", line.id));
                let status = fs::File::create(&log).and_then(|f| {
                    let err = f.try_clone()?;
                    std::process::Command::new(&exe)
                        .args(["run-job", "--manifest"])
                        .arg(&manifest.path)
                        .args(["--index", &i.to_string()])
                        .stdout(f)
                        .stderr(err)
                        .status()
                });
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                match status {
                    Ok(st) if st.success() => {
                        let acc = manifest
                            .outcome(line)
                            .ok()
                            .flatten()
                            .map(|o| {
                                format!(
                                    "test {:.2}% ({} params)",
                                    100.0 * o.test_accuracy,
                                    o.params
                                )
                            })
                            .unwrap_or_default();
                        println!("[{n}/{}] {}: {acc}", pending.len(), line.id);
                    }
                    _ => {
                        eprintln!(
                            "[{n}/{}] {} failed: see {}",
                            pending.len(),
                            line.id,
                            log.display()
                        );
                        failed.lock().expect("lock").push((line.id.clone(), log));
                    }
                }
            });
        }
    });
    Ok(failed.into_inner().expect("lock"))
}

/// The flags with which a sweep command plans, runs and collects its runs.
#[derive(clap::Args, Debug, Clone)]
pub struct SweepArgs {
    /// Worker threads of every run (results depend on it, so the manifest
    /// fixes it) [default: --cpus-per-task with --emit-slurm, else 1].
    #[arg(long, alias = "threads")]
    pub threads_per_run: Option<usize>,
    /// Runs at once on this machine [default: cores / --threads-per-run].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Only write the manifest (`OUT/manifest.jsonl`) and say how many runs it has.
    #[arg(long)]
    pub plan: bool,
    /// Only build the outputs from the finished runs and list the others.
    #[arg(long)]
    pub collect: bool,
    /// Write an sbatch script for a Slurm job array over the manifest (implies --plan).
    #[arg(long, value_name = "FILE")]
    pub emit_slurm: Option<PathBuf>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

impl SweepArgs {
    /// Refuses flags that do not go together, before anything is written.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.threads_per_run {
            let (cores, max) = max_threads();
            if t == 0 {
                bail!("--threads-per-run must be at least 1");
            }
            if t > max {
                bail!(
                    "--threads-per-run {t} is more than 4 per core ({cores} cores, at most {max})"
                );
            }
            if self.emit_slurm.is_some() && t != self.slurm.cpus_per_task {
                bail!(
                    "--threads-per-run {t} differs from --cpus-per-task {}: every array task runs with its CPUs as threads",
                    self.slurm.cpus_per_task
                );
            }
        }
        if self.jobs == Some(0) {
            bail!("--jobs must be at least 1");
        }
        if [self.plan, self.collect, self.emit_slurm.is_some()]
            .iter()
            .filter(|&&b| b)
            .count()
            > 1
        {
            bail!("--plan, --collect and --emit-slurm are separate steps: give one");
        }
        Ok(())
    }

    /// Threads of every run.
    pub fn threads(&self) -> usize {
        match (self.threads_per_run, &self.emit_slurm) {
            (Some(t), _) => t,
            (None, Some(_)) => self.slurm.cpus_per_task,
            (None, None) => 1,
        }
    }
}

/// A sweep command: what it plans and what it builds from finished runs.
pub trait Sweep {
    /// The subcommand, for the messages (`table`, `pareto`).
    const COMMAND: &'static str;
    /// The sweep's folder: `manifest.jsonl`, `runs/`, `logs/` and the outputs.
    fn out(&self) -> &Path;
    /// Every run of the sweep, `(id, job)`, in an order in which each run
    /// comes after the runs it is sized to.
    fn plan(&self) -> Result<Vec<(String, Job)>>;
    /// Writes the outputs from the finished runs of `manifest` (`done`, in
    /// manifest order) and returns what it wrote, for the closing line.
    fn collect(&self, manifest: &Manifest, done: &[Finished]) -> Result<String>;
}

/// Runs a sweep command with its [`SweepArgs`]: `--collect` builds the
/// outputs from what has finished; otherwise it plans (writing the manifest,
/// or checking the one there), then `--plan` stops, `--emit-slurm` writes
/// the job array, and without either flag it runs every unfinished line,
/// `--jobs` at a time, and collects.
pub fn drive<S: Sweep>(sweep: &S, args: &SweepArgs) -> Result<()> {
    let out = sweep.out();
    let manifest_path = out.join("manifest.jsonl");
    if args.collect {
        return collect(sweep, &Manifest::read(&manifest_path)?);
    }
    let manifest = Manifest::new(&manifest_path, sweep.plan()?)?;
    manifest.write()?;
    println!(
        "planned {} runs in {}",
        manifest.lines.len(),
        manifest_path.display()
    );
    if let Some(file) = &args.emit_slurm {
        let exe = std::env::current_exe().context("cannot find the sprout binary")?;
        write_sbatch_script(
            &args.slurm,
            &exe,
            &manifest_path,
            manifest.lines.len(),
            &args.slurm.log_dir(out),
            manifest
                .lines
                .iter()
                .any(|l| l.job.backend == BackendKind::Gpu.name()),
            file,
        )?;
        println!(
            "wrote {}: submit it with `sbatch {}`, then collect with `sprout {} --out {} --collect`",
            file.display(),
            file.display(),
            S::COMMAND,
            out.display()
        );
        return Ok(());
    }
    if args.plan {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or_else(|| (cores / args.threads()).max(1));
    let failed = run_all(&manifest, jobs)?;
    collect(sweep, &manifest)?;
    if !failed.is_empty() {
        bail!(
            "{} runs failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|(id, log)| if log.as_os_str().is_empty() {
                    id.clone()
                } else {
                    format!("{id} ({})", log.display())
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn collect<S: Sweep>(sweep: &S, manifest: &Manifest) -> Result<()> {
    let (done, missing) = manifest.finished()?;
    let wrote = sweep.collect(manifest, &done)?;
    if missing.is_empty() {
        println!("all {} runs finished; wrote {wrote}", done.len());
    } else {
        println!(
            "{} of {} runs finished; not yet: {}",
            done.len(),
            manifest.lines.len(),
            missing.join(", ")
        );
    }
    Ok(())
}
