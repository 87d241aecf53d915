//! `sprout table`: the paper's Tables 1 and 2. From each seed, growth with
//! the Gauss-Newton estimator at several lambda_p, splitting steepest descent,
//! random and uniform growth (the last two matched to the parameter count the
//! first Gauss-Newton run reached), each final architecture retrained from
//! scratch (the paper's protocol), next to fixed baselines trained for the
//! same number of epochs. Every run lives in its own directory under
//! `OUT/runs`, so an interrupted table continues where it stopped.

use crate::commands::grow::{self, limited, RunConfig};
use crate::data::{resolve, DatasetName, Splits};
use crate::device::DeviceArgs;
use crate::plots::accuracy_vs_params;
use crate::run_dir::{set_threads, RunDir};
use crate::sweep::matched_fraction;
use crate::weights::load_arch_json;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use sprout_core::arch::Family;
use sprout_core::data::{Dataset, Normalization};
use sprout_core::grow::{GrowConfig, Strategy};
use sprout_core::optim::StepSchedule;
use sprout_core::select::{SelectConfig, Selection};
use sprout_core::Arch;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    /// Dataset [default: the embedded Fashion-MNIST subset].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Directory of the dataset files.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Seed presets, comma-separated (VGG-19 at width 16, MobileNetV1 at width 32).
    #[arg(long, value_delimiter = ',', default_value = "vgg19,mobilenet-v1")]
    pub archs: Vec<String>,
    /// lambda_p of the Gauss-Newton runs, comma-separated; the first also
    /// prices splitting and the paper's independent selection, and random
    /// and uniform growth match its parameter count.
    #[arg(long, value_delimiter = ',', default_value = "3e-7,1e-6")]
    pub lambdas: Vec<f64>,
    /// Growth phases P.
    #[arg(long, default_value_t = 3)]
    pub phases: usize,
    /// Training (and morphism-learning) epochs per phase.
    #[arg(long, default_value_t = 1)]
    pub phase_epochs: usize,
    /// Training epochs after the last phase.
    #[arg(long, default_value_t = 1)]
    pub final_epochs: usize,
    /// Widths of the fixed VGG-19 baselines beside the seed, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    pub vgg_widths: Vec<usize>,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 10_000)]
    pub train_limit: usize,
    /// Use only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    pub test_limit: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long)]
    pub no_augment: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, default_value = "runs/table")]
    pub out: PathBuf,
}

/// One row of the table, stored as `result.json` in the run's directory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Row {
    /// Seed preset (`vgg19` or `mobilenet-v1`).
    pub seed: String,
    /// `gn`, `splitting`, `random`, `uniform` or `fixed`.
    pub method: String,
    pub lambda_params: Option<f64>,
    pub params: u64,
    pub macs: u64,
    pub widths: Vec<usize>,
    /// Test accuracy of the grown network at the end of growth (none for fixed rows).
    pub grown_test_accuracy: Option<f64>,
    /// Test accuracy after training the final architecture from scratch.
    pub test_accuracy: f64,
    pub growth_seconds: Option<f64>,
    pub train_seconds: f64,
    pub epochs: usize,
}

/// The growth runs of one seed, in the order they must run (random and
/// uniform read the first Gauss-Newton run's parameter count).
#[derive(Clone, Debug, PartialEq)]
enum Method {
    /// Gauss-Newton estimates with the joint selection rule.
    Gn(f64),
    /// Gauss-Newton estimates with the paper's independent selection rule.
    GnIndependent(f64),
    Splitting(f64),
    Random,
    Uniform,
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Gn(_) => "gn",
            Method::GnIndependent(_) => "gn-independent",
            Method::Splitting(_) => "splitting",
            Method::Random => "random",
            Method::Uniform => "uniform",
        }
    }

    fn lambda(&self) -> Option<f64> {
        match self {
            Method::Gn(l) | Method::GnIndependent(l) | Method::Splitting(l) => Some(*l),
            _ => None,
        }
    }

    fn dir_name(&self, seed: &str) -> String {
        match self.lambda() {
            Some(l) => format!("{seed}-{}-{l:e}", self.name()),
            None => format!("{seed}-{}", self.name()),
        }
    }
}

impl TableArgs {
    fn validate(&self) -> Result<()> {
        if self.phases == 0 || self.phase_epochs == 0 {
            bail!("--phases and --phase-epochs must be at least 1");
        }
        if self.lambdas.is_empty() {
            bail!("--lambdas: give at least one value");
        }
        if let Some(l) = self.lambdas.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
            bail!("--lambdas: {l} is not a finite number >= 0");
        }
        if self.vgg_widths.contains(&0) {
            bail!("--vgg-widths: widths must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        for a in &self.archs {
            Family::parse(a.trim()).map_err(|_| {
                anyhow!("--archs: unknown architecture '{a}' (expected vgg19 or mobilenet-v1)")
            })?;
        }
        Ok(())
    }

    /// Training epochs of a growth run, which every retraining and fixed
    /// baseline gets too.
    fn total_epochs(&self) -> usize {
        self.phases * self.phase_epochs + self.final_epochs
    }

    /// The epoch from which the learning rate is ten times lower: the final
    /// training epochs of growth, and the same epochs of every retraining.
    fn milestone(&self) -> Option<usize> {
        (self.final_epochs > 0).then_some(self.phases * self.phase_epochs)
    }

    fn limit(n: usize) -> Option<usize> {
        (n > 0).then_some(n)
    }

    /// The training setup that retraining and fixed baselines share with
    /// growth: the library's defaults with the table's schedule.
    fn train_config(&self) -> GrowConfig {
        GrowConfig {
            augment: if self.no_augment {
                None
            } else {
                GrowConfig::default().augment
            },
            ..GrowConfig::default()
                .with_phases(self.phases)
                .with_phase_epochs(self.phase_epochs, self.phase_epochs)
                .with_final_epochs(self.final_epochs)
                .with_schedule(StepSchedule {
                    base: self.lr,
                    milestones: self.milestone().into_iter().collect(),
                    gamma: 0.1,
                })
        }
    }

    /// The configuration of one growth run.
    fn run_config(
        &self,
        splits: &Splits,
        seed_arch: &Arch,
        method: &Method,
        fraction: Option<f64>,
    ) -> RunConfig {
        let (strategy, selection) = match method {
            // The published table's gn rows were measured with the joint rule.
            Method::Gn(_) => (Strategy::Gn, Selection::Joint),
            Method::GnIndependent(_) => (Strategy::Gn, Selection::Independent),
            Method::Splitting(_) => (Strategy::Splitting, Selection::default()),
            Method::Random => (Strategy::Random, Selection::default()),
            Method::Uniform => (Strategy::Uniform, Selection::default()),
        };
        let defaults = SelectConfig::default();
        let select = SelectConfig {
            lambda_params: method.lambda().unwrap_or(defaults.lambda_params),
            fraction: fraction.unwrap_or(defaults.fraction),
            selection,
            ..defaults
        };
        RunConfig {
            seed_arch: seed_arch.clone(),
            dataset: splits.name.clone(),
            data_dir: self.data.clone(),
            train_limit: Self::limit(self.train_limit),
            test_limit: Self::limit(self.test_limit),
            seed: self.seed,
            retrain_epochs: 0,
            grow: self
                .train_config()
                .with_strategy(strategy)
                .with_select(select),
        }
    }
}

fn read_row(dir: &Path) -> Option<Row> {
    let bytes = fs::read(dir.join("result.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What every architecture of the table is trained from scratch with.
struct Retraining<'a> {
    args: &'a TableArgs,
    cfg: GrowConfig,
    train: &'a Dataset,
    test: &'a Dataset,
    norm: &'a Normalization,
}

impl Retraining<'_> {
    /// Trains `arch` from scratch for the table's epoch budget, keeps its
    /// weights in `dir` and returns its test accuracy and the seconds taken.
    fn run(&self, arch: &Arch, dir: &Path) -> Result<(f64, f64)> {
        let (_, tested, secs) = grow::retrain_to(
            &dir.join("retrained.safetensors"),
            arch,
            &self.cfg,
            self.args.seed,
            self.args.total_epochs(),
            (self.train, self.test, self.norm),
            &self.args.device,
        )?;
        Ok((f64::from(tested.accuracy), secs))
    }
}

/// A growth run followed by retraining its final architecture from scratch.
fn growth_row(
    retraining: &Retraining,
    splits: &Splits,
    seed_arch: &Arch,
    method: &Method,
    fraction: Option<f64>,
    dir: &Path,
) -> Result<Row> {
    let args = retraining.args;
    let cfg = args.run_config(splits, seed_arch, method, fraction);
    let start = Instant::now();
    // An interrupted growth run continues from its last phase.
    grow::start_or_resume(dir, &cfg, &args.device)
        .with_context(|| format!("growth run {}", dir.display()))?;
    let growth_seconds = start.elapsed().as_secs_f64();
    let arch = load_arch_json(&dir.join("arch.json"))?;
    let final_path = dir.join("final.json");
    let fin: serde_json::Value = serde_json::from_slice(
        &fs::read(&final_path).with_context(|| format!("cannot read {}", final_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", final_path.display()))?;
    let (test_accuracy, train_seconds) = retraining.run(&arch, dir)?;
    Ok(Row {
        seed: seed_arch.family.name().into(),
        method: method.name().into(),
        lambda_params: method.lambda(),
        params: arch.params(),
        macs: arch.macs(),
        widths: arch.widths.clone(),
        grown_test_accuracy: fin["test_accuracy"].as_f64(),
        test_accuracy,
        growth_seconds: Some(growth_seconds),
        train_seconds,
        epochs: args.total_epochs(),
    })
}

fn fixed_row(retraining: &Retraining, arch: &Arch, seed: &str, dir: &Path) -> Result<Row> {
    let args = retraining.args;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (test_accuracy, train_seconds) = retraining.run(arch, dir)?;
    Ok(Row {
        seed: seed.into(),
        method: "fixed".into(),
        lambda_params: None,
        params: arch.params(),
        macs: arch.macs(),
        widths: arch.widths.clone(),
        grown_test_accuracy: None,
        test_accuracy,
        growth_seconds: None,
        train_seconds,
        epochs: args.total_epochs(),
    })
}

/// Runs `make` unless `dir` already holds a finished row, and stores its row.
fn cached(dir: &Path, make: impl FnOnce() -> Result<Row>) -> Result<Row> {
    if let Some(row) = read_row(dir) {
        println!("{}: done before, reusing result.json", dir.display());
        return Ok(row);
    }
    let row = make()?;
    RunDir::create(dir)?.write_json("result.json", &row)?;
    Ok(row)
}

/// A row's label in the table and the plot.
pub fn label(r: &Row) -> String {
    match (r.method.as_str(), r.lambda_params) {
        ("fixed", _) => format!("fixed {}", width_label(&r.widths)),
        ("gn-independent", Some(l)) => format!("gn, paper's selection (lambda_p {l:e})"),
        (m, Some(l)) => format!("{m} (lambda_p {l:e})"),
        (m, None) => m.to_string(),
    }
}

fn width_label(widths: &[usize]) -> String {
    match widths.split_first() {
        Some((w, rest)) if rest.iter().all(|x| x == w) => format!("width {w}"),
        _ => "widths".into(),
    }
}

fn pct_error(acc: f64) -> String {
    format!("{:.2}", 100.0 * (1.0 - acc))
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.0}"))
}

/// The table as CSV and Markdown.
pub fn render(rows: &[Row]) -> Result<(String, String)> {
    let mut csv = String::from(
        "seed,method,lambda_params,params,macs,grown_test_error,test_error,growth_seconds,train_seconds,epochs\n",
    );
    let mut md = String::from(
        "| seed | run | params | MACs | test error grown (%) | test error retrained (%) | growth (s) | retrain (s) |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.1},{}",
            r.seed,
            r.method,
            r.lambda_params
                .map_or_else(String::new, |l| format!("{l:e}")),
            r.params,
            r.macs,
            r.grown_test_accuracy.map_or_else(String::new, pct_error),
            pct_error(r.test_accuracy),
            r.growth_seconds
                .map_or_else(String::new, |s| format!("{s:.1}")),
            r.train_seconds,
            r.epochs
        )?;
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.seed,
            label(r),
            r.params,
            r.macs,
            r.grown_test_accuracy.map_or_else(|| "-".into(), pct_error),
            pct_error(r.test_accuracy),
            secs(r.growth_seconds),
            secs(Some(r.train_seconds))
        )?;
    }
    Ok((csv, md))
}

pub fn run(args: &TableArgs) -> Result<()> {
    args.validate()?;
    set_threads(args.threads)?;
    let splits = resolve(args.dataset, args.data.as_deref())?;
    let train = limited(&splits.train, TableArgs::limit(args.train_limit));
    let test = limited(&splits.test, TableArgs::limit(args.test_limit));
    let norm = Normalization::of(&train);
    let retraining = Retraining {
        args,
        cfg: args.train_config(),
        train: &train,
        test: &test,
        norm: &norm,
    };
    let out = RunDir::create(&args.out)?;
    let runs = args.out.join("runs");
    let t = &train;
    let input = [t.channels, t.height, t.width];
    println!(
        "table on {} ({} train / {} test images): {} phases x {} epochs (+{} final), every architecture trained {} epochs from scratch",
        splits.name,
        train.len(),
        test.len(),
        args.phases,
        args.phase_epochs,
        args.final_epochs,
        args.total_epochs()
    );
    let mut rows = Vec::new();
    for name in &args.archs {
        let family =
            Family::parse(name.trim()).map_err(|_| anyhow!("--archs: unknown '{name}'"))?;
        let seed_name = family.name();
        let seed_width = match family {
            Family::Vgg19 => 16,
            Family::MobilenetV1 => 32,
        };
        let seed_arch = Arch::new(family, input, t.classes, vec![seed_width; family.layers()])
            .map_err(|e| anyhow!("{e}"))?;
        let mut fixed = vec![seed_arch.clone()];
        if family == Family::Vgg19 {
            for &w in &args.vgg_widths {
                fixed.push(
                    Arch::new(family, input, t.classes, vec![w; family.layers()])
                        .map_err(|e| anyhow!("{e}"))?,
                );
            }
        }
        for arch in &fixed {
            let dir = runs.join(format!("{seed_name}-fixed-w{}", arch.widths[0]));
            rows.push(cached(&dir, || {
                fixed_row(&retraining, arch, seed_name, &dir)
            })?);
        }
        let mut methods: Vec<Method> = args.lambdas.iter().map(|&l| Method::Gn(l)).collect();
        methods.push(Method::GnIndependent(args.lambdas[0]));
        methods.push(Method::Splitting(args.lambdas[0]));
        methods.push(Method::Random);
        methods.push(Method::Uniform);
        let mut target = None;
        for method in &methods {
            let dir = runs.join(method.dir_name(seed_name));
            let fraction = match method {
                Method::Random | Method::Uniform => {
                    let target: u64 = target.ok_or_else(|| anyhow!("no gn run to match"))?;
                    Some(matched_fraction(&seed_arch, args.phases, target)?)
                }
                _ => None,
            };
            let row = cached(&dir, || {
                growth_row(&retraining, &splits, &seed_arch, method, fraction, &dir)
            })?;
            if target.is_none() && matches!(method, Method::Gn(_)) {
                target = Some(row.params);
            }
            rows.push(row);
        }
    }
    let (csv, md) = render(&rows)?;
    crate::weights::write_atomic(&out.file("table.csv"), csv.as_bytes())?;
    crate::weights::write_atomic(&out.file("table.md"), md.as_bytes())?;
    for name in &args.archs {
        let seed_name = Family::parse(name.trim())
            .map_err(|_| anyhow!("--archs: unknown '{name}'"))?
            .name();
        let series: Vec<(String, Vec<(f64, f64)>)> = rows
            .iter()
            .filter(|r| r.seed == seed_name)
            .map(|r| (label(r), vec![(r.params as f64, 100.0 * r.test_accuracy)]))
            .collect();
        accuracy_vs_params(
            &out.file(&format!("accuracy-vs-params-{seed_name}.svg")),
            &format!("{seed_name} on {}: retrained from scratch", splits.name),
            &series,
        )?;
    }
    print!("{md}");
    println!("wrote {}", args.out.display());
    Ok(())
}
