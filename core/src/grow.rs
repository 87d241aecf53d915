//! The growth loop (paper Algorithm 1), written once against [`Backend`]:
//! per phase, train the model, learn morphism parameters with the model fixed
//! while the estimates average, then select and apply morphisms.

use crate::arch::Arch;
use crate::backend::Backend;
use crate::data::{Augment, Dataset, Normalization};
use crate::error::{Error, Result};
use crate::learn::{MorphConfig, MorphMethod, MorphState};
use crate::morph;
use crate::network::Network;
use crate::optim::{Adam, Sgd, StepSchedule};
use crate::rng::Rng;
use crate::select::{
    candidates, joint_delta_loss, random_splits, select, select_joint, select_scaled, split_scale,
    to_morphisms, Candidate, Kind, SelectConfig,
};
use crate::train::{evaluate, shuffled_pass, train_epoch, Batches, PassStats};
use alloc::vec::Vec;

/// Where to grow: the paper's method or a baseline in the same loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Strategy {
    /// Learned morphisms ranked by the Gauss-Newton estimate (the paper).
    #[default]
    Gn,
    /// Net2Net-style: split randomly chosen channels with small random theta.
    Random,
    /// Widen every layer by the same fraction (random channels, small random
    /// theta to break the symmetry of the two halves), keeping width ratios.
    Uniform,
    /// Splitting steepest descent (Liu et al. 2019): split along the minimum
    /// eigenvector of each channel's splitting matrix, ranked by eigenvalue.
    Splitting,
}

/// Everything that defines a growth run besides data and seed.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GrowConfig {
    pub phases: usize,
    /// Training epochs per phase (n_phase).
    pub train_epochs: usize,
    /// Morphism-learning epochs per phase (n_phase in the paper too).
    pub morph_epochs: usize,
    /// Training epochs after the last phase's morphisms are applied.
    pub final_epochs: usize,
    pub batch: usize,
    /// Learning rate by cumulative training epoch.
    pub schedule: StepSchedule,
    pub weight_decay: f32,
    pub adam: Adam,
    /// EMA weight; `None` is the paper's `(S / N) / 2`.
    pub ema_alpha: Option<f32>,
    /// Initial `|theta[c]| / |w_in[c]|`.
    pub theta_init: f32,
    pub select: SelectConfig,
    pub augment: Option<Augment>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub strategy: Strategy,
    /// Trust region on learned theta: `|theta[c]| <= theta_max * |w_in[c]|`
    /// (`None`: unbounded, as in the paper).
    #[cfg_attr(feature = "serde", serde(default))]
    pub theta_max: Option<f32>,
    /// Splitting: eigen-solver steps per mini-batch (warm-started across batches).
    #[cfg_attr(feature = "serde", serde(default = "default_split_iterations"))]
    pub split_iterations: usize,
    /// Splitting: step along the eigenvector, relative to the layer's RMS kernel norm.
    #[cfg_attr(feature = "serde", serde(default = "default_split_epsilon"))]
    pub split_epsilon: f32,
}

#[cfg_attr(not(feature = "serde"), allow(dead_code))]
fn default_split_iterations() -> usize {
    4
}

#[cfg_attr(not(feature = "serde"), allow(dead_code))]
fn default_split_epsilon() -> f32 {
    0.1
}

impl GrowConfig {
    /// Checks every setting, naming the flag that is wrong.
    pub fn validate(&self) -> Result<()> {
        use alloc::format;
        if self.phases == 0 {
            return Err(Error::Config("--phases must be at least 1".into()));
        }
        if self.train_epochs == 0 || self.morph_epochs == 0 {
            return Err(Error::Config("--phase-epochs must be at least 1".into()));
        }
        if self.batch == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        if !(self.theta_init.is_finite() && self.theta_init > 0.0) {
            return Err(Error::Config(format!(
                "--theta-init must be positive, got {}",
                self.theta_init
            )));
        }
        if let Some(a) = self.ema_alpha {
            if !(a > 0.0 && a <= 1.0) {
                return Err(Error::Config(format!(
                    "--ema-alpha must be in (0, 1], got {a}"
                )));
            }
        }
        if let Some(r) = self.theta_max {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::Config(format!(
                    "--theta-max must be positive, got {r}"
                )));
            }
        }
        if !(self.split_epsilon.is_finite() && self.split_epsilon > 0.0) {
            return Err(Error::Config(format!(
                "--split-epsilon must be positive, got {}",
                self.split_epsilon
            )));
        }
        self.select.validate()
    }
}

/// What a checkpoint holds: enough to continue a run exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowState {
    /// Phases completed.
    pub phase: usize,
    /// Training epochs run so far (drives the learning-rate schedule).
    pub epochs_trained: usize,
    pub network: Network,
    pub momentum: Vec<Vec<f32>>,
    pub rng: Rng,
}

impl GrowState {
    /// The start of a run from a seed network.
    pub fn new(network: Network, seed: u64) -> GrowState {
        let momentum = network.zeros_like();
        GrowState {
            phase: 0,
            epochs_trained: 0,
            network,
            momentum,
            rng: Rng::new(seed),
        }
    }
}

/// Training batches that refresh BN running statistics for the diagnostic
/// evaluation after a phase's morphisms (momentum 0.1: 30 batches leave
/// about 4% of the copied statistics).
pub const CALIBRATION_BATCHES: usize = 30;

/// Which part of a phase a progress callback reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Train { epoch: usize },
    Morph { epoch: usize },
    Final { epoch: usize },
}

/// The outcome of one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseReport {
    /// 1-based phase number.
    pub phase: usize,
    /// Last training epoch of the phase.
    pub train: PassStats,
    /// Test set after training, before the morphisms.
    pub test: PassStats,
    /// Test set right after the morphisms are applied, before further training.
    pub test_after: PassStats,
    /// The same after refreshing BN running statistics on a few training batches.
    pub test_after_recalibrated: PassStats,
    /// Mean loss over the morphism-learning batches.
    pub morph: PassStats,
    pub arch_before: Arch,
    pub arch_after: Arch,
    /// Every candidate with its final EMA estimate and gain.
    pub candidates: Vec<Candidate>,
    pub applied: Vec<Candidate>,
    /// Eq. (1) for the applied set as a whole (with joint selection only).
    pub joint_delta_loss: Option<f64>,
    /// The common factor applied to the chosen splits' theta
    /// ([`SelectConfig::scale_splits`]).
    pub split_scale: Option<f64>,
    /// Learned theta norms per layer and channel (for plots).
    pub theta_norms: Vec<Vec<f32>>,
}

/// Progress callback: stage, batches done, batches in the pass, batch loss.
pub type Progress<'a> = &'a mut dyn FnMut(Stage, usize, usize, f32);

/// Trains `epochs` epochs from `state`, advancing its counters and RNG.
#[allow(clippy::too_many_arguments)]
pub fn train_epochs(
    backend: &mut dyn Backend,
    state: &mut GrowState,
    cfg: &GrowConfig,
    epochs: usize,
    train: &Dataset,
    norm: &Normalization,
    final_stage: bool,
    progress: Progress,
) -> Result<PassStats> {
    let mut buffers = Batches::new(train, cfg.batch);
    let mut last = PassStats::default();
    for e in 0..epochs {
        let sgd = Sgd {
            weight_decay: cfg.weight_decay,
            ..Sgd::paper(cfg.schedule.lr_at(state.epochs_trained))
        };
        let stage = if final_stage {
            Stage::Final { epoch: e }
        } else {
            Stage::Train { epoch: e }
        };
        last = train_epoch(
            backend,
            train,
            norm,
            &mut buffers,
            cfg.augment.as_ref(),
            &sgd,
            &mut state.rng,
            &mut |d, t, s| progress(stage, d, t, s.loss),
        )?;
        state.epochs_trained += 1;
    }
    Ok(last)
}

/// The paper's protocol for reported accuracy (and the fixed baselines):
/// `arch` initialised from `seed` and trained from scratch for `epochs`
/// epochs with `cfg`'s optimiser, schedule and augmentation. Returns the last
/// training epoch's statistics, the test statistics and the trained network.
#[allow(clippy::too_many_arguments)]
pub fn train_from_scratch(
    backend: &mut dyn Backend,
    arch: &Arch,
    cfg: &GrowConfig,
    seed: u64,
    epochs: usize,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalization,
    progress: Progress,
) -> Result<(PassStats, PassStats, Network)> {
    let mut state = GrowState::new(Network::init(arch, seed ^ 0x7e7a_1a17), seed ^ 0x3c6e_f372);
    backend.load(&state.network, None)?;
    let last = train_epochs(
        backend, &mut state, cfg, epochs, train, norm, true, progress,
    )?;
    let tested = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    Ok((last, tested, backend.network()?))
}

/// Multiplies the theta of every split in `chosen` by `scale`, but keeps each
/// at least `floor * |w_in[c]|` (the initial noise level): with theta = 0 the
/// two halves would get equal gradients and never become different channels.
fn shrink_split_thetas(state: &mut MorphState, chosen: &[Candidate], scale: f32, floor: f32) {
    for k in chosen.iter().filter(|k| k.kind == Kind::Split) {
        let norm = state.theta_norm(k.layer, k.channel);
        let least = floor * state.w_norms[k.layer][k.channel];
        let factor = if norm * scale < least {
            (least / norm.max(1e-12)).min(1.0)
        } else {
            scale
        };
        let fan = state.theta[k.layer].len() / state.w_norms[k.layer].len();
        for v in &mut state.theta[k.layer][k.channel * fan..(k.channel + 1) * fan] {
            *v *= factor;
        }
    }
}

/// Turns splitting eigenpairs into split candidates: theta = eps_l * v_min with
/// eps_l = `epsilon` times the RMS norm of layer l's incoming kernels (one step
/// size per layer, so within a layer the ranking is by eigenvalue, as the
/// method prescribes), and the estimated change eps_l^2 / 2 * lambda_min (the
/// second-order change of the loss for a split along +-eps v with halved
/// outgoing weights).
fn splitting_to_splits(net: &Network, state: &mut MorphState, epsilon: f32) {
    let idx = net.index();
    for (l, u) in net.arch.units().iter().enumerate() {
        let w = &net.tensors[idx.units[l].conv];
        let rms = libm::sqrtf(w.iter().map(|v| v * v).sum::<f32>() / u.cout as f32);
        let eps = epsilon * rms;
        for v in state.theta[l].iter_mut() {
            *v *= eps;
        }
        for e in state.split_ema[l].iter_mut() {
            *e *= 0.5 * eps * eps;
        }
    }
}

/// One phase of Algorithm 1. On success `state` holds the grown network; on
/// error it is unchanged except for its RNG, so the caller keeps its last
/// checkpoint.
pub fn run_phase(
    backend: &mut dyn Backend,
    state: &mut GrowState,
    cfg: &GrowConfig,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalization,
    progress: Progress,
) -> Result<PhaseReport> {
    cfg.validate()?;
    let mut next = state.clone();
    backend.load(&next.network, Some(&next.momentum))?;
    let train_stats = train_epochs(
        backend,
        &mut next,
        cfg,
        cfg.train_epochs,
        train,
        norm,
        false,
        progress,
    )?;
    let test_stats = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    let trained = backend.network()?;
    let mut momentum = backend.momentum()?;

    let arch_before = trained.arch.clone();
    let mut theta_rng = next.rng.fork();
    let (learned, cands, applied, morph_stats) = match cfg.strategy {
        Strategy::Gn | Strategy::Splitting => {
            // The model is fixed and BN frozen. Gn: Adam on theta against
            // eq. (1) with its EMA. Splitting: per-batch minimum eigenpairs of
            // the splitting matrices with the EMA of the eigenvalues.
            let method = match cfg.strategy {
                Strategy::Splitting => MorphMethod::Splitting {
                    iterations: cfg.split_iterations.max(1),
                },
                _ => MorphMethod::GaussNewton,
            };
            let mcfg = MorphConfig {
                adam: cfg.adam,
                ema_alpha: cfg
                    .ema_alpha
                    .unwrap_or_else(|| MorphConfig::paper(cfg.batch, train.len()).ema_alpha),
                method,
                theta_max: cfg.theta_max,
                joint: (cfg.select.joint || cfg.select.scale_splits)
                    && cfg.strategy == Strategy::Gn,
            };
            backend.begin_morph(MorphState::new(&trained, cfg.theta_init, &mut theta_rng))?;
            let mut buffers = Batches::new(train, cfg.batch);
            let mut morph_stats = PassStats::default();
            for e in 0..cfg.morph_epochs {
                morph_stats = shuffled_pass(
                    train,
                    norm,
                    &mut buffers,
                    cfg.augment.as_ref(),
                    &mut next.rng,
                    &mut |x, y, n| backend.morph_batch(x, y, n, &mcfg),
                    &mut |d, t, s| progress(Stage::Morph { epoch: e }, d, t, s.loss),
                )?;
            }
            let mut learned = backend.end_morph()?;
            let mut select_cfg = cfg.select;
            if cfg.strategy == Strategy::Splitting {
                splitting_to_splits(&trained, &mut learned, cfg.split_epsilon);
                select_cfg.prune = false;
            }
            let cands = candidates(&arch_before, &learned, &select_cfg);
            let applied = if cfg.strategy != Strategy::Gn {
                select(&arch_before, &cands, &select_cfg)
            } else if select_cfg.scale_splits {
                select_scaled(&arch_before, &cands, &select_cfg, &learned)
            } else if select_cfg.joint {
                select_joint(&arch_before, &cands, &select_cfg, &learned)
            } else {
                select(&arch_before, &cands, &select_cfg)
            };
            (learned, cands, applied, morph_stats)
        }
        Strategy::Random | Strategy::Uniform => {
            // No estimate: the per-layer budget of channels, split with noise.
            let noise = MorphState::new(&trained, cfg.theta_init, &mut theta_rng);
            let per_layer = cfg.strategy == Strategy::Uniform;
            let applied = random_splits(&arch_before, &cfg.select, per_layer, &mut next.rng);
            (noise, applied.clone(), applied, PassStats::default())
        }
    };
    let scaled = (cfg.select.scale_splits && cfg.strategy == Strategy::Gn)
        .then(|| split_scale(&applied, &learned))
        .flatten();
    let (joint_delta, morphisms) = match scaled {
        Some(s) => {
            let mut shrunk = learned.clone();
            shrink_split_thetas(&mut shrunk, &applied, s.scale as f32, cfg.theta_init);
            (
                Some(s.delta_loss),
                to_morphisms(&arch_before, &applied, &shrunk),
            )
        }
        None => (
            joint_delta_loss(&applied, &learned),
            to_morphisms(&arch_before, &applied, &learned),
        ),
    };
    let mut extra = [core::mem::take(&mut momentum)];
    let grown = morph::apply(&trained, &morphisms, &mut extra)?;
    let [momentum] = extra;
    // How the applied morphisms change the network before any further
    // training: with the BN running statistics the morphisms copied, and after
    // refreshing them on a few training batches (no weight changes), which
    // separates stale statistics from a changed function.
    backend.load(&grown, Some(&momentum))?;
    let test_after = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    let mut cal = Batches::new(train, cfg.batch);
    let mut cal_rng = next.rng.fork();
    for _ in 0..CALIBRATION_BATCHES {
        let idx: Vec<usize> = (0..cfg.batch.min(train.len()))
            .map(|_| cal_rng.below(train.len()))
            .collect();
        crate::data::fill_batch(
            train,
            norm,
            &idx,
            None,
            &mut cal_rng,
            &mut cal.images,
            &mut cal.labels,
        );
        backend.calibrate_batch(&cal.images, &cal.labels, idx.len())?;
    }
    let test_after_recalibrated =
        evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    let theta_norms = (0..arch_before.layers())
        .map(|l| {
            (0..arch_before.widths[l])
                .map(|c| learned.theta_norm(l, c))
                .collect()
        })
        .collect();
    next.network = grown;
    next.momentum = momentum;
    next.phase += 1;
    *state = next;
    Ok(PhaseReport {
        phase: state.phase,
        train: train_stats,
        test: test_stats,
        test_after,
        test_after_recalibrated,
        morph: morph_stats,
        arch_after: state.network.arch.clone(),
        arch_before,
        candidates: cands,
        applied,
        joint_delta_loss: joint_delta,
        split_scale: scaled.map(|s| s.scale),
        theta_norms,
    })
}
