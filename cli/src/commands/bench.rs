//! `sprout bench`: training and inference throughput of the seed networks.

use crate::device::{BackendKind, DeviceArgs};
use crate::run_dir::set_threads;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use sprout_core::estimator::{split_estimates, FrozenSigma, LayerBatch, Workspace};
use sprout_core::learn::{MorphConfig, MorphState};
use sprout_core::model::{Mode, Model};
use sprout_core::morph::{apply, ChannelMorphism, Morphism};
use sprout_core::optim::Sgd;
use sprout_core::rng::Rng;
use sprout_core::{Arch, Network};
use std::time::Instant;

/// What a bench row times.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchStep {
    Train,
    Infer,
    Morph,
    /// Estimator against brute force, scoring every split candidate.
    ScoreAll,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed windows per row; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub windows: usize,
    /// Target length of one timed window in seconds.
    #[arg(long, default_value_t = 0.5)]
    pub window_seconds: f64,
    /// Only the rows of this network (vgg19 or mobilenet-v1).
    #[arg(long)]
    pub net: Option<String>,
    /// Only these steps, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub steps: Vec<BenchStep>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Engine to measure; the score-all rows always run on the CPU.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    pub net: String,
    pub step: String,
    pub images_per_s: f64,
    /// Floating-point operations per image the step implies.
    pub flops_per_image: f64,
    /// Morphism step: median over paired windows of its time per image over
    /// a training step's, measured back to back so machine noise cancels.
    pub cost_vs_train: Option<f64>,
}

/// Times `step` (one call processes `batch` images): a warm-up, then the
/// median over `windows` windows of about `window_seconds` each.
pub fn median_images_per_s(
    batch: usize,
    windows: usize,
    window_seconds: f64,
    mut step: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let steps = steps_per_window(window_seconds, &mut step)?;
    let mut rates = Vec::with_capacity(windows);
    for _ in 0..windows.max(1) {
        rates.push(batch as f64 / seconds_per_step(steps, &mut step)?);
    }
    Ok(median(rates))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Steps per window of about `window_seconds` for `step`, after a warm-up.
fn steps_per_window(window_seconds: f64, step: &mut impl FnMut() -> Result<()>) -> Result<usize> {
    let start = Instant::now();
    let mut warm = 0;
    while warm < 3 || start.elapsed().as_secs_f64() < 0.3 {
        step()?;
        warm += 1;
    }
    let per_step = start.elapsed().as_secs_f64() / warm as f64;
    Ok(((window_seconds / per_step).ceil() as usize).max(1))
}

/// Seconds per call of `step` over `steps` calls.
fn seconds_per_step(steps: usize, step: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok(t.elapsed().as_secs_f64() / steps as f64)
}

/// The benchmarked networks: the two seeds on 1x32x32 inputs, 10 classes.
pub fn seed_networks() -> Vec<(String, Arch)> {
    vec![
        (
            "vgg19-w16".into(),
            Arch::vgg19(16, [1, 32, 32], 10).expect("valid seed"),
        ),
        (
            "mobilenet-v1-w32".into(),
            Arch::mobilenet_v1(32, [1, 32, 32], 10).expect("valid seed"),
        ),
    ]
}

pub fn run(args: &BenchArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let want = |step: BenchStep| args.steps.is_empty() || args.steps.contains(&step);
    let mut rows = Vec::new();
    let mut engine = String::from("cpu");
    for (name, arch) in seed_networks() {
        if let Some(only) = &args.net {
            if !name.starts_with(only.as_str()) {
                continue;
            }
        }
        let mut rng = Rng::new(1);
        let len: usize = arch.input.iter().product();
        let images: Vec<f32> = (0..args.batch * len).map(|_| rng.normal()).collect();
        let labels: Vec<u32> = (0..args.batch)
            .map(|_| rng.below(arch.classes) as u32)
            .collect();
        let (mut backend, described) = args.device.open_described(args.batch)?;
        engine = described;
        backend.load(&Network::init(&arch, 0), None)?;
        let sgd = Sgd::paper(0.01);
        let macs = arch.macs() as f64;
        if want(BenchStep::Train) {
            let train = median_images_per_s(args.batch, args.windows, args.window_seconds, || {
                backend.train_batch(&images, &labels, args.batch, &sgd)?;
                Ok(())
            })?;
            // Training does the forward pass and two backward GEMMs per layer: 3x the MACs.
            rows.push(Row {
                net: name.clone(),
                step: "train".into(),
                images_per_s: train,
                flops_per_image: 6.0 * macs,
                cost_vs_train: None,
            });
        }
        if want(BenchStep::Infer) {
            let infer = median_images_per_s(args.batch, args.windows, args.window_seconds, || {
                backend.eval_batch(&images, &labels, args.batch)?;
                Ok(())
            })?;
            rows.push(Row {
                net: name.clone(),
                step: "infer".into(),
                images_per_s: infer,
                flops_per_image: 2.0 * macs,
                cost_vs_train: None,
            });
        }
        let net = backend.network()?;
        if want(BenchStep::Morph) {
            // Morphism learning as grow runs it (with the joint cross terms of
            // every candidate pair), timed in windows alternating with training
            // windows so that the ratio compares steps run under the same load.
            let mcfg = MorphConfig {
                joint: true,
                ..MorphConfig::paper(args.batch, 60_000)
            };
            let mut state = MorphState::new(&net, 0.01, &mut rng);
            let mut train_step = || {
                backend.train_batch(&images, &labels, args.batch, &sgd)?;
                Ok(())
            };
            let train_steps = steps_per_window(args.window_seconds, &mut train_step)?;
            let (mut morph_rates, mut ratios) = (Vec::new(), Vec::new());
            for _ in 0..args.windows.max(1) {
                let train_s = seconds_per_step(train_steps, &mut || {
                    backend.train_batch(&images, &labels, args.batch, &sgd)?;
                    Ok(())
                })?;
                backend.begin_morph(state)?;
                let mut morph_step = || {
                    backend.morph_batch(&images, &labels, args.batch, &mcfg)?;
                    Ok(())
                };
                let morph_steps = steps_per_window(args.window_seconds, &mut morph_step)?;
                let morph_s = seconds_per_step(morph_steps, &mut morph_step)?;
                state = backend.end_morph()?;
                morph_rates.push(args.batch as f64 / morph_s);
                ratios.push(morph_s / train_s);
            }
            rows.push(Row {
                net: name.clone(),
                step: "morph".into(),
                images_per_s: median(morph_rates),
                flops_per_image: 0.0,
                cost_vs_train: Some(median(ratios)),
            });
        }
        if args.device.backend != BackendKind::Cpu || !want(BenchStep::ScoreAll) {
            continue;
        }
        let (est, brute) = score_all(
            &net,
            &images,
            &labels,
            args.batch,
            args.windows,
            args.window_seconds,
        )?;
        rows.push(Row {
            net: name.clone(),
            step: "score-all-estimator".into(),
            images_per_s: est,
            flops_per_image: 0.0,
            cost_vs_train: None,
        });
        rows.push(Row {
            net: name.clone(),
            step: "score-all-brute-force".into(),
            images_per_s: brute,
            flops_per_image: 0.0,
            cost_vs_train: None,
        });
    }
    print_rows(&rows, args.json, args.batch, &engine);
    Ok(())
}

/// Images per second at which every split candidate of `net` gets a score:
/// with the estimator (one eval forward and backward, then eq. 1 for all
/// channels of every layer) and by brute force (build each expanded network
/// and run the batch through it).
pub fn score_all(
    net: &Network,
    images: &[f32],
    labels: &[u32],
    batch: usize,
    windows: usize,
    window_seconds: f64,
) -> Result<(f64, f64)> {
    let arch = &net.arch;
    let units = arch.units();
    let mut rng = Rng::new(2);
    let state = MorphState::new(net, 0.05, &mut rng);
    let sigmas: Vec<FrozenSigma> = (0..units.len()).map(|l| FrozenSigma::of(net, l)).collect();
    let mut model = Model::new(arch, batch);
    let mut grads = net.zeros_like();
    let mut ws = Workspace::default();
    let mut delta = vec![0.0f32; units.iter().map(|u| u.cout).max().unwrap_or(0)];
    let est = median_images_per_s(batch, windows, window_seconds, || {
        model.forward(net, images, batch, Mode::Eval);
        let (loss, _) = model.loss(labels);
        model.backward_activations(net, &mut grads);
        for (l, u) in units.iter().enumerate() {
            let b = LayerBatch::from_model(&model, l, sigmas[l].view(), loss);
            split_estimates(&b, &state.theta[l], &mut ws, &mut delta[..u.cout], None);
        }
        Ok(())
    })?;
    let expanded: Vec<Network> = units
        .iter()
        .enumerate()
        .flat_map(|(l, u)| (0..u.cout).map(move |c| (l, c, u.fan_in())))
        .map(|(l, c, fan)| {
            let theta = state.theta[l][c * fan..(c + 1) * fan].to_vec();
            apply(
                net,
                &[ChannelMorphism {
                    layer: l,
                    channel: c,
                    morphism: Morphism::Split { theta },
                }],
                &mut [],
            )
        })
        .collect::<sprout_core::Result<_>>()?;
    // Expanded networks of one layer share an architecture: one model per layer.
    let mut models: Vec<Model> = Vec::new();
    let brute = median_images_per_s(batch, windows.min(3), window_seconds, || {
        for n in &expanded {
            let m = match models.iter_mut().position(|m| m.arch() == &n.arch) {
                Some(i) => &mut models[i],
                None => {
                    models.push(Model::new(&n.arch, batch));
                    models.last_mut().expect("just pushed")
                }
            };
            m.forward(n, images, batch, Mode::Eval);
            m.loss(labels);
        }
        Ok(())
    })?;
    Ok((est, brute))
}

pub fn print_rows(rows: &[Row], as_json: bool, batch: usize, engine: &str) {
    if !as_json {
        println!(
            "{:<18} {:<22} {:>12} {:>10}   (batch {batch}, {engine}, {} threads)",
            "net",
            "step",
            "images/s",
            "GFLOP/s",
            rayon::current_num_threads()
        );
    }
    for r in rows {
        let gflops = r.images_per_s * r.flops_per_image / 1e9;
        let base = |step: &str| {
            rows.iter()
                .find(|x| x.net == r.net && x.step == step)
                .map(|x| x.images_per_s)
        };
        let ratio = match r.step.as_str() {
            "morph" => r
                .cost_vs_train
                .map(|c| format!("cost {c:.2}x a training step (paired windows)")),
            "score-all-estimator" => base("score-all-brute-force")
                .map(|b| format!("{:.0}x cheaper than brute force", r.images_per_s / b)),
            _ => None,
        };
        if as_json {
            println!(
                "{}",
                json!({"net": r.net, "step": r.step, "images_per_s": r.images_per_s, "gflops": gflops, "batch": batch, "engine": engine, "cost_vs_train": r.cost_vs_train})
            );
        } else {
            let g = if r.flops_per_image > 0.0 {
                format!("{gflops:>10.1}")
            } else {
                format!("{:>10}", "-")
            };
            println!(
                "{:<18} {:<22} {:>12.0} {}   {}",
                r.net,
                r.step,
                r.images_per_s,
                g,
                ratio.unwrap_or_default()
            );
        }
    }
}
