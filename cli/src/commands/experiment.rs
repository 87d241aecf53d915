//! What the estimator experiments (`estimate`, the paper's Figure 3, and
//! `compare`, its Figure 4) share: their flags, training the network, and
//! learning theta for every split candidate with the model fixed.

use crate::commands::grow::{theta_max_flag, CurvatureName};
use crate::commands::info::arch_from_flags;
use crate::data::{resolve, DatasetName};
use crate::device::DeviceArgs;
use crate::input::InputSpec;
use crate::progress::bar;
use crate::run_dir::RunDir;
use crate::weights::save_network;
use anyhow::{bail, Result};
use clap::Args;
use sprout_core::backend::Backend;
use sprout_core::data::{fill_batch, Augment, Dataset, Normalization};
use sprout_core::error::Field;
use sprout_core::grow::{train_epochs, GrowConfig, GrowState, Stage};
use sprout_core::learn::{Curvature, MorphConfig, MorphState};
use sprout_core::optim::StepSchedule;
use sprout_core::rng::Rng;
use sprout_core::select::{SelectConfig, Selection};
use sprout_core::train::{shuffled_pass, Batches, PassStats};
use sprout_core::{Arch, Network};
use std::path::PathBuf;
use std::time::Instant;

/// Flags shared by the estimator experiments.
#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    #[arg(long, default_value = "vgg19")]
    pub arch: String,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs training the seed before theta is learned.
    #[arg(long, default_value_t = 2)]
    pub train_epochs: usize,
    /// Epochs learning theta with the model fixed.
    #[arg(long, default_value_t = 1)]
    pub theta_epochs: usize,
    /// Held-out images for the true Delta L (from the test split).
    #[arg(long, default_value_t = 1000)]
    pub heldout: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.01)]
    pub theta_init: f32,
    /// Train and learn theta without crop and flip augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// EMA weight of each mini-batch estimate [default: (S/N)/2, about two epochs].
    #[arg(long)]
    pub ema_alpha: Option<f32>,
    /// The estimate's quadratic term in the layer that feeds the logits.
    #[arg(long, value_enum, default_value = "rank-one")]
    pub curvature: CurvatureName,
    /// Trust region for learned theta: |theta_c| <= RATIO * |w_in_c|;
    /// `inf`: unbounded, as in the paper [default: 1, as in grow].
    #[arg(long, value_name = "RATIO")]
    pub theta_max: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Engine for the steps.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
}

/// A trained network with theta learned for every split candidate.
#[derive(Debug)]
pub struct Learned {
    pub dataset: String,
    /// How the network takes its images.
    pub input: InputSpec,
    pub arch: Arch,
    pub net: Network,
    pub state: MorphState,
    pub train: Dataset,
    pub heldout: Dataset,
    pub norm: Normalization,
    pub train_stats: PassStats,
    pub ema_alpha: f32,
    /// The trust region theta was learned under (`None`: unbounded).
    pub theta_max: Option<f32>,
    /// The run's generator after training and theta learning.
    pub rng: Rng,
}

/// The flag of `compare` and `estimate` that sets `field`: their epochs
/// have their own names, the rest are named as for `sprout grow`.
fn experiment_flag(field: Field) -> &'static str {
    match field {
        Field::TrainEpochs => "--train-epochs",
        Field::MorphEpochs => "--theta-epochs",
        other => crate::errors::grow_flag(other),
    }
}

/// Trains the seed for `--train-epochs`, then learns theta with the
/// Gauss-Newton estimator for `--theta-epochs` (model fixed, BN frozen), on
/// `backend` (opened for `a.batch`).
pub fn train_and_learn_theta(a: &ExperimentArgs, backend: &mut dyn Backend) -> Result<Learned> {
    if a.train_epochs == 0 || a.theta_epochs == 0 || a.heldout == 0 {
        bail!("--train-epochs, --theta-epochs and --heldout must be at least 1");
    }
    let splits = resolve(a.dataset, a.data.as_deref())?;
    let train = match a.train_limit {
        Some(n) if n < splits.train.len() => splits.train.subset(&(0..n).collect::<Vec<_>>()),
        _ => splits.train.clone(),
    };
    let heldout = splits
        .test
        .subset(&(0..a.heldout.min(splits.test.len())).collect::<Vec<_>>());
    let input = format!("{}x{}x{}", train.channels, train.height, train.width);
    let arch = arch_from_flags(&a.arch, a.width, None, &input, train.classes, None)?;
    // One phase with the model's training and theta learning; no selection.
    let cfg = GrowConfig {
        phases: 1,
        train_epochs: a.train_epochs,
        morph_epochs: a.theta_epochs,
        final_epochs: 0,
        batch: a.batch,
        schedule: StepSchedule::constant(a.lr),
        ema_alpha: a.ema_alpha,
        theta_init: a.theta_init,
        select: SelectConfig {
            lambda_params: 0.0,
            prune: false,
            selection: Selection::Independent,
            ..SelectConfig::default()
        },
        augment: (!a.no_augment).then(Augment::default),
        theta_max: theta_max_flag(a.theta_max, GrowConfig::default().theta_max)?,
        ..GrowConfig::default()
    };
    cfg.validate()
        .map_err(|e| crate::errors::cli_with(e, experiment_flag))?;
    let norm = Normalization::of(&train);
    let mut state = GrowState::new(Network::init(&arch, a.seed), a.seed ^ 0x6a09_e667);
    backend.load(&state.network, None)?;
    let mut current: Option<(Stage, indicatif::ProgressBar)> = None;
    let mut progress = |stage: Stage, done: usize, total: usize, loss: f32| {
        if current.as_ref().map(|c| c.0) != Some(stage) {
            current = Some((stage, bar(total as u64, &format!("{stage:?}"))));
        }
        let pb = &current.as_ref().expect("set").1;
        pb.set_position(done as u64);
        pb.set_message(format!("loss {loss:.4}"));
        if done == total {
            pb.finish_and_clear();
        }
    };
    let train_stats = train_epochs(
        backend,
        &mut state,
        &cfg,
        a.train_epochs,
        &train,
        &norm,
        false,
        &mut progress,
    )?;
    println!(
        "trained {} epochs: train loss {:.4}, accuracy {:.2}%",
        a.train_epochs,
        train_stats.loss,
        100.0 * train_stats.accuracy
    );
    let net = backend.network()?;
    let ema_alpha = a
        .ema_alpha
        .unwrap_or(MorphConfig::paper(a.batch, train.len()).ema_alpha);
    let mcfg = MorphConfig {
        adam: cfg.adam,
        ema_alpha,
        method: Default::default(),
        theta_max: cfg.theta_max,
        joint: false,
        curvature: a.curvature.into(),
    };
    let mut theta_rng = state.rng.fork();
    backend.begin_morph(MorphState::new(&net, cfg.theta_init, &mut theta_rng))?;
    let start = Instant::now();
    let mut buffers = Batches::new(&train, cfg.batch);
    for e in 0..a.theta_epochs {
        shuffled_pass(
            &train,
            &norm,
            &mut buffers,
            cfg.augment.as_ref(),
            &mut state.rng,
            &mut |x, y, n| backend.morph_batch(x, y, n, &mcfg),
            &mut |d, t, s| progress(Stage::Morph { epoch: e }, d, t, s.loss),
        )?;
    }
    let learned = backend.end_morph()?;
    println!(
        "learned theta for {} candidates in {:.1} s",
        arch.widths.iter().sum::<usize>(),
        start.elapsed().as_secs_f64()
    );
    Ok(Learned {
        input: splits.input_spec(norm.clone()),
        dataset: splits.name,
        arch,
        net,
        state: learned,
        train,
        heldout,
        norm,
        train_stats,
        ema_alpha,
        theta_max: cfg.theta_max,
        rng: state.rng,
    })
}

/// Writes `exp`'s config.json (`config` with the input description and
/// the architecture) and its trained network, model.safetensors.
pub fn save_run(run: &RunDir, exp: &Learned, config: &serde_json::Value) -> Result<()> {
    run.write_json("config.json", &exp.input.describe(config, Some(&exp.arch)))?;
    save_network(
        &run.file("model.safetensors"),
        &exp.net,
        Some(&exp.input),
        &[],
    )
}

/// Mean loss of `net` on `ds` in eval mode, on `backend` (which this loads with `net`).
pub fn mean_loss(
    backend: &mut dyn Backend,
    net: &Network,
    ds: &Dataset,
    norm: &Normalization,
    buf: &mut Batches,
) -> Result<f64> {
    backend.load(net, None)?;
    let mut total = 0.0f64;
    for_each_batch(ds, norm, buf, |images, labels, n| {
        total += backend.eval_batch(images, labels, n)?.loss as f64 * n as f64;
        Ok(())
    })?;
    Ok(total / ds.len() as f64)
}

/// Eq. (1) of every split candidate with `state`'s theta, `net` fixed, on
/// all of `ds`: `[layer][channel]`, averaged over its images, on `backend`
/// (which this loads with `net`).
pub fn mean_scores(
    backend: &mut dyn Backend,
    net: &Network,
    state: &MorphState,
    curvature: Curvature,
    ds: &Dataset,
    norm: &Normalization,
    buf: &mut Batches,
) -> Result<Vec<Vec<f64>>> {
    backend.load(net, None)?;
    backend.begin_morph(state.clone())?;
    let mut total: Vec<Vec<f64>> = state.split_ema.iter().map(|e| vec![0.0; e.len()]).collect();
    for_each_batch(ds, norm, buf, |images, labels, n| {
        let scores = backend.score_batch(images, labels, n, curvature)?;
        for (acc, layer) in total.iter_mut().zip(&scores) {
            for (a, v) in acc.iter_mut().zip(layer) {
                *a += *v as f64 * n as f64 / ds.len() as f64;
            }
        }
        Ok(())
    })?;
    backend.end_morph()?;
    Ok(total)
}

/// Runs `step` on `ds` in order, in batches of `buf.batch`, without augmentation.
fn for_each_batch(
    ds: &Dataset,
    norm: &Normalization,
    buf: &mut Batches,
    mut step: impl FnMut(&[f32], &[u32], usize) -> sprout_core::Result<()>,
) -> Result<()> {
    let mut rng = Rng::new(0);
    for start in (0..ds.len()).step_by(buf.batch) {
        let idx: Vec<usize> = (start..(start + buf.batch).min(ds.len())).collect();
        fill_batch(
            ds,
            norm,
            &idx,
            None,
            &mut rng,
            &mut buf.images,
            &mut buf.labels,
        );
        step(&buf.images, &buf.labels, idx.len())?;
    }
    Ok(())
}
