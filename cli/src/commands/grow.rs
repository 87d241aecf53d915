//! `sprout grow`: the paper's Algorithm 1 on real data, with a run directory
//! that logs every phase and morphism, checkpoints atomically after every
//! phase and resumes a killed run exactly.

use crate::commands::eval::load_dataset;
use crate::commands::info::arch_from_flags;
use crate::data::{resolve, DatasetName, Splits};
use crate::device::DeviceArgs;
use crate::input::InputSpec;
use crate::progress::bar;
use crate::run_dir::{run_command, set_threads, Fnv64, RunDir, RunLock};
use crate::weights::{load_network, load_tensors, save_network, save_tensors};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sprout_core::data::{Dataset, Normalization};
use sprout_core::grow::{
    run_phase, train_epochs, train_from_scratch, GrowConfig, GrowState, PhaseReport, Stage,
    Strategy, ThetaSource,
};
use sprout_core::learn::Curvature;
use sprout_core::rng::Rng;
use sprout_core::select::{Kind, Selection};
use sprout_core::train::{evaluate, Batches, PassStats};
use sprout_core::{Arch, Network};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Selection rules selectable with `--selection`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionRule {
    /// Each candidate by its own estimate (the paper, section 3.3).
    Independent,
    /// By the marginal gain under the joint estimate of the chosen set.
    Joint,
    /// Each candidate by its own estimate, then every chosen split's theta
    /// shrunk by the common factor that minimises the set's joint estimate.
    Scaled,
    /// Per-candidate scales on the learned theta from the box-constrained
    /// minimum of the set's joint estimate plus its price.
    Box,
}

impl From<SelectionRule> for Selection {
    fn from(s: SelectionRule) -> Selection {
        match s {
            SelectionRule::Independent => Selection::Independent,
            SelectionRule::Joint => Selection::Joint,
            SelectionRule::Scaled => Selection::Scaled,
            SelectionRule::Box => Selection::Box,
        }
    }
}

/// Theta sources selectable with `--theta`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThetaName {
    /// The learned theta, as the selection rule scales them.
    Learned,
    /// The chosen channels split with their initial noise (ablation).
    Noise,
}

impl From<ThetaName> for ThetaSource {
    fn from(t: ThetaName) -> ThetaSource {
        match t {
            ThetaName::Learned => ThetaSource::Learned,
            ThetaName::Noise => ThetaSource::Noise,
        }
    }
}

/// `--theta-max`: absent keeps `default`, `inf` is unbounded (the paper),
/// any other value must be a positive ratio.
pub fn theta_max_flag(flag: Option<f32>, default: Option<f32>) -> Result<Option<f32>> {
    match flag {
        None => Ok(default),
        Some(r) if r == f32::INFINITY => Ok(None),
        Some(r) if r.is_finite() && r > 0.0 => Ok(Some(r)),
        Some(r) => bail!("--theta-max must be a positive ratio or inf, got {r}"),
    }
}

/// Quadratic terms selectable with `--curvature`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurvatureName {
    /// Eq. (1) everywhere: the rank-1 term `u^2 / (4 L_hat)` (the paper).
    RankOne,
    /// The exact cross-entropy Hessian at the logits for the layer that
    /// feeds the head (docs/conventions.md, "Exact curvature at the logits").
    ExactLogits,
}

impl From<CurvatureName> for Curvature {
    fn from(c: CurvatureName) -> Curvature {
        match c {
            CurvatureName::RankOne => Curvature::RankOne,
            CurvatureName::ExactLogits => Curvature::ExactLogits,
        }
    }
}

/// Growth strategies selectable with `--strategy`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyName {
    /// Learned morphisms ranked by the Gauss-Newton estimate (the paper).
    Gn,
    /// Split randomly chosen channels of any layer with small random theta.
    Random,
    /// Widen every layer by the same fraction, keeping width ratios.
    Uniform,
    /// Splitting steepest descent: split along minimum splitting eigenvectors.
    Splitting,
}

impl From<StrategyName> for Strategy {
    fn from(s: StrategyName) -> Strategy {
        match s {
            StrategyName::Gn => Strategy::Gn,
            StrategyName::Random => Strategy::Random,
            StrategyName::Uniform => Strategy::Uniform,
            StrategyName::Splitting => Strategy::Splitting,
        }
    }
}

/// Flags of `sprout grow`. Options left unset take their defaults, or with
/// `--resume` the values the run was started with.
#[derive(Args, Debug, Clone, Default)]
pub struct GrowArgs {
    /// Seed architecture: vgg19 or mobilenet-v1 [default: vgg19].
    #[arg(long)]
    pub arch: Option<String>,
    /// Seed width of every layer [default: 16 for vgg19, 32 for mobilenet-v1].
    #[arg(long)]
    pub width: Option<usize>,
    /// Seed widths, comma-separated.
    #[arg(long)]
    pub widths: Option<String>,
    /// Seed architecture from a JSON file.
    #[arg(long)]
    pub arch_file: Option<PathBuf>,
    /// Dataset [default: the embedded Fashion-MNIST subset].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Directory of the dataset files.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to grow [default: gn].
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyName>,
    /// Splitting: eigen-solver steps per mini-batch [default: 4].
    #[arg(long)]
    pub split_iterations: Option<usize>,
    /// Splitting: step along the eigenvector relative to the layer's RMS kernel norm [default: 0.1].
    #[arg(long)]
    pub split_epsilon: Option<f32>,
    /// Price per parameter, lambda_p [default: 3e-7].
    #[arg(long)]
    pub lambda_params: Option<f64>,
    /// Price per multiply-accumulate, lambda_f (energy-aware growth) [default: 0].
    #[arg(long)]
    pub lambda_macs: Option<f64>,
    /// Growth phases P [default: 4].
    #[arg(long)]
    pub phases: Option<usize>,
    /// Training epochs per phase [default: 2].
    #[arg(long)]
    pub phase_epochs: Option<usize>,
    /// Morphism-learning epochs per phase [default: --phase-epochs].
    #[arg(long)]
    pub morph_epochs: Option<usize>,
    /// Training epochs after the last phase [default: --phase-epochs].
    #[arg(long)]
    pub final_epochs: Option<usize>,
    /// Largest fraction of a layer's channels changed per phase [default: 0.3].
    #[arg(long)]
    pub grow_fraction: Option<f64>,
    /// Consider splits only, never prunes.
    #[arg(long)]
    pub no_prune: bool,
    /// How candidates are chosen: `box` gives each candidate of the paper's
    /// set its own scale on its learned theta, from the minimum of the set's
    /// joint estimate plus its price; `scaled` shrinks all splits' theta by
    /// one common factor; `joint` keeps candidates, best own gain first,
    /// while they add to the set's estimate; `independent` is the paper's
    /// rule as written, which overshoots (docs/conventions.md) [default: box].
    #[arg(long, value_enum)]
    pub selection: Option<SelectionRule>,
    /// With `--selection box`: choose the splits first, then admit prunes
    /// only where they still pay given the splits.
    #[arg(long)]
    pub prunes_after_splits: bool,
    /// Apply the chosen splits with their learned theta or, as an ablation,
    /// with the initial noise they started from [default: learned].
    #[arg(long, value_enum)]
    pub theta: Option<ThetaName>,
    /// The estimate's quadratic term in the layer that feeds the logits:
    /// eq. (1)'s rank-1 term or the exact cross-entropy Hessian [default: rank-one].
    #[arg(long, value_enum)]
    pub curvature: Option<CurvatureName>,
    /// Adam steps refining the chosen splits' learned theta on the expanded
    /// network's real training loss, the model fixed, before training
    /// resumes (one batch per step) [default: 0, none].
    #[arg(long)]
    pub refine_steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// SGD learning rate [default: 0.05].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Training epochs (cumulative) at which the learning rate drops 10x.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Adam learning rate for theta [default: 0.01].
    #[arg(long)]
    pub theta_lr: Option<f32>,
    /// EMA weight of each mini-batch estimate [default: (S/N)/2, about the
    /// last two epochs; shorter morphism phases want a larger weight].
    #[arg(long)]
    pub ema_alpha: Option<f32>,
    /// Trust region for learned theta: |theta_c| <= RATIO * |w_in_c|;
    /// `inf`: unbounded, as in the paper [default: 1].
    #[arg(long, value_name = "RATIO")]
    pub theta_max: Option<f32>,
    /// Initial |theta| relative to |w_in| [default: 0.01].
    #[arg(long)]
    pub theta_init: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Re-initialise the final architecture and train it from scratch for this many epochs.
    #[arg(long)]
    pub retrain_epochs: Option<usize>,
    #[arg(long)]
    pub no_augment: bool,
    /// Use only the first N training images (class-balanced subsets are the caller's job).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Engine for the steps.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Run directory [default: runs/grow].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Everything that determines a growth run; stored as config.json.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub seed_arch: Arch,
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub seed: u64,
    pub retrain_epochs: usize,
    pub grow: GrowConfig,
}

impl GrowArgs {
    /// `g` with every setting these flags give replaced: the library owns
    /// the defaults ([`GrowConfig::default`]); a resumed run passes its
    /// stored configuration instead.
    pub fn apply(&self, mut g: GrowConfig) -> Result<GrowConfig> {
        if let Some(e) = self.phase_epochs {
            // Morphism-learning and final epochs follow --phase-epochs unless given.
            g.train_epochs = e;
            g.morph_epochs = e;
            g.final_epochs = e;
        }
        set(&mut g.phases, self.phases);
        set(&mut g.morph_epochs, self.morph_epochs);
        set(&mut g.final_epochs, self.final_epochs);
        set(&mut g.batch, self.batch);
        set(&mut g.schedule.base, self.lr);
        if let Some(m) = &self.milestones {
            g.schedule.milestones = m.clone();
        }
        set(&mut g.adam.lr, self.theta_lr);
        if self.ema_alpha.is_some() {
            g.ema_alpha = self.ema_alpha;
        }
        set(&mut g.theta_init, self.theta_init);
        g.theta_max = theta_max_flag(self.theta_max, g.theta_max)?;
        set(&mut g.select.lambda_params, self.lambda_params);
        set(&mut g.select.lambda_macs, self.lambda_macs);
        set(&mut g.select.fraction, self.grow_fraction);
        if self.no_prune {
            g.select.prune = false;
        }
        set(&mut g.select.selection, self.selection.map(Selection::from));
        if self.prunes_after_splits {
            g.select.prunes_after_splits = true;
        }
        set(&mut g.theta, self.theta.map(ThetaSource::from));
        set(&mut g.curvature, self.curvature.map(Curvature::from));
        set(&mut g.refine_steps, self.refine_steps);
        if self.no_augment {
            g.augment = None;
        }
        set(&mut g.strategy, self.strategy.map(Strategy::from));
        set(&mut g.split_iterations, self.split_iterations);
        set(&mut g.split_epsilon, self.split_epsilon);
        for (flag, v) in [("--lr", g.schedule.base), ("--theta-lr", g.adam.lr)] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{flag} must be a positive number, got {v}");
            }
        }
        g.validate().map_err(crate::errors::cli)?;
        Ok(g)
    }

    /// The configuration these flags ask for, on top of `base` (a resumed
    /// run's stored configuration) or the defaults.
    pub(crate) fn config(&self, splits: &Splits, base: Option<&RunConfig>) -> Result<RunConfig> {
        let t = &splits.train;
        let input = format!("{}x{}x{}", t.channels, t.height, t.width);
        let arch_given = self.arch.is_some()
            || self.width.is_some()
            || self.widths.is_some()
            || self.arch_file.is_some();
        let seed_arch = match base {
            Some(b) if !arch_given => b.seed_arch.clone(),
            _ => arch_from_flags(
                self.arch.as_deref().unwrap_or("vgg19"),
                self.width,
                self.widths.as_deref(),
                &input,
                t.classes,
                self.arch_file.as_deref(),
            )?,
        };
        let base_grow = base.map(|b| b.grow.clone()).unwrap_or_default();
        let grow = self.apply(base_grow)?;
        Ok(RunConfig {
            seed_arch,
            dataset: splits.name.clone(),
            data_dir: self.data.clone().or(base.and_then(|b| b.data_dir.clone())),
            train_limit: self.train_limit.or(base.and_then(|b| b.train_limit)),
            test_limit: self.test_limit.or(base.and_then(|b| b.test_limit)),
            seed: self.seed.or(base.map(|b| b.seed)).unwrap_or(0),
            retrain_epochs: self
                .retrain_epochs
                .or(base.map(|b| b.retrain_epochs))
                .unwrap_or(0),
            grow,
        })
    }
}

/// Replaces `slot` with the flag's value when the flag was given.
fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// A checkpoint's small state, beside its weight files.
#[derive(Serialize, Deserialize, Debug)]
struct CheckpointState {
    phase: usize,
    epochs_trained: usize,
    rng: [u64; 4],
    /// Whether the training after the last phase is done.
    finished: bool,
}

const CHECKPOINT: &str = "checkpoint";

/// Writes the checkpoint into a fresh directory and swaps it in, so a kill at
/// any moment leaves either the old or the new checkpoint whole.
fn save_checkpoint(
    run: &RunDir,
    state: &GrowState,
    input: &InputSpec,
    finished: bool,
) -> Result<()> {
    let tmp = run.file("checkpoint.tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    save_network(
        &tmp.join("model.safetensors"),
        &state.network,
        Some(input),
        &[],
    )?;
    let specs = state.network.specs();
    let named: Vec<(String, Vec<usize>, &[f32])> = specs
        .iter()
        .zip(&state.momentum)
        .map(|(s, m)| (s.name.clone(), s.shape.clone(), m.as_slice()))
        .collect();
    save_tensors(&tmp.join("momentum.safetensors"), &named, &[])?;
    let st = CheckpointState {
        phase: state.phase,
        epochs_trained: state.epochs_trained,
        rng: state.rng.state(),
        finished,
    };
    crate::weights::write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(&st)?)?;
    let cur = run.file(CHECKPOINT);
    let old = run.file("checkpoint.old");
    let _ = fs::remove_dir_all(&old);
    if cur.exists() {
        fs::rename(&cur, &old).with_context(|| format!("cannot move {}", cur.display()))?;
    }
    fs::rename(&tmp, &cur).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

fn load_checkpoint(run: &RunDir) -> Result<(GrowState, bool)> {
    // A kill between the two renames leaves checkpoint.tmp (whole once its
    // state.json, written last, exists) and checkpoint.old: either is whole.
    let dir = saved_checkpoint(run).unwrap_or_else(|| run.file(CHECKPOINT));
    let state_path = dir.join("state.json");
    let bytes = fs::read(&state_path).with_context(|| {
        format!(
            "{}: no checkpoint to resume from (the run may not have finished a phase)",
            state_path.display()
        )
    })?;
    let st = parse_state(&state_path, &bytes)?;
    let network = load_network(&dir.join("model.safetensors"))?;
    let (tensors, _) = load_tensors(&dir.join("momentum.safetensors"))?;
    let mut momentum = network.zeros_like();
    for (spec, m) in network.specs().iter().zip(momentum.iter_mut()) {
        let t = tensors
            .iter()
            .find(|t| t.0 == spec.name)
            .with_context(|| format!("{}: momentum for {} is missing", dir.display(), spec.name))?;
        if t.2.len() != m.len() {
            bail!(
                "{}: momentum for {} has the wrong size",
                dir.display(),
                spec.name
            );
        }
        m.copy_from_slice(&t.2);
    }
    let state = GrowState {
        phase: st.phase,
        epochs_trained: st.epochs_trained,
        network,
        momentum,
        rng: Rng::from_state(st.rng),
    };
    Ok((state, st.finished))
}

/// Keeps only the JSON lines of `name` whose `phase` is at most `phase`
/// (lines a killed run wrote after its last checkpoint are dropped).
fn truncate_log(run: &RunDir, name: &str, phase: usize) -> Result<()> {
    let path = run.file(name);
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["phase"].as_u64())
                .is_some_and(|p| p as usize <= phase)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::weights::write_atomic(&path, kept.as_bytes())
}

pub(crate) fn limited(ds: &Dataset, limit: Option<usize>) -> Dataset {
    match limit {
        Some(n) if n < ds.len() => ds.subset(&(0..n).collect::<Vec<_>>()),
        _ => ds.clone(),
    }
}

/// The run's splits, cut to its `--train-limit` and `--test-limit`.
fn load_splits(cfg: &RunConfig) -> Result<Splits> {
    let splits = load_dataset(&cfg.dataset, cfg.data_dir.as_deref())?;
    Ok(Splits {
        train: limited(&splits.train, cfg.train_limit),
        test: limited(&splits.test, cfg.test_limit),
        ..splits
    })
}

/// Per channel of the phase's architecture: the gain of its best candidate,
/// positive for a split, negative for a prune, `None` when neither is positive.
pub fn channel_scores(report: &PhaseReport) -> Vec<Vec<Option<f32>>> {
    let mut scores: Vec<Vec<Option<f32>>> = report
        .arch_before
        .widths
        .iter()
        .map(|&w| vec![None; w])
        .collect();
    for c in &report.candidates {
        if c.gain <= 0.0 {
            continue;
        }
        let s = &mut scores[c.layer][c.channel];
        let v = if c.kind == Kind::Split {
            c.gain as f32
        } else {
            -(c.gain as f32)
        };
        if s.is_none_or(|old| v.abs() > old.abs()) {
            *s = Some(v);
        }
    }
    scores
}

fn progress_bar(stage: Stage, total: usize, phase: usize, phases: usize) -> indicatif::ProgressBar {
    let what = match stage {
        Stage::Train { epoch } => format!("p{phase}/{phases} train{}", epoch + 1),
        Stage::Morph { epoch } => format!("p{phase}/{phases} morph{}", epoch + 1),
        Stage::Final { epoch } => format!("final {}", epoch + 1),
    };
    bar(total as u64, &what)
}

/// A progress callback that draws one bar per pass.
fn bars(phase: usize, phases: usize) -> impl FnMut(Stage, usize, usize, f32) {
    let mut current: Option<(Stage, indicatif::ProgressBar)> = None;
    move |stage, done, total, loss| {
        if current.as_ref().map(|c| c.0) != Some(stage) {
            if let Some((_, pb)) = current.take() {
                pb.finish_and_clear();
            }
            current = Some((stage, progress_bar(stage, total, phase, phases)));
        }
        let pb = &current.as_ref().expect("bar just set").1;
        pb.set_position(done as u64);
        pb.set_message(format!("loss {loss:.4}"));
        if done == total {
            pb.finish_and_clear();
        }
    }
}

pub fn run(args: &GrowArgs, force: bool) -> Result<()> {
    set_threads(args.threads)?;
    for (flag, v) in [
        ("--train-limit", args.train_limit),
        ("--test-limit", args.test_limit),
    ] {
        if v == Some(0) {
            bail!("{flag} must be at least 1");
        }
    }
    // A fresh run claims its directory only once everything is checked.
    let mut start = Start::Resume;
    let mut lock: Option<RunLock> = None;
    let (run, cfg, state, finished) = match &args.resume {
        Some(dir) => {
            if let Some(out) = &args.out {
                if out != dir {
                    bail!(
                        "--out {} and --resume {} name different runs",
                        out.display(),
                        dir.display()
                    );
                }
            }
            let cfg_path = dir.join("config.json");
            let bytes = fs::read(&cfg_path).with_context(|| {
                format!(
                    "--resume {}: no config.json, not a grow run directory",
                    dir.display()
                )
            })?;
            lock = Some(RunDir::lock_existing(dir)?);
            if let Some(other) = run_command(dir)?.filter(|c| c != "grow") {
                bail!(
                    "--resume {}: a sprout {other} run, not a grow run",
                    dir.display()
                );
            }
            let stored: RunConfig = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a grow configuration", cfg_path.display()))?;
            if let Some(d) = args.dataset.filter(|d| d.as_str() != stored.dataset) {
                bail!(
                    "--resume {}: the run grows on {}, not --dataset {d}; start a new run with another --out",
                    dir.display(),
                    stored.dataset
                );
            }
            let splits = load_dataset(
                &stored.dataset,
                args.data.as_deref().or(stored.data_dir.as_deref()),
            )?;
            let asked = args.config(&splits, Some(&stored))?;
            if asked != stored {
                bail!("--resume {}: the flags given differ from the run's configuration in config.json; start a new run with another --out", dir.display());
            }
            let run = RunDir { path: dir.clone() };
            let (state, finished) = load_checkpoint(&run)?;
            state
                .network
                .arch
                .validate()
                .with_context(|| dir.display().to_string())?;
            check_checkpoint(&run, &stored, &state, finished)?;
            (run, stored, state, finished)
        }
        None => {
            let splits = resolve(args.dataset, args.data.as_deref())?;
            let cfg = args.config(&splits, None)?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/grow"));
            if cfg.grow.batch > 4096 {
                bail!("--batch must be between 1 and 4096, got {}", cfg.grow.batch);
            }
            refuse_saved_progress(&out)?;
            crate::memory::check(&cfg.seed_arch, cfg.grow.batch, &seed_flag(args), "--batch")?;
            let state = GrowState::new(
                Network::init(&cfg.seed_arch, cfg.seed),
                cfg.seed ^ 0x6a09_e667,
            );
            start = Start::Fresh {
                out: out.clone(),
                force,
            };
            (RunDir { path: out }, cfg, state, false)
        }
    };
    let _lock = lock;
    execute(&run, &cfg, state, finished, &args.device, start)
}

/// How [`execute`] takes its run directory.
enum Start {
    /// Claim `out` (nothing has been written yet).
    Fresh { out: PathBuf, force: bool },
    /// The caller holds the directory's lock and has checked its checkpoint.
    Resume,
}

/// Starts the growth run `cfg` in `dir`, or resumes it from its checkpoint
/// when `dir` already holds it (a sweep's runs restart this way after a kill).
pub fn start_or_resume(dir: &Path, cfg: &RunConfig, device: &DeviceArgs) -> Result<()> {
    let run = RunDir {
        path: dir.to_path_buf(),
    };
    let cfg_path = run.file("config.json");
    let saved = ["checkpoint", "checkpoint.old", "checkpoint.tmp"]
        .iter()
        .any(|c| run.file(c).exists());
    if cfg_path.exists() && saved {
        let lock = RunDir::lock_existing(dir)?;
        let stored: RunConfig = serde_json::from_slice(
            &fs::read(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?,
        )
        .with_context(|| format!("{}: not a grow configuration", cfg_path.display()))?;
        if &stored != cfg {
            bail!(
                "{}: the stored configuration differs from the one asked for; nothing was changed",
                cfg_path.display()
            );
        }
        let (state, finished) = load_checkpoint(&run)?;
        check_checkpoint(&run, &stored, &state, finished)?;
        let r = execute(&run, cfg, state, finished, device, Start::Resume);
        drop(lock);
        return r;
    }
    let state = GrowState::new(
        Network::init(&cfg.seed_arch, cfg.seed),
        cfg.seed ^ 0x6a09_e667,
    );
    let start = Start::Fresh {
        out: dir.to_path_buf(),
        force: false,
    };
    execute(&run, cfg, state, false, device, start)
}

/// The phases left, the final training and the run's files.
fn execute(
    run: &RunDir,
    cfg: &RunConfig,
    mut state: GrowState,
    mut finished: bool,
    device: &DeviceArgs,
    start: Start,
) -> Result<()> {
    let splits = load_splits(cfg)?;
    let (train, test) = (&splits.train, &splits.test);
    let g = &cfg.grow;
    let record = RunRecord::of(train, test);
    let norm = Normalization::of(train);
    let input = splits.input_spec(norm.clone());
    let mut backend = device.open(g.batch)?;
    let mut lock = None;
    match start {
        Start::Fresh { out, force } => {
            let (claimed, l) = RunDir::claim(&out, "grow", force)?;
            lock = Some(l);
            claimed.write_json("config.json", &input.describe(cfg, None))?;
            claimed.write_json(RECORD, &record)?;
            for f in ["metrics.jsonl", "morphisms.jsonl", "final.json"] {
                let _ = fs::remove_file(claimed.file(f));
            }
        }
        Start::Resume => {
            record.check_resume(run)?;
            // The same configuration, with the input description that runs
            // written before sprout recorded it lack.
            run.write_json("config.json", &input.describe(cfg, None))?;
            truncate_log(run, "metrics.jsonl", state.phase)?;
            truncate_log(run, "morphisms.jsonl", state.phase)?;
            println!(
                "resuming {} after phase {} of {}",
                run.path.display(),
                state.phase,
                g.phases
            );
        }
    }
    let _lock = lock;
    println!(
        "growing {} ({:?}) on {} ({} train / {} test images): {} phases x ({} train + {} morph epochs), lambda_p {:e}, lambda_f {:e}",
        cfg.seed_arch.family.name(),
        g.strategy,
        cfg.dataset,
        train.len(),
        test.len(),
        g.phases,
        g.train_epochs,
        g.morph_epochs,
        g.select.lambda_params,
        g.select.lambda_macs
    );
    let mut last_report: Option<PhaseReport> = None;
    while state.phase < g.phases {
        let start = Instant::now();
        let phase = state.phase + 1;
        let mut progress = bars(phase, g.phases);
        let report = run_phase(
            backend.as_mut(),
            &mut state,
            g,
            train,
            test,
            &norm,
            &mut progress,
        )
        .map_err(|e| failure(run, &format!("phase {phase}"), e, g.schedule.base))?;
        let secs = start.elapsed().as_secs_f64();
        log_phase(run, &report, secs)?;
        save_checkpoint(run, &state, &input, false)?;
        last_report = Some(report);
    }
    if !finished {
        let mut progress = bars(g.phases, g.phases);
        let fail = |e| failure(run, "final training", e, g.schedule.base);
        backend
            .load(&state.network, Some(&state.momentum))
            .map_err(fail)?;
        let train_stats = train_epochs(
            backend.as_mut(),
            &mut state,
            g,
            g.final_epochs,
            train,
            &norm,
            true,
            &mut progress,
        )
        .map_err(fail)?;
        state.network = backend.network().map_err(fail)?;
        state.momentum = backend.momentum().map_err(fail)?;
        let test_stats = evaluate(
            backend.as_mut(),
            test,
            &norm,
            &mut Batches::new(test, g.batch),
        )
        .map_err(fail)?;
        // The results first, then the checkpoint that says they exist: a kill
        // in between redoes the final training on resume.
        run.write_json(
            "final.json",
            &json!({
                "train_loss": train_stats.loss,
                "train_accuracy": train_stats.accuracy,
                "test_loss": test_stats.loss,
                "test_accuracy": test_stats.accuracy,
                "params": state.network.arch.params(),
                "macs": state.network.arch.macs(),
                "widths": state.network.arch.widths,
                "epochs_trained": state.epochs_trained,
            }),
        )?;
        save_final(run, cfg, &state.network, &input)?;
        finished = true;
        save_checkpoint(run, &state, &input, finished)?;
        println!(
            "final: test {:.2}%  params {}  MACs {}  widths {:?}",
            100.0 * test_stats.accuracy,
            state.network.arch.params(),
            state.network.arch.macs(),
            state.network.arch.widths
        );
    } else {
        save_final(run, cfg, &state.network, &input)?;
    }
    if cfg.retrain_epochs > 0 {
        retrain(
            run,
            cfg,
            &state.network.arch,
            (train, test, &norm),
            &input,
            device,
        )?;
    }
    write_figures(run, last_report.as_ref())?;
    println!("wrote {}", run.path.display());
    Ok(())
}

/// The grown network's files: model.safetensors, arch.json, and config.json
/// with its architecture.
fn save_final(run: &RunDir, cfg: &RunConfig, net: &Network, input: &InputSpec) -> Result<()> {
    save_network(&run.file("model.safetensors"), net, Some(input), &[])?;
    run.write_json("arch.json", &net.arch)?;
    run.write_json("config.json", &input.describe(cfg, Some(&net.arch)))
}

/// The phase line: accuracy and loss around the morphisms, the set's
/// estimate against its true effect, and how large the applied theta are.
pub fn phase_line(r: &PhaseReport, secs: f64) -> String {
    let (splits, prunes) = r.counts();
    let joint = r
        .joint_delta_loss
        .map(|j| format!("{j:+.4}"))
        .unwrap_or_else(|| "-".into());
    let theta = if splits > 0 {
        format!(
            "  theta/|w| {:.3} (max {:.3}; learned {:.3}, scale {:.2})",
            r.theta.mean_ratio, r.theta.max_ratio, r.theta.learned_mean_ratio, r.theta.mean_scale
        )
    } else {
        String::new()
    };
    format!(
        "phase {:>2}  loss {:.4}  test {:6.2}% -> {:6.2}% (BN refreshed {:6.2}%)  dL est {joint} true {:+.4} (refreshed {:+.4})  +{splits} splits -{prunes} prunes{theta}  params {} -> {}  widths {:?}  ({secs:.0} s)",
        r.phase,
        r.train.loss,
        100.0 * r.test.accuracy,
        100.0 * r.test_after.accuracy,
        100.0 * r.test_after_recalibrated.accuracy,
        r.true_delta_loss(),
        r.true_delta_loss_recalibrated(),
        r.arch_before.params(),
        r.arch_after.params(),
        r.arch_after.widths,
    )
}

fn log_phase(run: &RunDir, r: &PhaseReport, secs: f64) -> Result<()> {
    let (splits, prunes) = r.counts();
    let sum_dl: f64 = r.applied.iter().map(|c| c.delta_loss as f64).sum();
    println!("{}", phase_line(r, secs));
    run.write_json(&format!("arch-phase-{:02}.json", r.phase), &r.arch_after)?;
    run.append_jsonl(
        "metrics.jsonl",
        &json!({
            "phase": r.phase,
            "train_loss": r.train.loss,
            "train_accuracy": r.train.accuracy,
            "test_loss": r.test.loss,
            "test_accuracy": r.test.accuracy,
            "test_loss_after_morphisms": r.test_after.loss,
            "test_accuracy_after_morphisms": r.test_after.accuracy,
            "test_loss_after_morphisms_recalibrated": r.test_after_recalibrated.loss,
            "test_accuracy_after_morphisms_recalibrated": r.test_after_recalibrated.accuracy,
            "true_delta_loss": r.true_delta_loss(),
            "true_delta_loss_recalibrated": r.true_delta_loss_recalibrated(),
            "morph_loss": r.morph.loss,
            "params_before": r.arch_before.params(),
            "params": r.arch_after.params(),
            "macs": r.arch_after.macs(),
            "widths": r.arch_after.widths,
            "splits": splits,
            "prunes": prunes,
            "sum_estimated_delta_loss": sum_dl,
            "joint_estimated_delta_loss": r.joint_delta_loss,
            "theta_ratio_mean": r.theta.mean_ratio,
            "theta_ratio_max": r.theta.max_ratio,
            "learned_theta_ratio_mean": r.theta.learned_mean_ratio,
            "learned_theta_ratio_max": r.theta.learned_max_ratio,
            "split_scale_mean": r.theta.mean_scale,
            "seconds": secs,
        }),
    )?;
    for (c, scale) in r.applied.iter().zip(&r.scales) {
        run.append_jsonl(
            "morphisms.jsonl",
            &json!({
                "phase": r.phase,
                "layer": c.layer,
                "channel": c.channel,
                "kind": c.kind,
                "estimated_delta_loss": c.delta_loss,
                "gain": c.gain,
                "scale": scale,
                "delta_params": c.delta_params,
                "widths_after": r.arch_after.widths,
            }),
        )?;
    }
    run.write_json(
        &format!("candidates-phase-{:02}.json", r.phase),
        &json!({"widths": r.arch_before.widths, "candidates": r.candidates, "theta_norms": r.theta_norms}),
    )?;
    Ok(())
}

/// The paper's protocol for reported accuracy: re-initialise the grown
/// architecture and train it from scratch.
fn retrain(
    run: &RunDir,
    cfg: &RunConfig,
    arch: &Arch,
    data: (&Dataset, &Dataset, &Normalization),
    input: &InputSpec,
    device: &DeviceArgs,
) -> Result<()> {
    let (last, t, _) = retrain_to(
        &run.file("retrained.safetensors"),
        arch,
        &cfg.grow,
        cfg.seed,
        cfg.retrain_epochs,
        data,
        input,
        device,
    )?;
    println!(
        "retrained from scratch for {} epochs: test {:.2}%",
        cfg.retrain_epochs,
        100.0 * t.accuracy
    );
    run.write_json(
        "retrain.json",
        &json!({"epochs": cfg.retrain_epochs, "train_loss": last.loss, "test_accuracy": t.accuracy, "test_loss": t.loss, "params": arch.params()}),
    )
}

/// The paper's protocol for reported accuracy (and the fixed baselines):
/// `arch` trained from scratch for `epochs` epochs with `cfg`'s optimiser,
/// schedule and augmentation, with a progress bar, and saved to `path`
/// with `input`, the description of its images.
/// Returns the last training epoch's and the test statistics and the
/// seconds it took.
pub(crate) fn retrain_to(
    path: &Path,
    arch: &Arch,
    cfg: &GrowConfig,
    seed: u64,
    epochs: usize,
    (train, test, norm): (&Dataset, &Dataset, &Normalization),
    input: &InputSpec,
    device: &DeviceArgs,
) -> Result<(PassStats, PassStats, f64)> {
    let batches = train.len().div_ceil(cfg.batch) as u64;
    let pb = bar(batches, &format!("{} from scratch", path.display()));
    let start = Instant::now();
    let mut backend = device.open(cfg.batch)?;
    let (last, tested, net) = train_from_scratch(
        backend.as_mut(),
        arch,
        cfg,
        seed,
        epochs,
        train,
        test,
        norm,
        &mut |stage, done, _, loss| {
            if let Stage::Final { epoch } = stage {
                pb.set_position(done as u64);
                pb.set_message(format!("epoch {}/{epochs} loss {loss:.4}", epoch + 1));
            }
        },
    )?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    save_network(path, &net, Some(input), &[])?;
    Ok((last, tested, secs))
}

fn write_figures(run: &RunDir, last: Option<&PhaseReport>) -> Result<()> {
    let text = fs::read_to_string(run.file("metrics.jsonl")).unwrap_or_default();
    let mut points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v["params_before"].as_f64()?,
                100.0 * v["test_accuracy"].as_f64()?,
            ))
        })
        .collect();
    if let Ok(f) = fs::read(run.file("final.json")) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&f) {
            if let (Some(p), Some(a)) = (v["params"].as_f64(), v["test_accuracy"].as_f64()) {
                points.push((p, 100.0 * a));
            }
        }
    }
    crate::plots::accuracy_vs_params(
        &run.file("accuracy-vs-params.svg"),
        "test accuracy during growth",
        &[("grow".to_string(), points)],
    )?;
    let report = match last {
        Some(r) => Some(r.clone()),
        None => last_candidates(run)?,
    };
    if let Some(r) = report {
        crate::plots::architecture_figure(
            &run.file("architecture.svg"),
            &format!("phase {}: channels by estimated gain", r.phase),
            &r.arch_before.widths,
            &channel_scores(&r),
        )?;
    }
    Ok(())
}

/// The last phase's candidates from its JSON file (after a resume that ran no phase).
fn last_candidates(run: &RunDir) -> Result<Option<PhaseReport>> {
    let mut names: Vec<PathBuf> = fs::read_dir(&run.path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("candidates-phase-"))
        })
        .collect();
    names.sort();
    let Some(path) = names.last() else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&fs::read(path)?)?;
    let widths: Vec<usize> = serde_json::from_value(v["widths"].clone())?;
    let candidates = serde_json::from_value(v["candidates"].clone())?;
    let phase = phase_of(path);
    let mut arch = Arch {
        family: sprout_core::Family::Vgg19,
        input: [1, 32, 32],
        classes: 10,
        widths,
    };
    if let Ok(a) = crate::weights::load_arch_json(&run.file("arch.json")) {
        arch.family = a.family;
        arch.input = a.input;
        arch.classes = a.classes;
    }
    Ok(Some(PhaseReport {
        phase,
        train: PassStats::default(),
        test: PassStats::default(),
        test_after: PassStats::default(),
        test_after_recalibrated: PassStats::default(),
        morph: PassStats::default(),
        arch_after: arch.clone(),
        arch_before: arch,
        candidates,
        applied: Vec::new(),
        scales: Vec::new(),
        joint_delta_loss: None,
        theta: Default::default(),
        theta_norms: Vec::new(),
    }))
}

fn phase_of(path: &Path) -> usize {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `sprout grow`: its flags and those only the command line has.
#[derive(Args, Debug, Clone)]
pub struct GrowCommand {
    #[command(flatten)]
    pub args: GrowArgs,
    /// Write into --out even if it holds something other than a sprout grow
    /// run (saved progress of a grow run is never discarded: resume it).
    #[arg(long)]
    pub force: bool,
}

/// The run record beside config.json: what a resumed run must see again to
/// continue exactly.
const RECORD: &str = "record.json";

/// What is recorded in [`RECORD`]: the worker threads (the order of float
/// reductions depends on it) and a fingerprint of the data trained and tested on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct RunRecord {
    threads: usize,
    train_images: usize,
    test_images: usize,
    /// FNV-1a of both splits' shapes, pixels and labels, as 16 hex digits.
    data_fingerprint: String,
}

impl RunRecord {
    /// The record of this process (its thread count) on `train` and `test`.
    fn of(train: &Dataset, test: &Dataset) -> RunRecord {
        let mut h = Fnv64::default();
        for ds in [train, test] {
            for v in [ds.len(), ds.channels, ds.height, ds.width, ds.classes] {
                h.write_u64(v as u64);
            }
            h.write(&ds.images);
            h.write(&ds.labels);
        }
        RunRecord {
            threads: rayon::current_num_threads(),
            train_images: train.len(),
            test_images: test.len(),
            data_fingerprint: format!("{:016x}", h.finish()),
        }
    }

    /// Refuses to resume `run` when its record differs from this one, naming
    /// the first difference. A run without a record (written before records
    /// existed) gets this one.
    fn check_resume(&self, run: &RunDir) -> Result<()> {
        let path = run.file(RECORD);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return run.write_json(RECORD, self);
            }
            Err(e) => bail!("{}: {e}", path.display()),
        };
        let was: RunRecord = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a run record", path.display()))?;
        let dir = run.path.display();
        if was.threads != self.threads {
            bail!(
                "--resume {dir}: the run used {} worker threads, this process has {} (pass --threads {}; another count changes the results)",
                was.threads,
                self.threads,
                was.threads
            );
        }
        if (was.train_images, was.test_images) != (self.train_images, self.test_images) {
            bail!(
                "--resume {dir}: the run used {} training and {} test images, the data now gives {} and {}",
                was.train_images,
                was.test_images,
                self.train_images,
                self.test_images
            );
        }
        if was.data_fingerprint != self.data_fingerprint {
            bail!(
                "--resume {dir}: the data differs from the run's (fingerprint {} in {}, now {})",
                was.data_fingerprint,
                path.display(),
                self.data_fingerprint
            );
        }
        Ok(())
    }
}

/// The whole checkpoint to resume from, if any: `checkpoint`, else
/// `checkpoint.tmp` once its state.json (written last) exists, else
/// `checkpoint.old` (a kill between the renames of [`save_checkpoint`]).
fn saved_checkpoint(run: &RunDir) -> Option<PathBuf> {
    [CHECKPOINT, "checkpoint.tmp", "checkpoint.old"]
        .into_iter()
        .map(|d| run.file(d))
        .find(|d| d.join("state.json").is_file())
}

/// Refuses a fresh run in `out` when it holds saved progress of a grow run:
/// that is resumed, never started over.
fn refuse_saved_progress(out: &Path) -> Result<()> {
    let run = RunDir {
        path: out.to_path_buf(),
    };
    if saved_checkpoint(&run).is_some() {
        bail!(
            "{} holds a grow run with a checkpoint: use --resume {} to continue it, or choose another --out",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// Refuses a checkpoint that does not belong to this run: a phase beyond
/// the configured phases, or a network other than the one the run logged
/// for that phase (arch-phase-NN.json, or the seed before phase 1).
fn check_checkpoint(
    run: &RunDir,
    cfg: &RunConfig,
    state: &GrowState,
    finished: bool,
) -> Result<()> {
    let ckpt = saved_checkpoint(run).unwrap_or_else(|| run.file(CHECKPOINT));
    let ckpt = ckpt.display();
    let phases = cfg.grow.phases;
    if state.phase > phases {
        bail!(
            "{ckpt}: phase {} is beyond the run's {phases} phases",
            state.phase
        );
    }
    if finished && state.phase < phases {
        bail!(
            "{ckpt}: marked finished after phase {} of {phases}",
            state.phase
        );
    }
    let (expected, source) = if state.phase == 0 {
        (cfg.seed_arch.clone(), run.file("config.json"))
    } else {
        let path = run.file(&format!("arch-phase-{:02}.json", state.phase));
        (crate::weights::load_arch_json(&path)?, path)
    };
    let net = &state.network.arch;
    if *net != expected {
        bail!(
            "{ckpt}: the network after phase {} ({} {}x{}x{}, {} classes, widths {:?}) is not the one in {} (widths {:?}); the checkpoint is not this run's",
            state.phase,
            net.family.name(),
            net.input[0],
            net.input[1],
            net.input[2],
            net.classes,
            net.widths,
            source.display(),
            expected.widths
        );
    }
    Ok(())
}

/// The error of a failed phase or final training, with what to do about a
/// diverged run and whether a checkpoint is there to resume from.
fn failure(run: &RunDir, what: &str, e: sprout_core::Error, lr: f32) -> anyhow::Error {
    let hint = if matches!(e, sprout_core::Error::NonFinite(_)) {
        format!("; lower --lr (now {lr})")
    } else {
        String::new()
    };
    let kept = match saved_checkpoint(run) {
        Some(dir) => format!("the last good checkpoint {} is kept", dir.display()),
        None => format!("no checkpoint was written in {}", run.path.display()),
    };
    let message = format!("{what}: {}{hint}; {kept}", crate::errors::message(&e));
    crate::errors::Flagged::new(message, e).into()
}

/// The flag that chose the seed architecture, for messages.
fn seed_flag(args: &GrowArgs) -> String {
    match (&args.arch_file, &args.widths, args.width) {
        (Some(p), _, _) => format!("--arch-file {}", p.display()),
        (None, Some(w), _) => format!("--widths {w}"),
        (None, None, Some(w)) => format!("--width {w}"),
        (None, None, None) => format!("--arch {}", args.arch.as_deref().unwrap_or("vgg19")),
    }
}

/// A checkpoint's state.json; `path` names it in errors.
fn parse_state(path: &Path, bytes: &[u8]) -> Result<CheckpointState> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("{}: not a valid checkpoint", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cases of each checkpoint state.json fuzz test below.
    const CHECKPOINT_FUZZ_CASES: u32 = 256;

    fn valid_state() -> Vec<u8> {
        serde_json::to_vec_pretty(&CheckpointState {
            phase: 2,
            epochs_trained: 4,
            rng: [1, 2, 3, 4],
            finished: false,
        })
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CHECKPOINT_FUZZ_CASES, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_state_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let p = Path::new("state.json");
            if let Err(e) = parse_state(p, &bytes) {
                prop_assert!(e.to_string().starts_with("state.json: not a valid checkpoint"));
            }
        }

        #[test]
        fn fuzz_state_mutated_valid_file(
            edits in proptest::collection::vec((any::<usize>(), 0x20u8..0x7f), 1..4),
        ) {
            let mut bytes = valid_state();
            for &(pos, b) in &edits {
                let at = pos % bytes.len();
                bytes[at] = b;
            }
            let p = Path::new("state.json");
            match parse_state(p, &bytes) {
                Ok(st) => prop_assert!(st.rng.len() == 4),
                Err(e) => prop_assert!(e.to_string().starts_with("state.json")),
            }
        }
    }

    #[test]
    fn valid_state_parses() {
        let st = parse_state(Path::new("s"), &valid_state()).unwrap();
        assert_eq!((st.phase, st.epochs_trained, st.finished), (2, 4, false));
        assert!(parse_state(Path::new("s"), b"{\"phase\": -1}").is_err());
    }
}
