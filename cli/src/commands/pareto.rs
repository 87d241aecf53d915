//! `sprout pareto`: accuracy against parameters where width matters. From a
//! capacity-limited seed, Gauss-Newton growth at several lambda_p (learned
//! theta, and the same with noise theta), uniform and random growth sized
//! to each Gauss-Newton run's final parameter count, splitting steepest
//! descent, and the fixed-width family, all with the same training-epoch
//! budget; every grown architecture is also trained from scratch; several
//! seeds per point. The runs are a manifest ([`crate::sweep`]), so they run
//! in this process, `--jobs N` at a time, or as a Slurm array.

use crate::data::{resolve, DatasetName};
use crate::device::DeviceArgs;
use crate::plots::{accuracy_vs_params_with_errors, BarSeries, Bars};
use crate::sweep::{
    self, DataSpec, Finished, Job, Manifest, Matching, Outcome, Sweep, SweepArgs, Work,
};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use sprout_core::arch::Family;
use sprout_core::grow::{GrowConfig, Strategy, ThetaSource};
use sprout_core::optim::StepSchedule;
use sprout_core::select::{SelectConfig, Selection};
use sprout_core::Arch;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ParetoArgs {
    /// Dataset [default: the embedded Fashion-MNIST subset].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Directory of the dataset files.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Architecture family: vgg19 or mobilenet-v1.
    #[arg(long, default_value = "vgg19")]
    pub arch: String,
    /// Width of every layer of the seed that growth starts from.
    #[arg(long, default_value_t = 4)]
    pub seed_width: usize,
    /// Widths of the fixed-width family, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,6,8,12,16")]
    pub widths: Vec<usize>,
    /// lambda_p of the Gauss-Newton runs, comma-separated (the first also
    /// prices splitting steepest descent).
    #[arg(long, value_delimiter = ',', default_value = "1e-5,1e-4,3e-4")]
    pub lambdas: Vec<f64>,
    /// Seeds, comma-separated: every point is run once per seed.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Growth phases P.
    #[arg(long, default_value_t = 3)]
    pub phases: usize,
    /// Training (and morphism-learning) epochs per phase.
    #[arg(long, default_value_t = 1)]
    pub phase_epochs: usize,
    /// Training epochs after the last phase (at a tenth of the learning rate).
    #[arg(long, default_value_t = 2)]
    pub final_epochs: usize,
    /// Use only the first N training images.
    #[arg(long, default_value_t = 10_000)]
    pub train_limit: usize,
    /// Use only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    pub test_limit: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// A CI-sized sweep on the embedded data: widths 2 and 3 from a width-2
    /// seed, one lambda_p, one seed, 256 training and 128 test images, one
    /// phase; every method once.
    #[arg(long)]
    pub tiny: bool,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The benchmark's folder: manifest.jsonl, runs/, logs/, pareto.*.
    #[arg(long, default_value = "runs/pareto")]
    pub out: PathBuf,
}

impl ParetoArgs {
    /// The tiny sweep's settings replace the sweep flags.
    fn effective(&self) -> ParetoArgs {
        let mut a = self.clone();
        if a.tiny {
            a.dataset = None;
            a.data = None;
            a.seed_width = 2;
            a.widths = vec![2, 3];
            a.lambdas = vec![1e-4];
            a.seeds = vec![0];
            a.phases = 1;
            a.phase_epochs = 1;
            a.final_epochs = 1;
            a.train_limit = 256;
            a.test_limit = 128;
        }
        a
    }

    fn validate(&self) -> Result<Family> {
        let family = Family::parse(&self.arch).map_err(|_| {
            anyhow!(
                "--arch: unknown architecture '{}' (expected vgg19 or mobilenet-v1)",
                self.arch
            )
        })?;
        if self.seed_width == 0 {
            bail!("--seed-width must be at least 1");
        }
        if self.widths.is_empty() {
            bail!("--widths: give at least one width");
        }
        if self.widths.contains(&0) {
            bail!("--widths: widths must be at least 1");
        }
        if self.lambdas.is_empty() {
            bail!("--lambdas: give at least one value");
        }
        if let Some(l) = self.lambdas.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
            bail!("--lambdas: {l} is not a finite number >= 0");
        }
        if self.seeds.is_empty() {
            bail!("--seeds: give at least one seed");
        }
        if self.phases == 0 || self.phase_epochs == 0 {
            bail!("--phases and --phase-epochs must be at least 1");
        }
        if self.train_limit == 0 {
            bail!("--train-limit must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        self.sweep.validate()?;
        Ok(family)
    }

    fn total_epochs(&self) -> usize {
        self.phases * self.phase_epochs + self.final_epochs
    }

    /// Training and growth settings shared by every run: the library's
    /// defaults with this sweep's schedule (the learning rate drops 10x for
    /// the final epochs, of growth and of every training from scratch).
    fn config(&self) -> GrowConfig {
        let milestones = if self.final_epochs > 0 {
            vec![self.phases * self.phase_epochs]
        } else {
            Vec::new()
        };
        GrowConfig::default()
            .with_phases(self.phases)
            .with_phase_epochs(self.phase_epochs, self.phase_epochs)
            .with_final_epochs(self.final_epochs)
            .with_schedule(StepSchedule {
                base: self.lr,
                milestones,
                gamma: 0.1,
            })
    }
}

/// The Gauss-Newton methods: `(name, prune, prunes_after_splits)`. Splits
/// and prunes chosen together, without prunes (at small widths a prune is a
/// large change that eq. (1) misjudges, see docs/conventions.md), and
/// prunes admitted only after the splits where they add to the set.
const GN_METHODS: [(&str, bool, bool); 3] = [
    ("gn", true, false),
    ("gn-noprune", false, false),
    ("gn-prunes-after", true, true),
];

fn lambda_point(l: f64) -> String {
    format!("lambda_p {l:e}")
}

/// The point of a uniform or random run sized to the Gauss-Newton run
/// `gn_method` at the Gauss-Newton point `point`.
fn matched_point(point: &str, gn_method: &str) -> String {
    format!("{point} sized to {gn_method}")
}

/// The noise-theta ablation of the Gauss-Newton method `gn_method`.
fn noise_of(gn_method: &str) -> String {
    gn_method.replacen("gn", "gn-noise", 1)
}

/// Every run of the sweep, in the order they may start: the matched
/// uniform and random runs come after the Gauss-Newton runs they read.
fn plan(a: &ParetoArgs, family: Family) -> Result<Vec<(String, Job)>> {
    let splits = resolve(a.dataset, a.data.as_deref())?;
    let t = &splits.train;
    let input = [t.channels, t.height, t.width];
    let arch_of = |w: usize| {
        Arch::new(family, input, t.classes, vec![w; family.layers()]).map_err(anyhow::Error::from)
    };
    let seed_arch = arch_of(a.seed_width)?;
    let data = DataSpec {
        dataset: splits.name.clone(),
        data_dir: a.data.clone(),
        train_limit: Some(a.train_limit),
        test_limit: (a.test_limit > 0).then_some(a.test_limit),
    };
    let base = a.config();
    let epochs = a.total_epochs();
    let fam = family.name();
    let backend = a.device.backend.name();
    let job = |method: &str, point: String, seed: u64, config: GrowConfig, work: Work| Job {
        method: method.into(),
        point,
        seed,
        data: data.clone(),
        threads: a.sweep.threads(),
        backend: backend.into(),
        config,
        work,
    };
    let grow = |seed_arch: &Arch, match_params_of: Option<String>| Work::Grow {
        seed_arch: seed_arch.clone(),
        retrain_epochs: epochs,
        match_params_of,
        matching: Matching::Target,
    };
    let mut first = Vec::new();
    let mut matched = Vec::new();
    for &seed in &a.seeds {
        for &w in &a.widths {
            first.push((
                format!("{fam}-fixed-w{w}-s{seed}"),
                job(
                    "fixed",
                    format!("width {w}"),
                    seed,
                    base.clone(),
                    Work::Fixed {
                        arch: arch_of(w)?,
                        epochs,
                    },
                ),
            ));
        }
        for &l in &a.lambdas {
            let select = SelectConfig {
                lambda_params: l,
                ..SelectConfig::default()
            };
            // Each Gauss-Newton method with its noise-theta ablation, and
            // uniform and random growth sized to its final parameter count.
            for (gn_method, prune, prunes_after_splits) in GN_METHODS {
                let gn = base.clone().with_select(SelectConfig {
                    prune,
                    prunes_after_splits,
                    ..select
                });
                let gn_id = format!("{fam}-{gn_method}-lam{l:e}-s{seed}");
                first.push((
                    gn_id.clone(),
                    job(
                        gn_method,
                        lambda_point(l),
                        seed,
                        gn.clone(),
                        grow(&seed_arch, None),
                    ),
                ));
                let noise_method = noise_of(gn_method);
                first.push((
                    format!("{fam}-{noise_method}-lam{l:e}-s{seed}"),
                    job(
                        &noise_method,
                        lambda_point(l),
                        seed,
                        GrowConfig {
                            theta: ThetaSource::Noise,
                            ..gn
                        },
                        grow(&seed_arch, None),
                    ),
                ));
                for (method, strategy) in
                    [("uniform", Strategy::Uniform), ("random", Strategy::Random)]
                {
                    matched.push((
                        format!("{fam}-{method}-{gn_method}-lam{l:e}-s{seed}"),
                        job(
                            method,
                            matched_point(&lambda_point(l), gn_method),
                            seed,
                            base.clone()
                                .with_strategy(strategy)
                                .with_select(SelectConfig {
                                    selection: Selection::Independent,
                                    ..SelectConfig::default()
                                }),
                            grow(&seed_arch, Some(gn_id.clone())),
                        ),
                    ));
                }
            }
        }
        let l = a.lambdas[0];
        first.push((
            format!("{fam}-splitting-lam{l:e}-s{seed}"),
            job(
                "splitting",
                lambda_point(l),
                seed,
                base.clone()
                    .with_strategy(Strategy::Splitting)
                    .with_select(SelectConfig {
                        lambda_params: l,
                        ..SelectConfig::default()
                    }),
                grow(&seed_arch, None),
            ),
        ));
    }
    first.extend(matched);
    Ok(first)
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One point of a method: its runs over seeds.
#[derive(Debug, Clone)]
struct Point {
    method: String,
    point: String,
    params: (f64, f64),
    grown: Option<(f64, f64)>,
    retrained: (f64, f64),
    n: usize,
    /// Mean over seeds and phases of the true Delta L right after the morphisms.
    true_dl: Option<f64>,
}

impl Point {
    /// Standard error of the mean retrained (or grown) accuracy.
    fn se(&self, grown: bool) -> f64 {
        let sd = if grown {
            self.grown.map_or(self.retrained.1, |g| g.1)
        } else {
            self.retrained.1
        };
        sd / (self.n as f64).sqrt()
    }

    fn acc(&self, grown: bool) -> f64 {
        if grown {
            self.grown.map_or(self.retrained.0, |g| g.0)
        } else {
            self.retrained.0
        }
    }
}

fn points(rows: &[Outcome]) -> Vec<Point> {
    let mut groups: BTreeMap<(String, String), Vec<&Outcome>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.method.clone(), r.point.clone()))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Point> = groups
        .into_iter()
        .map(|((method, point), rs)| {
            let f = |g: &dyn Fn(&Outcome) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<_>>();
            let grown: Vec<f64> = rs.iter().filter_map(|r| r.grown_test_accuracy).collect();
            let dls: Vec<f64> = rs.iter().flat_map(|r| r.true_delta_loss.clone()).collect();
            Point {
                method,
                point,
                params: mean_std(&f(&|r| r.params as f64)),
                grown: (grown.len() == rs.len()).then(|| mean_std(&grown)),
                retrained: mean_std(&f(&|r| r.test_accuracy)),
                n: rs.len(),
                true_dl: (!dls.is_empty()).then(|| dls.iter().sum::<f64>() / dls.len() as f64),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.method
            .cmp(&b.method)
            .then(a.params.0.total_cmp(&b.params.0))
    });
    out
}

/// The fixed-width family's mean accuracy (and standard error) at `params`,
/// linearly interpolated between the two widths around it.
fn fixed_at(fixed: &[&Point], params: f64) -> Option<(f64, f64)> {
    let lo = fixed.iter().rfind(|p| p.params.0 <= params)?;
    let hi = fixed.iter().find(|p| p.params.0 >= params)?;
    if hi.params.0 == lo.params.0 {
        return Some((lo.retrained.0, lo.se(false)));
    }
    let w = (params - lo.params.0) / (hi.params.0 - lo.params.0);
    Some((
        (1.0 - w) * lo.retrained.0 + w * hi.retrained.0,
        (1.0 - w) * lo.se(false) + w * hi.se(false),
    ))
}

fn pm(v: (f64, f64)) -> String {
    format!("{:.2} ± {:.2}", 100.0 * v.0, 100.0 * v.1)
}

/// CSV (one row per run), the Markdown summary and the comparisons.
fn render(rows: &[Outcome], pts: &[Point]) -> Result<(String, String)> {
    let mut csv = String::from(
        "id,method,point,seed,params,macs,grown_test_accuracy,test_accuracy,mean_true_delta_loss,mean_true_delta_loss_recalibrated,growth_seconds,train_seconds\n",
    );
    let avg = |v: &[f64]| {
        (!v.is_empty()).then(|| format!("{:.5}", v.iter().sum::<f64>() / v.len() as f64))
    };
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{},{},{},{},{:.4},{},{},{},{:.1}",
            r.id,
            r.method,
            r.point,
            r.seed,
            r.params,
            r.macs,
            r.grown_test_accuracy
                .map_or_else(String::new, |a| format!("{a:.4}")),
            r.test_accuracy,
            avg(&r.true_delta_loss).unwrap_or_default(),
            avg(&r.true_delta_loss_recalibrated).unwrap_or_default(),
            r.growth_seconds
                .map_or_else(String::new, |s| format!("{s:.1}")),
            r.train_seconds
        )?;
    }
    let mut md = String::from(
        "| method | point | seeds | params (mean ± std) | test accuracy at the end of growth (%) | retrained from scratch (%) | mean true ΔL after the morphisms |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for p in pts {
        writeln!(
            md,
            "| {} | {} | {} | {:.0} ± {:.0} | {} | {} | {} |",
            p.method,
            p.point,
            p.n,
            p.params.0,
            p.params.1,
            p.grown.map_or_else(|| "-".into(), pm),
            pm(p.retrained),
            p.true_dl.map_or_else(|| "-".into(), |d| format!("{d:+.4}"))
        )?;
    }
    let fixed: Vec<&Point> = pts.iter().filter(|p| p.method == "fixed").collect();
    let gn: Vec<&Point> = pts
        .iter()
        .filter(|p| GN_METHODS.iter().any(|m| m.0 == p.method))
        .collect();
    if !gn.is_empty() {
        md.push_str("\nGauss-Newton growth (learned θ; with prunes, without, and with prunes after the splits) against the others at the same λ_p point: difference of mean test accuracy in points, and the combined standard error sqrt(se1² + se2²); the fixed-width family is interpolated at the run's parameter count; uniform and random growth are sized to each gn method's runs at that point, and the noise-θ ablation is of the same method.\n\n| method | λ_p point | accuracy | vs fixed width | vs uniform | vs random | vs gn with noise θ |\n|---|---|---|---:|---:|---:|---:|\n");
        for (label, grown) in [("retrained", false), ("end of growth", true)] {
            for g in &gn {
                let sized = matched_point(&g.point, &g.method);
                let other = |m: &str, point: &str| {
                    pts.iter()
                        .find(|p| p.method == m && p.point == point)
                        .map(|p| (p.acc(grown), p.se(grown)))
                };
                let cmp = |o: Option<(f64, f64)>| {
                    o.map_or_else(
                        || "-".into(),
                        |(a, se)| {
                            let d = g.acc(grown) - a;
                            let c = (g.se(grown).powi(2) + se.powi(2)).sqrt();
                            format!("{:+.2} ± {:.2}", 100.0 * d, 100.0 * c)
                        },
                    )
                };
                let vs_fixed = fixed_at(&fixed, g.params.0);
                writeln!(
                    md,
                    "| {} | {} | {label} | {} | {} | {} | {} |",
                    g.method,
                    g.point,
                    cmp(vs_fixed),
                    cmp(other("uniform", &sized)),
                    cmp(other("random", &sized)),
                    cmp(other(&noise_of(&g.method), &g.point))
                )?;
            }
        }
    }
    md.push_str(&learned_vs_noise(rows)?);
    Ok((csv, md))
}

/// Phase by phase, paired by point, seed and phase: how often the learned
/// theta of each Gauss-Newton method left a lower true Delta L right after
/// the morphisms than its noise-theta ablation (frozen BN statistics, and
/// with them refreshed). Ties are sets whose learned splits went in at
/// scale 0 or at the same theta.
fn learned_vs_noise(rows: &[Outcome]) -> Result<String> {
    let mut md = String::new();
    for (gn_method, ..) in GN_METHODS {
        let noise = noise_of(gn_method);
        let (mut frozen, mut refreshed) = ([0usize; 3], [0usize; 3]);
        for a in rows.iter().filter(|r| r.method == gn_method) {
            let Some(b) = rows
                .iter()
                .find(|r| r.method == noise && r.point == a.point && r.seed == a.seed)
            else {
                continue;
            };
            for (tally, x, y) in [
                (&mut frozen, &a.true_delta_loss, &b.true_delta_loss),
                (
                    &mut refreshed,
                    &a.true_delta_loss_recalibrated,
                    &b.true_delta_loss_recalibrated,
                ),
            ] {
                for (l, n) in x.iter().zip(y) {
                    let i = if (l - n).abs() <= 1e-6 * (1.0 + n.abs()) {
                        1
                    } else if l < n {
                        0
                    } else {
                        2
                    };
                    tally[i] += 1;
                }
            }
        }
        let total: usize = frozen.iter().sum();
        if total == 0 {
            continue;
        }
        if md.is_empty() {
            md.push_str("\nLearned against noise θ, phase by phase (paired by point, seed and phase): phases where the learned θ left the lower true ΔL on held-out images right after the morphisms / ties / phases where the noise θ did.\n\n| method | phases | frozen BN statistics | BN statistics refreshed |\n|---|---:|---:|---:|\n");
        }
        let f = |t: [usize; 3]| format!("{} / {} / {}", t[0], t[1], t[2]);
        writeln!(
            md,
            "| {gn_method} against {noise} | {total} | {} | {} |",
            f(frozen),
            f(refreshed)
        )?;
    }
    Ok(md)
}

/// The sweep of a validated [`ParetoArgs`].
struct Pareto {
    args: ParetoArgs,
    family: Family,
}

impl Sweep for Pareto {
    const COMMAND: &'static str = "pareto";

    fn out(&self) -> &Path {
        &self.args.out
    }

    fn plan(&self) -> Result<Vec<(String, Job)>> {
        plan(&self.args, self.family)
    }

    fn collect(&self, _: &Manifest, done: &[Finished]) -> Result<String> {
        let out = &self.args.out;
        let title = format!("{} from width {}", self.family.name(), self.args.seed_width);
        let rows: Vec<Outcome> = done.iter().map(|(_, o)| o.clone()).collect();
        let pts = points(&rows);
        let (csv, md) = render(&rows, &pts)?;
        crate::weights::write_atomic(&out.join("pareto.csv"), csv.as_bytes())?;
        crate::weights::write_atomic(&out.join("pareto.md"), md.as_bytes())?;
        for (file, grown, what) in [
            ("pareto.svg", false, "trained from scratch"),
            ("pareto-grown.svg", true, "at the end of growth"),
        ] {
            let mut series: BTreeMap<String, Bars> = BTreeMap::new();
            for p in &pts {
                if grown && p.grown.is_none() && p.method != "fixed" {
                    continue;
                }
                series.entry(p.method.clone()).or_default().push((
                    p.params.0,
                    100.0 * p.acc(grown),
                    100.0 * p.se(grown),
                ));
            }
            let series: Vec<BarSeries> = series.into_iter().collect();
            accuracy_vs_params_with_errors(
                &out.join(file),
                &format!("{title}, {what} (mean ± s.e. over seeds)"),
                &series,
            )?;
        }
        print!("{md}");
        Ok(format!("{}/pareto.{{csv,md,svg}}", out.display()))
    }
}

pub fn run(args: &ParetoArgs) -> Result<()> {
    let args = args.effective();
    let family = args.validate()?;
    let sweep = args.sweep.clone();
    sweep::drive(&Pareto { args, family }, &sweep)
}
