//! `sprout compare`: the paper's Figure 4. For every channel of the first
//! conv layer of a trained network, the true Delta L (expanded network, frozen
//! sigma, held-out data) reached by (a) theta learned with the Gauss-Newton
//! estimator, (b) theta optimised directly on the expanded network's true
//! training loss, and (c) the splitting direction scaled by a line search on
//! the true training loss.
//!
//! Training, theta learning and every true Delta L run on the engine
//! `--backend` selects; (b)'s optimisation through the expanded network and
//! (c)'s splitting eigenvectors run on the CPU engine.

use crate::commands::experiment::{mean_loss, save_run, train_and_learn_theta, ExperimentArgs};
use crate::device::BackendKind;
use crate::progress::bar;
use crate::run_dir::{set_threads, RunDir};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use sprout_core::backend::Backend;
use sprout_core::data::{fill_batch, Dataset, Normalization};
use sprout_core::engine::Mode;
use sprout_core::estimator::{FrozenSigma, LayerBatch};
use sprout_core::model::Model;
use sprout_core::morph::{apply, ChannelMorphism, Morphism};
use sprout_core::optim::Adam;
use sprout_core::refine::refine_splits;
use sprout_core::rng::Rng;
use sprout_core::splitting::{min_eigen, SplitAverage, SplitWorkspace};
use sprout_core::train::Batches;
use sprout_core::Network;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Adam steps of direct optimisation of each channel's theta on the true loss.
    #[arg(long, default_value_t = 100)]
    pub direct_steps: usize,
    /// Mini-batches averaged for the splitting eigenvectors.
    #[arg(long, default_value_t = 20)]
    pub splitting_batches: usize,
    /// Training images on which the direct optimisation and the line search measure the loss.
    #[arg(long, default_value_t = 1024)]
    pub search_images: usize,
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
}

/// True Delta L on `ds` of splitting channel `c` of layer 0 with `theta`, on `backend`.
#[allow(clippy::too_many_arguments)]
fn true_delta(
    backend: &mut dyn Backend,
    net: &Network,
    c: usize,
    theta: &[f32],
    ds: &Dataset,
    norm: &Normalization,
    base: f64,
    buf: &mut Batches,
) -> Result<f64> {
    let m = [ChannelMorphism {
        layer: 0,
        channel: c,
        morphism: Morphism::Split {
            theta: theta.to_vec(),
        },
    }];
    let expanded = apply(net, &m, &mut [])?;
    Ok(mean_loss(backend, &expanded, ds, norm, buf)? - base)
}

/// Optimises channel `c`'s theta on the expanded network's true loss
/// (eval-mode BN, the same frozen-sigma convention) with Adam, starting from
/// `start` ([`refine_splits`] with the one split).
#[allow(clippy::too_many_arguments)]
fn direct_theta(
    net: &Network,
    c: usize,
    start: &[f32],
    ds: &Dataset,
    norm: &Normalization,
    steps: usize,
    batch: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let mut split = [ChannelMorphism {
        layer: 0,
        channel: c,
        morphism: Morphism::Split {
            theta: start.to_vec(),
        },
    }];
    refine_splits(net, &mut split, ds, norm, steps, batch, &Adam::paper(), rng)?;
    match split {
        [ChannelMorphism {
            morphism: Morphism::Split { theta },
            ..
        }] => Ok(theta),
        _ => bail!("refinement of layer 0 channel {c} lost its split"),
    }
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let a = &args.common;
    set_threads(a.threads)?;
    if args.search_images == 0 {
        bail!("--search-images must be at least 1");
    }
    let run = RunDir::create(&args.out)?;
    // (a) Gauss-Newton theta, learned with the model fixed.
    let mut backend = a.device.open(a.batch)?;
    let exp = train_and_learn_theta(a, backend.as_mut())?;
    let (arch, net, gn, train, heldout, norm) = (
        &exp.arch,
        &exp.net,
        &exp.state,
        &exp.train,
        &exp.heldout,
        &exp.norm,
    );
    let search = train.subset(&(0..args.search_images.min(train.len())).collect::<Vec<_>>());
    let config = json!({
        "command": "compare", "dataset": exp.dataset, "data_dir": a.data, "train_epochs": a.train_epochs,
        "theta_epochs": a.theta_epochs, "direct_steps": args.direct_steps,
        "splitting_batches": args.splitting_batches, "heldout": heldout.len(),
        "search_images": search.len(), "seed": a.seed, "train_images": train.len(),
        "theta_max": exp.theta_max, "curvature": sprout_core::estimator::Curvature::from(a.curvature),
    });
    save_run(&run, &exp, &config)?;
    let mut buffers = Batches::new(train, a.batch);

    // (c) Splitting eigenvectors of layer 0, averaged over batches.
    let u0 = arch.units()[0];
    let fan = u0.fan_in();
    let sigma = FrozenSigma::of(net, 0);
    let mut model = Model::new(arch, a.batch);
    let mut ws = SplitWorkspace::default();
    let mut avg = SplitAverage::new();
    let mut rng = Rng::new(a.seed ^ 0x51);
    for _ in 0..args.splitting_batches {
        let idx: Vec<usize> = (0..a.batch).map(|_| rng.below(train.len())).collect();
        fill_batch(
            train,
            norm,
            &idx,
            None,
            &mut rng,
            &mut buffers.images,
            &mut buffers.labels,
        );
        model.forward(net, &buffers.images, a.batch, Mode::Eval);
        let (loss, _) = model.loss(&buffers.labels);
        model.backward_activations(net);
        let b = LayerBatch::from_model(&model, 0, sigma.view(), loss);
        let dirs = min_eigen(&b, 30, &mut rng, &mut ws);
        avg.add(&dirs);
    }
    let split_dirs = avg
        .mean()
        .ok_or_else(|| anyhow::anyhow!("--splitting-batches must be at least 1"))?;

    let mut hbuf = Batches::new(heldout, a.batch);
    if a.device.backend == BackendKind::Gpu {
        println!(
            "direct optimisation (b) and the splitting eigenvectors (c) run on the CPU engine"
        );
    }
    let base_held = mean_loss(backend.as_mut(), net, heldout, norm, &mut hbuf)?;
    let mut sbuf = Batches::new(&search, a.batch);
    let base_search = mean_loss(backend.as_mut(), net, &search, norm, &mut sbuf)?;
    let w0 = &net.tensors[net.index().units[0].conv];
    let pb = bar(u0.cout as u64, "channels");
    let mut rows = Vec::new();
    for c in 0..u0.cout {
        let theta_gn = gn.theta[0][c * fan..(c + 1) * fan].to_vec();
        // (b) direct optimisation on the true loss, from the same start as (a).
        let start: Vec<f32> = {
            let mut r = Rng::new(a.seed ^ (c as u64 + 1));
            let norm_w = w0[c * fan..(c + 1) * fan]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt();
            (0..fan)
                .map(|_| 0.01 * norm_w * r.normal() / (fan as f32).sqrt())
                .collect()
        };
        let theta_direct = direct_theta(
            net,
            c,
            &start,
            &search,
            norm,
            args.direct_steps,
            a.batch,
            &mut rng,
        )?;
        // (c) line search over the scale of the splitting direction on the true loss.
        let dir = &split_dirs.directions[c * fan..(c + 1) * fan];
        let norm_w = w0[c * fan..(c + 1) * fan]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(1e-6);
        let mut best = (f64::INFINITY, 0.0f32);
        for k in 0..24 {
            let scale = norm_w * 1e-2 * 10f32.powf(k as f32 / 8.0);
            let th: Vec<f32> = dir.iter().map(|d| d * scale).collect();
            let dl = true_delta(
                backend.as_mut(),
                net,
                c,
                &th,
                &search,
                norm,
                base_search,
                &mut sbuf,
            )?;
            if dl < best.0 {
                best = (dl, scale);
            }
        }
        let theta_split: Vec<f32> = dir.iter().map(|d| d * best.1).collect();
        let dl_gn = true_delta(
            backend.as_mut(),
            net,
            c,
            &theta_gn,
            heldout,
            norm,
            base_held,
            &mut hbuf,
        )?;
        let dl_direct = true_delta(
            backend.as_mut(),
            net,
            c,
            &theta_direct,
            heldout,
            norm,
            base_held,
            &mut hbuf,
        )?;
        let dl_split = true_delta(
            backend.as_mut(),
            net,
            c,
            &theta_split,
            heldout,
            norm,
            base_held,
            &mut hbuf,
        )?;
        rows.push((c, dl_gn, dl_direct, dl_split, split_dirs.eigenvalues[c]));
        pb.inc(1);
    }
    pb.finish_and_clear();

    let mut csv = String::from("channel,gn,direct,splitting_line_search\n");
    for r in &rows {
        writeln!(csv, "{},{:e},{:e},{:e}", r.0, r.1, r.2, r.3)?;
    }
    crate::weights::write_atomic(&run.file("compare.csv"), csv.as_bytes())?;
    let mut sorted = rows.clone();
    sorted.sort_by(|a, b| a.2.total_cmp(&b.2));
    let groups: Vec<String> = sorted.iter().map(|r| r.0.to_string()).collect();
    let series = vec![
        (
            "Gauss-Newton (ours)".to_string(),
            sorted.iter().map(|r| -r.1).collect(),
        ),
        (
            "direct optimisation".to_string(),
            sorted.iter().map(|r| -r.2).collect(),
        ),
        (
            "splitting + line search".to_string(),
            sorted.iter().map(|r| -r.3).collect(),
        ),
    ];
    crate::plots::grouped_bars(
        &run.file("compare.svg"),
        "decrease in true loss per channel of layer 1 (higher is better)",
        &groups,
        &series,
    )?;
    let beats = rows.iter().filter(|r| r.1 < r.3).count();
    let mut ratios: Vec<f64> = rows
        .iter()
        .filter(|r| r.2 < 0.0)
        .map(|r| r.1 / r.2)
        .collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = if ratios.is_empty() {
        f64::NAN
    } else {
        ratios[ratios.len() / 2]
    };
    let summary = json!({
        "channels": rows.len(),
        "gn_beats_splitting_fraction": beats as f64 / rows.len() as f64,
        "median_gn_over_direct": median,
        "channels_with_direct_decrease": ratios.len(),
    });
    run.write_json("summary.json", &summary)?;
    println!(
        "{} channels: Gauss-Newton theta beats splitting + line search on {} ({:.0}%); median (a)/(b) = {:.3} over {} channels where direct optimisation lowers the loss",
        rows.len(),
        beats,
        100.0 * beats as f64 / rows.len() as f64,
        median,
        ratios.len()
    );
    println!("wrote {}", run.path.display());
    Ok(())
}
