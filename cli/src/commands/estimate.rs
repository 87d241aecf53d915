//! `sprout estimate`: the paper's Figure 3. Train the seed, learn theta for
//! every split candidate with the model fixed, then compare each candidate's
//! estimated Delta L with the true Delta L of the actually expanded network
//! on held-out data, under the same frozen-sigma convention (eval mode).

use crate::commands::experiment::{
    mean_loss, mean_scores, save_run, train_and_learn_theta, ExperimentArgs,
};
use crate::progress::bar;
use crate::run_dir::{set_threads, RunDir};
use crate::weights::save_tensors;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use sprout_core::estimator::Curvature;
use sprout_core::morph::{apply, ChannelMorphism, Morphism};
use sprout_core::train::Batches;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    #[arg(long, default_value = "runs/estimate")]
    pub out: PathBuf,
}

/// One split candidate's numbers.
#[derive(Debug, Clone, Copy)]
struct Row {
    layer: usize,
    channel: usize,
    /// EMA of eq. (1) over the theta-learning batches (the paper's Figure 3).
    ema: f64,
    /// Brute force on the held-out images.
    truth: f64,
    theta_norm: f64,
    /// Eq. (1) with the final theta on the held-out images.
    heldout: f64,
}

/// Correlations of `est` with the truth over the rows `keep` selects.
fn correlations(
    rows: &[Row],
    keep: impl Fn(&Row) -> bool,
    est: impl Fn(&Row) -> f64,
) -> serde_json::Value {
    let pts: Vec<&Row> = rows.iter().filter(|r| keep(r)).collect();
    let e: Vec<f64> = pts.iter().map(|r| est(r)).collect();
    let t: Vec<f64> = pts.iter().map(|r| r.truth).collect();
    json!({"candidates": pts.len(), "pearson": pearson(&e, &t), "spearman": spearman(&e, &t)})
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks with ties averaged.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

pub fn run(args: &EstimateArgs) -> Result<()> {
    let a = &args.common;
    set_threads(a.threads)?;
    let run = RunDir::create(&args.out)?;
    let mut backend = a.device.open(a.batch)?;
    let exp = train_and_learn_theta(a, backend.as_mut())?;
    let (arch, net, learned, train, heldout, norm) = (
        &exp.arch,
        &exp.net,
        &exp.state,
        &exp.train,
        &exp.heldout,
        &exp.norm,
    );
    let config = json!({
        "command": "estimate", "dataset": exp.dataset, "data_dir": a.data, "train_epochs": a.train_epochs,
        "theta_epochs": a.theta_epochs, "heldout": heldout.len(), "lr": a.lr, "theta_init": a.theta_init,
        "augment": !a.no_augment, "ema_alpha": exp.ema_alpha, "curvature": Curvature::from(a.curvature), "theta_max": exp.theta_max, "seed": a.seed, "train_images": train.len(),
    });
    save_run(&run, &exp, &config)?;
    let args = a;

    // Eq. (1) with the final theta on the held-out data, and the brute-force truth there.
    let mut hbuf = Batches::new(heldout, args.batch);
    let base = mean_loss(backend.as_mut(), net, heldout, norm, &mut hbuf)?;
    let units = arch.units();
    let heldout_est = mean_scores(
        backend.as_mut(),
        net,
        learned,
        args.curvature.into(),
        heldout,
        norm,
        &mut hbuf,
    )?;
    let total: usize = arch.widths.iter().sum();
    let pb = bar(total as u64, "brute force");
    let start = Instant::now();
    let mut rows = Vec::new();
    for (l, u) in units.iter().enumerate() {
        let fan = u.fan_in();
        for c in 0..u.cout {
            let theta = learned.theta[l][c * fan..(c + 1) * fan].to_vec();
            let expanded = apply(
                net,
                &[ChannelMorphism {
                    layer: l,
                    channel: c,
                    morphism: Morphism::Split { theta },
                }],
                &mut [],
            )?;
            let truth = mean_loss(backend.as_mut(), &expanded, heldout, norm, &mut hbuf)? - base;
            rows.push(Row {
                layer: l,
                channel: c,
                ema: learned.split_ema[l][c] as f64,
                truth,
                theta_norm: learned.theta_norm(l, c) as f64,
                heldout: heldout_est[l][c],
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    println!(
        "brute force over {} candidates on {} held-out images in {:.1} s",
        rows.len(),
        heldout.len(),
        start.elapsed().as_secs_f64()
    );

    let mut csv = String::from("layer,channel,estimated,true,theta_norm\n");
    for r in &rows {
        writeln!(
            csv,
            "{},{},{:e},{:e},{:e}",
            r.layer, r.channel, r.ema, r.truth, r.theta_norm
        )?;
    }
    crate::weights::write_atomic(&run.file("candidates.csv"), csv.as_bytes())?;
    let mut held = String::from("layer,channel,estimated_heldout,true\n");
    for r in &rows {
        writeln!(
            held,
            "{},{},{:e},{:e}",
            r.layer, r.channel, r.heldout, r.truth
        )?;
    }
    crate::weights::write_atomic(&run.file("heldout.csv"), held.as_bytes())?;
    let named: Vec<(String, Vec<usize>, &[f32])> = units
        .iter()
        .enumerate()
        .map(|(l, u)| {
            (
                format!("layers.{l}.theta"),
                vec![u.cout, u.cin, u.kernel, u.kernel],
                learned.theta[l].as_slice(),
            )
        })
        .collect();
    save_tensors(
        &run.file("thetas.safetensors"),
        &named,
        &[("arch", serde_json::to_string(&arch)?)],
    )?;

    let per_layer: Vec<_> = (0..units.len())
        .map(|l| {
            json!({
                "layer": l,
                "ema": correlations(&rows, |r| r.layer == l, |r| r.ema),
                "heldout": correlations(&rows, |r| r.layer == l, |r| r.heldout),
            })
        })
        .collect();
    let summary = json!({
        "base_heldout_loss": base,
        "overall": correlations(&rows, |_| true, |r| r.ema),
        "overall_heldout_estimate": correlations(&rows, |_| true, |r| r.heldout),
        "per_layer": per_layer,
    });
    run.write_json("summary.json", &summary)?;
    let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.truth, r.ema)).collect();
    crate::plots::scatter_estimated_vs_true(
        &run.file("scatter-all.svg"),
        "all layers: estimated (EMA) vs true ΔL",
        &pts,
    )?;
    let held: Vec<(f64, f64)> = rows.iter().map(|r| (r.truth, r.heldout)).collect();
    crate::plots::scatter_estimated_vs_true(
        &run.file("scatter-heldout-all.svg"),
        "all layers: estimated (final theta, held-out data) vs true ΔL",
        &held,
    )?;
    for l in 0..units.len() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.layer == l)
            .map(|r| (r.truth, r.ema))
            .collect();
        crate::plots::scatter_estimated_vs_true(
            &run.file(&format!("scatter-layer-{:02}.svg", l + 1)),
            &format!("layer {}: estimated vs true ΔL", l + 1),
            &pts,
        )?;
    }
    let o = &summary["overall"];
    let h = &summary["overall_heldout_estimate"];
    println!(
        "{} candidates: EMA estimate vs truth Pearson {:.3} Spearman {:.3}; held-out estimate Pearson {:.3} Spearman {:.3}",
        rows.len(),
        o["pearson"].as_f64().unwrap_or(f64::NAN),
        o["spearman"].as_f64().unwrap_or(f64::NAN),
        h["pearson"].as_f64().unwrap_or(f64::NAN),
        h["spearman"].as_f64().unwrap_or(f64::NAN)
    );
    for l in [0, 8, units.len() - 1] {
        if l < units.len() {
            let p = &summary["per_layer"][l];
            println!(
                "  layer {:>2}: EMA Spearman {:.3} (Pearson {:.3}); held-out Spearman {:.3}",
                l + 1,
                p["ema"]["spearman"].as_f64().unwrap_or(f64::NAN),
                p["ema"]["pearson"].as_f64().unwrap_or(f64::NAN),
                p["heldout"]["spearman"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    println!("wrote {}", run.path.display());
    Ok(())
}
