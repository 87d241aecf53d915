//! `sprout bench`: training and inference throughput of the seed networks.

use crate::device::{BackendKind, DeviceArgs};
use crate::run_dir::set_threads;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use sprout_core::arch::Family;
use sprout_core::backend::Backend;
use sprout_core::estimator::Curvature;
use sprout_core::kernels::matmul;
use sprout_core::learn::{MorphConfig, MorphState};
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
    /// Only the rows of this network family (vgg19 or mobilenet-v1).
    #[arg(long)]
    pub net: Option<String>,
    /// Only the rows of these widths, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub width: Vec<usize>,
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

/// One benchmarked network.
pub struct BenchNet {
    /// `family-wWIDTH`, as printed.
    pub name: String,
    pub family: Family,
    pub width: usize,
    pub arch: Arch,
    /// Whether the score-all rows run (the seeds only: brute force on the
    /// wide networks would take minutes per window).
    pub score_all: bool,
}

/// The benchmarked networks on 1x32x32 inputs, 10 classes: VGG-19 at widths
/// 4, 8, 16 (the seed) and 64, MobileNetV1 at 8 and 32 (the seed).
pub fn bench_networks() -> Vec<BenchNet> {
    let mut nets = Vec::new();
    for (family, widths, seed) in [
        (Family::Vgg19, &[4, 8, 16, 64][..], 16),
        (Family::MobilenetV1, &[8, 32][..], 32),
    ] {
        for &width in widths {
            let arch = match family {
                Family::Vgg19 => Arch::vgg19(width, [1, 32, 32], 10),
                Family::MobilenetV1 => Arch::mobilenet_v1(width, [1, 32, 32], 10),
            }
            .expect("valid bench network");
            nets.push(BenchNet {
                name: format!("{}-w{width}", family.name()),
                family,
                width,
                arch,
                score_all: width == seed,
            });
        }
    }
    nets
}

/// Side of the square GEMM timed as the machine's peak.
pub const PEAK_GEMM_N: usize = 1024;

/// GFLOP/s of a `PEAK_GEMM_N`^3 sgemm through the core GEMM on the current
/// thread count: median over `windows` windows after a warm-up.
pub fn gemm_peak_gflops(windows: usize, window_seconds: f64) -> Result<f64> {
    let n = PEAK_GEMM_N;
    let mut rng = Rng::new(3);
    let a: Vec<f32> = (0..n * n).map(|_| rng.normal()).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.normal()).collect();
    let mut c = vec![0.0f32; n * n];
    let calls = median_images_per_s(1, windows, window_seconds, || {
        matmul(n, n, n, &a, &b, &mut c);
        Ok(())
    })?;
    Ok(calls * 2.0 * (n * n * n) as f64 / 1e9)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let want = |step: BenchStep| args.steps.is_empty() || args.steps.contains(&step);
    let family = args
        .net
        .as_deref()
        .map(Family::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--net: {e}"))?;
    let nets: Vec<BenchNet> = bench_networks()
        .into_iter()
        .filter(|b| family.is_none_or(|f| f == b.family))
        .filter(|b| args.width.is_empty() || args.width.contains(&b.width))
        .collect();
    if nets.is_empty() {
        bail!("--net/--width select no rows (widths: vgg19 4, 8, 16, 64; mobilenet-v1 8, 32)");
    }
    // The machine's own GEMM peak, once per run, on the CPU rows' thread count.
    let peak = if args.device.backend == BackendKind::Cpu {
        Some(gemm_peak_gflops(
            args.windows,
            args.window_seconds.min(0.3),
        )?)
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut engine = String::from("cpu");
    for BenchNet {
        name,
        arch,
        score_all: with_score_all,
        ..
    } in nets
    {
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
        let (train_flops, infer_flops) = (arch.train_flops() as f64, arch.infer_flops() as f64);
        if want(BenchStep::Train) {
            let train = median_images_per_s(args.batch, args.windows, args.window_seconds, || {
                backend.train_batch(&images, &labels, args.batch, &sgd)?;
                Ok(())
            })?;
            rows.push(Row {
                net: name.clone(),
                step: "train".into(),
                images_per_s: train,
                flops_per_image: train_flops,
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
                flops_per_image: infer_flops,
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
        if !want(BenchStep::ScoreAll) || !with_score_all {
            continue;
        }
        let (est, brute) = score_all(
            backend.as_mut(),
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
    print_rows(&rows, args.json, args.batch, &engine, peak);
    Ok(())
}

/// Images per second at which every split candidate of `net` gets a score
/// on `backend`: with the estimator (one eval forward and backward, then
/// eq. 1 for all channels of every layer) and by brute force (load each
/// expanded network and run the batch through it).
pub fn score_all(
    backend: &mut dyn Backend,
    net: &Network,
    images: &[f32],
    labels: &[u32],
    batch: usize,
    windows: usize,
    window_seconds: f64,
) -> Result<(f64, f64)> {
    let units = net.arch.units();
    let mut rng = Rng::new(2);
    let state = MorphState::new(net, 0.05, &mut rng);
    backend.load(net, None)?;
    backend.begin_morph(state.clone())?;
    let est = median_images_per_s(batch, windows, window_seconds, || {
        backend.score_batch(images, labels, batch, Curvature::RankOne)?;
        Ok(())
    })?;
    backend.end_morph()?;
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
    let brute = median_images_per_s(batch, windows.min(3), window_seconds, || {
        for n in &expanded {
            backend.load(n, None)?;
            backend.eval_batch(images, labels, batch)?;
        }
        Ok(())
    })?;
    Ok((est, brute))
}

/// Prints the rows as a table or JSON lines; `peak` is the measured GEMM
/// peak in GFLOP/s that `peak_fraction` is relative to.
pub fn print_rows(rows: &[Row], as_json: bool, batch: usize, engine: &str, peak: Option<f64>) {
    if !as_json {
        let peak_note = peak
            .map(|p| format!(", GEMM peak {p:.1} GFLOP/s ({PEAK_GEMM_N}^3 sgemm)"))
            .unwrap_or_default();
        println!(
            "{:<18} {:<22} {:>12} {:>10} {:>7}   (batch {batch}, {engine}, {} threads{peak_note})",
            "net",
            "step",
            "images/s",
            "GFLOP/s",
            "% peak",
            rayon::current_num_threads()
        );
    }
    for r in rows {
        let gflops = (r.flops_per_image > 0.0).then(|| r.images_per_s * r.flops_per_image / 1e9);
        let fraction = gflops.zip(peak).map(|(g, p)| g / p);
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
                json!({
                    "net": r.net,
                    "step": r.step,
                    "images_per_s": r.images_per_s,
                    "flops_per_image": r.flops_per_image,
                    "gflops": gflops,
                    "gemm_peak_gflops": peak,
                    "peak_fraction": fraction,
                    "batch": batch,
                    "engine": engine,
                    "cost_vs_train": r.cost_vs_train,
                })
            );
        } else {
            let g = gflops.map_or(format!("{:>10}", "-"), |g| format!("{g:>10.1}"));
            let f = fraction.map_or(format!("{:>7}", "-"), |f| format!("{:>6.1}%", 100.0 * f));
            println!(
                "{:<18} {:<22} {:>12.0} {} {}   {}",
                r.net,
                r.step,
                r.images_per_s,
                g,
                f,
                ratio.unwrap_or_default()
            );
        }
    }
}
