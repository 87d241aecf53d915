//! The growth loop (paper Algorithm 1), written once against [`Backend`]:
//! per phase, train the model, learn morphism parameters with the model fixed
//! while the estimates average, then select and apply morphisms.

use crate::arch::Arch;
use crate::backend::Backend;
use crate::data::{Augment, Dataset, Normalization};
use crate::error::{Error, Field, Result};
use crate::learn::{Curvature, MorphConfig, MorphMethod, MorphState};
use crate::morph;
use crate::network::Network;
use crate::optim::{Adam, Sgd, StepSchedule};
use crate::refine::refine_splits;
use crate::rng::Rng;
use crate::select::{
    candidates, choose, random_splits, random_splits_to, to_morphisms, Candidate, Kind,
    SelectConfig, Selected, Selection,
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

/// Which theta the chosen splits are applied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ThetaSource {
    /// The learned theta, scaled by the selection rule (the method).
    #[default]
    Learned,
    /// The initial noise draw of the same channels (an ablation: the
    /// estimator only ranks channels, its learned directions are discarded).
    Noise,
}

/// Everything that defines a growth run besides data and seed.
///
/// [`GrowConfig::default`] is the scaled-down setting for these 2-core
/// machines; [`GrowConfig::paper`] is the paper's CIFAR protocol. Change
/// single settings with the `with_*` builders or struct update syntax.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GrowConfig {
    /// Growth phases (morphism rounds).
    pub phases: usize,
    /// Training epochs per phase (n_phase).
    pub train_epochs: usize,
    /// Morphism-learning epochs per phase (n_phase in the paper too).
    pub morph_epochs: usize,
    /// Training epochs after the last phase's morphisms are applied.
    pub final_epochs: usize,
    /// Mini-batch size for training and morphism learning.
    pub batch: usize,
    /// Learning rate by cumulative training epoch.
    pub schedule: StepSchedule,
    /// SGD weight decay.
    pub weight_decay: f32,
    /// The optimiser of theta.
    pub adam: Adam,
    /// EMA weight; `None` is the paper's `(S / N) / 2`.
    pub ema_alpha: Option<f32>,
    /// Initial `|theta[c]| / |w_in[c]|`.
    pub theta_init: f32,
    /// Which morphisms to apply.
    pub select: SelectConfig,
    /// Training augmentation (`None`: none).
    pub augment: Option<Augment>,
    /// What scores candidates: the Gauss-Newton estimate or a baseline.
    #[cfg_attr(feature = "serde", serde(default))]
    pub strategy: Strategy,
    /// Trust region on learned theta: `|theta[c]| <= theta_max * |w_in[c]|`
    /// (default 1; the paper has none, docs/conventions.md, "Trust region")
    /// (`None`: unbounded, as in the paper).
    #[cfg_attr(feature = "serde", serde(default))]
    pub theta_max: Option<f32>,
    /// Splitting: eigen-solver steps per mini-batch (warm-started across batches).
    #[cfg_attr(feature = "serde", serde(default = "default_split_iterations"))]
    pub split_iterations: usize,
    /// Splitting: step along the eigenvector, relative to the layer's RMS kernel norm.
    #[cfg_attr(feature = "serde", serde(default = "default_split_epsilon"))]
    pub split_epsilon: f32,
    /// Learned theta (the method) or the init noise (ablation).
    #[cfg_attr(feature = "serde", serde(default))]
    pub theta: ThetaSource,
    /// Random and uniform growth: grow toward this parameter count, an
    /// equal share of what is left in each remaining phase, instead of by
    /// the per-layer fraction (to match another run's final size).
    #[cfg_attr(feature = "serde", serde(default))]
    pub target_params: Option<u64>,
    /// The estimate's quadratic term in the unit that feeds the logits.
    #[cfg_attr(feature = "serde", serde(default))]
    pub curvature: Curvature,
    /// Adam steps (one training batch each) refining the chosen splits'
    /// theta on the expanded network's real loss before training resumes
    /// ([`crate::refine`]); 0: none.
    #[cfg_attr(feature = "serde", serde(default))]
    pub refine_steps: usize,
}

impl Default for GrowConfig {
    /// The scaled-down run: 4 phases of 2 training and 2 morphism epochs, 2
    /// final epochs, batch 64, SGD lr 0.05 (constant), Adam lr 1e-2 on
    /// theta, the paper's EMA weight, theta initialised at 1% of `|w_in|`,
    /// [`SelectConfig::default`], crop + flip augmentation.
    fn default() -> GrowConfig {
        GrowConfig {
            phases: 4,
            train_epochs: 2,
            morph_epochs: 2,
            final_epochs: 2,
            batch: 64,
            schedule: StepSchedule::constant(0.05),
            weight_decay: 1e-4,
            adam: Adam::paper(),
            ema_alpha: None,
            theta_init: 0.01,
            select: SelectConfig::default(),
            augment: Some(Augment::default()),
            strategy: Strategy::Gn,
            theta_max: Some(1.0),
            split_iterations: default_split_iterations(),
            split_epsilon: default_split_epsilon(),
            theta: ThetaSource::Learned,
            target_params: None,
            curvature: Curvature::RankOne,
            refine_steps: 0,
        }
    }
}

impl GrowConfig {
    /// The paper's CIFAR protocol (section 4): 30 phases of 20 training and
    /// 20 morphism epochs, batch 64, SGD lr 0.1 dropping 10x at 50% and 75%
    /// of training, lambda_p 3e-7 and its independent selection rule.
    pub fn paper() -> GrowConfig {
        let epochs = 30 * 20;
        GrowConfig {
            phases: 30,
            train_epochs: 20,
            morph_epochs: 20,
            final_epochs: 0,
            schedule: StepSchedule {
                base: 0.1,
                milestones: alloc::vec![epochs / 2, epochs * 3 / 4],
                gamma: 0.1,
            },
            select: SelectConfig {
                selection: crate::select::Selection::Independent,
                ..SelectConfig::default()
            },
            theta_max: None,
            ..GrowConfig::default()
        }
    }

    /// Training epochs in all: every phase's and the final ones.
    pub fn total_train_epochs(&self) -> usize {
        self.phases * self.train_epochs + self.final_epochs
    }

    /// `phases` phases.
    pub fn with_phases(mut self, phases: usize) -> Self {
        self.phases = phases;
        self
    }

    /// `train` training and `morph` morphism-learning epochs per phase.
    pub fn with_phase_epochs(mut self, train: usize, morph: usize) -> Self {
        self.train_epochs = train;
        self.morph_epochs = morph;
        self
    }

    /// `epochs` training epochs after the last phase.
    pub fn with_final_epochs(mut self, epochs: usize) -> Self {
        self.final_epochs = epochs;
        self
    }

    /// The model's learning-rate schedule.
    pub fn with_schedule(mut self, schedule: StepSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The strategy (where to grow).
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The loss-resource tradeoff and selection rule.
    pub fn with_select(mut self, select: SelectConfig) -> Self {
        self.select = select;
        self
    }
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
    /// Checks every setting; an error names the [`Field`] that is wrong.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            (Field::Phases, self.phases),
            (Field::TrainEpochs, self.train_epochs),
            (Field::MorphEpochs, self.morph_epochs),
            (Field::Batch, self.batch),
        ] {
            if v == 0 {
                return Err(Error::config(field, "at least 1", v));
            }
        }
        if !(self.theta_init.is_finite() && self.theta_init > 0.0) {
            return Err(Error::config(Field::ThetaInit, "positive", self.theta_init));
        }
        if let Some(a) = self.ema_alpha {
            if !(a > 0.0 && a <= 1.0) {
                return Err(Error::config(Field::EmaAlpha, "in (0, 1]", a));
            }
        }
        if let Some(r) = self.theta_max {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::config(Field::ThetaMax, "positive", r));
            }
        }
        if !(self.split_epsilon.is_finite() && self.split_epsilon > 0.0) {
            return Err(Error::config(
                Field::SplitEpsilon,
                "positive",
                self.split_epsilon,
            ));
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
    /// The network being grown.
    pub network: Network,
    /// SGD momentum, one buffer per tensor of `network`.
    pub momentum: Vec<Vec<f32>>,
    /// The random stream (theta noise, shuffles, augmentation).
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
    /// Training within a phase.
    Train {
        /// Epoch within the phase, from 0.
        epoch: usize,
    },
    /// Morphism learning within a phase.
    Morph {
        /// Epoch within the phase, from 0.
        epoch: usize,
    },
    /// Training after the last phase.
    Final {
        /// Epoch of the final training, from 0.
        epoch: usize,
    },
}

/// How large the applied splits' theta are against their incoming kernels.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ThetaStats {
    /// Mean `|theta[c]| / |w_in[c]|` as applied (after the selection's scales).
    pub mean_ratio: f64,
    /// Largest `|theta[c]| / |w_in[c]|` as applied.
    pub max_ratio: f64,
    /// Mean ratio of the same channels' learned theta, before scaling.
    pub learned_mean_ratio: f64,
    /// Largest ratio of the learned theta, before scaling.
    pub learned_max_ratio: f64,
    /// Mean scale the selection put on the chosen splits' theta.
    pub mean_scale: f64,
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
    /// Test set right after the morphisms are applied, before further
    /// training, with the BN statistics the morphisms copied (frozen sigma):
    /// `test_after.loss - test.loss` is the true Delta L of the applied set.
    pub test_after: PassStats,
    /// The same after refreshing BN running statistics on a few training batches.
    pub test_after_recalibrated: PassStats,
    /// Mean loss over the morphism-learning batches.
    pub morph: PassStats,
    /// The architecture before the phase's morphisms.
    pub arch_before: Arch,
    /// The architecture after them.
    pub arch_after: Arch,
    /// Every candidate with its final EMA estimate and gain.
    pub candidates: Vec<Candidate>,
    /// The applied candidates, in the order applied.
    pub applied: Vec<Candidate>,
    /// Per applied candidate: the factor the selection put on its theta.
    pub scales: Vec<f64>,
    /// Eq. (1) for the applied set as a whole, with its scales (rules that
    /// read the pairwise terms only).
    pub joint_delta_loss: Option<f64>,
    /// Theta of the applied splits against their incoming kernels.
    pub theta: ThetaStats,
    /// Learned theta norms per layer and channel (for plots).
    pub theta_norms: Vec<Vec<f32>>,
}

impl PhaseReport {
    /// Applied splits and prunes.
    pub fn counts(&self) -> (usize, usize) {
        let splits = self
            .applied
            .iter()
            .filter(|c| c.kind == Kind::Split)
            .count();
        (splits, self.applied.len() - splits)
    }

    /// True change of the held-out loss from applying the set, frozen sigma.
    pub fn true_delta_loss(&self) -> f32 {
        self.test_after.loss - self.test.loss
    }

    /// True change with BN statistics refreshed.
    pub fn true_delta_loss_recalibrated(&self) -> f32 {
        self.test_after_recalibrated.loss - self.test.loss
    }
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

/// The theta each chosen split is applied with: its learned theta times its
/// scale, but at least `floor * |w_in[c]|` (the initial noise level): with
/// theta = 0 the two halves would get equal gradients and never become
/// different channels.
fn scaled_thetas(learned: &MorphState, selected: &Selected, floor: f32) -> MorphState {
    let mut out = learned.clone();
    for (k, &scale) in selected.chosen.iter().zip(&selected.scales) {
        if k.kind != Kind::Split {
            continue;
        }
        let norm = learned.theta_norm(k.layer, k.channel);
        let least = floor * learned.w_norms[k.layer][k.channel];
        let scale = scale as f32;
        let factor = if norm * scale < least {
            (least / norm.max(1e-12)).min(1.0)
        } else {
            scale
        };
        let fan = out.theta[k.layer].len() / out.w_norms[k.layer].len();
        for v in &mut out.theta[k.layer][k.channel * fan..(k.channel + 1) * fan] {
            *v *= factor;
        }
    }
    out
}

/// Mean and largest `|theta| / |w_in|` of the chosen splits in `applied`
/// and in `learned`.
fn theta_stats(applied: &MorphState, learned: &MorphState, selected: &Selected) -> ThetaStats {
    let mut st = ThetaStats::default();
    let mut n = 0usize;
    for (k, &scale) in selected.chosen.iter().zip(&selected.scales) {
        if k.kind != Kind::Split {
            continue;
        }
        let w = f64::from(learned.w_norms[k.layer][k.channel].max(1e-12));
        let r = f64::from(applied.theta_norm(k.layer, k.channel)) / w;
        let rl = f64::from(learned.theta_norm(k.layer, k.channel)) / w;
        st.mean_ratio += r;
        st.learned_mean_ratio += rl;
        st.max_ratio = st.max_ratio.max(r);
        st.learned_max_ratio = st.learned_max_ratio.max(rl);
        st.mean_scale += scale;
        n += 1;
    }
    if n > 0 {
        st.mean_ratio /= n as f64;
        st.learned_mean_ratio /= n as f64;
        st.mean_scale /= n as f64;
    }
    st
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

/// What the scorer produced: learned morphism parameters with their
/// estimates, the noise they started from, and every candidate's gain.
struct Scored {
    learned: MorphState,
    noise: MorphState,
    candidates: Vec<Candidate>,
    morph: PassStats,
}

/// Algorithm 1, "train": `cfg.train_epochs` epochs of the model, then the
/// test set. Returns the statistics, the trained network and its momentum.
fn train_step(
    backend: &mut dyn Backend,
    next: &mut GrowState,
    cfg: &GrowConfig,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalization,
    progress: Progress,
) -> Result<(PassStats, PassStats, Network, Vec<Vec<f32>>)> {
    backend.load(&next.network, Some(&next.momentum))?;
    let stats = train_epochs(
        backend,
        next,
        cfg,
        cfg.train_epochs,
        train,
        norm,
        false,
        progress,
    )?;
    let tested = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    Ok((stats, tested, backend.network()?, backend.momentum()?))
}

/// Algorithm 1, "learn morphisms" (what to grow): with the model fixed and BN
/// frozen, Gauss-Newton runs Adam on theta against eq. (1) with its EMA;
/// splitting takes per-batch minimum eigenpairs of the splitting matrices
/// with the EMA of the eigenvalues; random and uniform growth score nothing.
#[allow(clippy::too_many_arguments)]
fn learn_morphisms(
    backend: &mut dyn Backend,
    next: &mut GrowState,
    cfg: &GrowConfig,
    trained: &Network,
    train: &Dataset,
    norm: &Normalization,
    progress: Progress,
) -> Result<Scored> {
    let mut theta_rng = next.rng.fork();
    let noise = MorphState::new(trained, cfg.theta_init, &mut theta_rng.clone());
    let method = match cfg.strategy {
        Strategy::Random | Strategy::Uniform => {
            return Ok(Scored {
                learned: noise.clone(),
                noise,
                candidates: Vec::new(),
                morph: PassStats::default(),
            })
        }
        Strategy::Splitting => MorphMethod::Splitting {
            iterations: cfg.split_iterations.max(1),
        },
        Strategy::Gn => MorphMethod::GaussNewton,
    };
    let mcfg = MorphConfig {
        adam: cfg.adam,
        ema_alpha: cfg
            .ema_alpha
            .unwrap_or_else(|| MorphConfig::paper(cfg.batch, train.len()).ema_alpha),
        method,
        theta_max: cfg.theta_max,
        joint: cfg.select.selection.needs_cross() && cfg.strategy == Strategy::Gn,
        curvature: cfg.curvature,
    };
    backend.begin_morph(MorphState::new(trained, cfg.theta_init, &mut theta_rng))?;
    let mut buffers = Batches::new(train, cfg.batch);
    let mut morph = PassStats::default();
    for e in 0..cfg.morph_epochs {
        morph = shuffled_pass(
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
    if cfg.strategy == Strategy::Splitting {
        splitting_to_splits(trained, &mut learned, cfg.split_epsilon);
    }
    let candidates = candidates(&trained.arch, &learned, &scorer_select(cfg));
    Ok(Scored {
        learned,
        noise,
        candidates,
        morph,
    })
}

/// The selection settings the strategy's candidates are ranked with:
/// splitting prices eigenvalue estimates that have no prunes and no pairwise
/// terms, so it takes the paper's independent rule over splits.
fn scorer_select(cfg: &GrowConfig) -> SelectConfig {
    match cfg.strategy {
        Strategy::Splitting => SelectConfig {
            prune: false,
            selection: Selection::Independent,
            ..cfg.select
        },
        _ => cfg.select,
    }
}

/// Algorithm 1, "select" (which to apply): the selection rule over the
/// scored candidates, or the random / uniform baselines' draw. `phase` is
/// the 0-based phase being run.
fn select_step(
    cfg: &GrowConfig,
    arch: &Arch,
    scored: &Scored,
    phase: usize,
    rng: &mut Rng,
) -> Selected {
    match cfg.strategy {
        Strategy::Random | Strategy::Uniform => {
            let per_layer = cfg.strategy == Strategy::Uniform;
            let chosen = match cfg.target_params {
                Some(target) => {
                    let now = arch.params();
                    let left = cfg.phases.saturating_sub(phase).max(1) as u64;
                    let step = target.saturating_sub(now) / left;
                    random_splits_to(arch, now + step, per_layer, rng)
                }
                None => random_splits(arch, &cfg.select, per_layer, rng),
            };
            Selected {
                scales: alloc::vec![1.0; chosen.len()],
                chosen,
                joint_delta_loss: None,
            }
        }
        _ => choose(
            arch,
            &scored.candidates,
            &scorer_select(cfg),
            &scored.learned,
        ),
    }
}

/// Algorithm 1, "apply": the chosen splits with their scaled learned theta
/// (or, with [`ThetaSource::Noise`], their initial noise), and the prunes.
/// With [`GrowConfig::refine_steps`], the learned theta of the chosen splits
/// are then refined on the expanded network's training loss.
#[allow(clippy::too_many_arguments)]
fn apply_step(
    cfg: &GrowConfig,
    trained: &Network,
    momentum: Vec<Vec<f32>>,
    scored: &Scored,
    selected: &Selected,
    train: &Dataset,
    norm: &Normalization,
    rng: &mut Rng,
) -> Result<(Network, Vec<Vec<f32>>, ThetaStats)> {
    let learned = !matches!(
        (cfg.strategy, cfg.theta),
        (Strategy::Random | Strategy::Uniform, _) | (_, ThetaSource::Noise)
    );
    let mut applied = if learned {
        scaled_thetas(&scored.learned, selected, cfg.theta_init)
    } else {
        scored.noise.clone()
    };
    let mut morphisms = to_morphisms(&trained.arch, &selected.chosen, &applied);
    if learned && cfg.refine_steps > 0 {
        let mut refine_rng = rng.fork();
        refine_splits(
            trained,
            &mut morphisms,
            train,
            norm,
            cfg.refine_steps,
            cfg.batch,
            &cfg.adam,
            &mut refine_rng,
        )?;
        let units = trained.arch.units();
        for m in &morphisms {
            if let morph::Morphism::Split { theta } = &m.morphism {
                let fan = units[m.layer].fan_in();
                applied.theta[m.layer][m.channel * fan..(m.channel + 1) * fan]
                    .copy_from_slice(theta);
            }
        }
    }
    let stats = theta_stats(&applied, &scored.learned, selected);
    let mut extra = [momentum];
    let grown = morph::apply(trained, &morphisms, &mut extra)?;
    let [momentum] = extra;
    Ok((grown, momentum, stats))
}

/// How the applied morphisms change the network before any further
/// training: the test set with the BN running statistics the morphisms
/// copied (frozen sigma), and after refreshing them on a few training
/// batches (no weight changes), which separates stale statistics from a
/// changed function.
fn measure_step(
    backend: &mut dyn Backend,
    next: &mut GrowState,
    cfg: &GrowConfig,
    grown: &Network,
    momentum: &[Vec<f32>],
    train: &Dataset,
    test: &Dataset,
    norm: &Normalization,
) -> Result<(PassStats, PassStats)> {
    backend.load(grown, Some(momentum))?;
    let after = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
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
    let recalibrated = evaluate(backend, test, norm, &mut Batches::new(test, cfg.batch))?;
    Ok((after, recalibrated))
}

/// One phase of Algorithm 1: train, learn morphisms, select, apply, report.
/// On success `state` holds the grown network; on error it is unchanged, so
/// the caller keeps its last checkpoint.
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
    let (train_stats, test_stats, trained, momentum) =
        train_step(backend, &mut next, cfg, train, test, norm, progress)?;
    let scored = learn_morphisms(backend, &mut next, cfg, &trained, train, norm, progress)?;
    let selected = select_step(cfg, &trained.arch, &scored, next.phase, &mut next.rng);
    let (grown, momentum, theta) = apply_step(
        cfg,
        &trained,
        momentum,
        &scored,
        &selected,
        train,
        norm,
        &mut next.rng,
    )?;
    let (test_after, test_after_recalibrated) = measure_step(
        backend, &mut next, cfg, &grown, &momentum, train, test, norm,
    )?;
    let arch_before = trained.arch.clone();
    let theta_norms = (0..arch_before.layers())
        .map(|l| {
            (0..arch_before.widths[l])
                .map(|c| scored.learned.theta_norm(l, c))
                .collect()
        })
        .collect();
    next.network = grown;
    next.momentum = momentum;
    next.phase += 1;
    *state = next;
    let candidates = match cfg.strategy {
        Strategy::Random | Strategy::Uniform => selected.chosen.clone(),
        _ => scored.candidates,
    };
    Ok(PhaseReport {
        phase: state.phase,
        train: train_stats,
        test: test_stats,
        test_after,
        test_after_recalibrated,
        morph: scored.morph,
        arch_after: state.network.arch.clone(),
        arch_before,
        candidates,
        applied: selected.chosen,
        scales: selected.scales,
        joint_delta_loss: selected.joint_delta_loss,
        theta,
        theta_norms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn bad_settings_name_their_field() {
        let bad = |f: fn(&mut GrowConfig)| {
            let mut c = GrowConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let e = bad(|c| c.morph_epochs = 0);
        assert_eq!(
            e,
            Error::Config {
                field: Field::MorphEpochs,
                requirement: "at least 1",
                value: "0".into(),
            }
        );
        assert_eq!(
            bad(|c| c.train_epochs = 0).field(),
            Some(Field::TrainEpochs)
        );
        assert_eq!(bad(|c| c.phases = 0).field(), Some(Field::Phases));
        assert_eq!(
            bad(|c| c.theta_max = Some(f32::NAN)).field(),
            Some(Field::ThetaMax)
        );
        let e = bad(|c| c.select.lambda_params = -1.0);
        assert_eq!(e.field(), Some(Field::LambdaParams));
        assert_eq!(
            e.to_string(),
            "invalid setting: select.lambda_params must be a finite number >= 0, got -1"
        );
        assert_eq!(
            bad(|c| c.select.fraction = 1.5).field(),
            Some(Field::GrowFraction)
        );
        assert!(GrowConfig::default().validate().is_ok());
    }
}
