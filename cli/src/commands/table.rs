//! `sprout table`: the paper's Tables 1 and 2. From each seed, growth with
//! the Gauss-Newton estimator at several lambda_p, splitting steepest descent,
//! random and uniform growth (the last two matched to the parameter count the
//! first Gauss-Newton run reached), each final architecture retrained from
//! scratch (the paper's protocol), next to fixed baselines trained for the
//! same number of epochs. The runs are a manifest ([`crate::sweep`]), so
//! they run in this process, `--jobs N` at a time or as a Slurm array, and
//! every run lives in its own directory under `OUT/runs`, so an interrupted
//! table continues where it stopped.

use crate::data::{resolve, DatasetName};
use crate::device::DeviceArgs;
use crate::plots::accuracy_vs_params;
use crate::sweep::{
    self, DataSpec, Finished, Job, Manifest, ManifestLine, Matching, Outcome, Sweep, SweepArgs,
    Work,
};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use sprout_core::arch::Family;
use sprout_core::grow::{GrowConfig, Strategy};
use sprout_core::optim::StepSchedule;
use sprout_core::select::{SelectConfig, Selection};
use sprout_core::Arch;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The table's folder: manifest.jsonl, runs/, logs/, table.*.
    #[arg(long, default_value = "runs/table")]
    pub out: PathBuf,
}

/// One row of the table: a finished run's outcome.
#[derive(Debug, Clone, PartialEq)]
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

    /// The run's id in the manifest (and its directory under `OUT/runs`).
    fn id(&self, seed: &str) -> String {
        match self.lambda() {
            Some(l) => format!("{seed}-{}-{l:e}", self.name()),
            None => format!("{seed}-{}", self.name()),
        }
    }
}

/// The method label of the rows whose lambda_p the table shows.
fn shows_lambda(method: &str) -> bool {
    matches!(method, "gn" | "gn-independent" | "splitting")
}

impl TableArgs {
    fn validate(&self) -> Result<Vec<Family>> {
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
        self.sweep.validate()?;
        self.archs
            .iter()
            .map(|a| {
                Family::parse(a.trim()).map_err(|_| {
                    anyhow!("--archs: unknown architecture '{a}' (expected vgg19 or mobilenet-v1)")
                })
            })
            .collect()
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

    /// The configuration of one growth run (random and uniform growth get
    /// their per-layer fraction when the run they match has finished).
    fn growth_config(&self, method: &Method) -> GrowConfig {
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
            selection,
            ..defaults
        };
        self.train_config()
            .with_strategy(strategy)
            .with_select(select)
    }
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

/// Every run of the table, per seed preset in the table's row order: the
/// fixed baselines, the Gauss-Newton runs, splitting, then random and
/// uniform growth, which wait for the first Gauss-Newton run they match.
fn plan(a: &TableArgs, families: &[Family]) -> Result<Vec<(String, Job)>> {
    let splits = resolve(a.dataset, a.data.as_deref())?;
    let t = &splits.train;
    let input = [t.channels, t.height, t.width];
    let data = DataSpec {
        dataset: splits.name.clone(),
        data_dir: a.data.clone(),
        train_limit: TableArgs::limit(a.train_limit),
        test_limit: TableArgs::limit(a.test_limit),
    };
    let shown = |n: usize, limit: Option<usize>| limit.map_or(n, |l| l.min(n));
    println!(
        "table on {} ({} train / {} test images): {} phases x {} epochs (+{} final), every architecture trained {} epochs from scratch",
        splits.name,
        shown(t.len(), data.train_limit),
        shown(splits.test.len(), data.test_limit),
        a.phases,
        a.phase_epochs,
        a.final_epochs,
        a.total_epochs()
    );
    let epochs = a.total_epochs();
    let job = |method: &str, point: String, config: GrowConfig, work: Work| Job {
        method: method.into(),
        point,
        seed: a.seed,
        data: data.clone(),
        threads: a.sweep.threads(),
        backend: a.device.backend.name().into(),
        config,
        work,
    };
    let mut runs = Vec::new();
    for &family in families {
        let seed_name = family.name();
        let arch_of = |w: usize| {
            Arch::new(family, input, t.classes, vec![w; family.layers()])
                .map_err(anyhow::Error::from)
        };
        let seed_arch = arch_of(match family {
            Family::Vgg19 => 16,
            Family::MobilenetV1 => 32,
        })?;
        let mut fixed = vec![seed_arch.clone()];
        if family == Family::Vgg19 {
            for &w in &a.vgg_widths {
                fixed.push(arch_of(w)?);
            }
        }
        for arch in fixed {
            let w = arch.widths[0];
            runs.push((
                format!("{seed_name}-fixed-w{w}"),
                job(
                    "fixed",
                    format!("width {w}"),
                    a.train_config(),
                    Work::Fixed { arch, epochs },
                ),
            ));
        }
        let mut methods: Vec<Method> = a.lambdas.iter().map(|&l| Method::Gn(l)).collect();
        methods.push(Method::GnIndependent(a.lambdas[0]));
        methods.push(Method::Splitting(a.lambdas[0]));
        methods.push(Method::Random);
        methods.push(Method::Uniform);
        let first_gn = Method::Gn(a.lambdas[0]).id(seed_name);
        for method in &methods {
            let matched = matches!(method, Method::Random | Method::Uniform);
            let point = match method.lambda() {
                Some(l) => format!("lambda_p {l:e}"),
                None => format!("sized to {first_gn}"),
            };
            runs.push((
                method.id(seed_name),
                job(
                    method.name(),
                    point,
                    a.growth_config(method),
                    Work::Grow {
                        seed_arch: seed_arch.clone(),
                        retrain_epochs: epochs,
                        match_params_of: matched.then(|| first_gn.clone()),
                        matching: Matching::Fraction,
                    },
                ),
            ));
        }
    }
    Ok(runs)
}

/// The row of a finished run.
fn row(line: &ManifestLine, o: &Outcome) -> Row {
    let job = &line.job;
    let (family, epochs) = preset(job);
    Row {
        seed: family.name().into(),
        method: job.method.clone(),
        lambda_params: shows_lambda(&job.method).then_some(job.config.select.lambda_params),
        params: o.params,
        macs: o.macs,
        widths: o.widths.clone(),
        grown_test_accuracy: o.grown_test_accuracy,
        test_accuracy: o.test_accuracy,
        growth_seconds: o.growth_seconds,
        train_seconds: o.train_seconds,
        epochs,
    }
}

/// The seed preset a run grows from or trains, and its epochs from scratch.
fn preset(job: &Job) -> (Family, usize) {
    match &job.work {
        Work::Fixed { arch, epochs } => (arch.family, *epochs),
        Work::Grow {
            seed_arch,
            retrain_epochs,
            ..
        } => (seed_arch.family, *retrain_epochs),
    }
}

/// The sweep of a validated [`TableArgs`].
struct Table<'a> {
    args: &'a TableArgs,
    families: Vec<Family>,
}

impl Sweep for Table<'_> {
    const COMMAND: &'static str = "table";

    fn out(&self) -> &Path {
        &self.args.out
    }

    fn plan(&self) -> Result<Vec<(String, Job)>> {
        plan(self.args, &self.families)
    }

    /// The table and a plot per seed preset of the manifest (so `--collect`
    /// needs no sweep flags).
    fn collect(&self, manifest: &Manifest, done: &[Finished]) -> Result<String> {
        let out = &self.args.out;
        let rows: Vec<Row> = done.iter().map(|(line, o)| row(line, o)).collect();
        let (csv, md) = render(&rows)?;
        crate::weights::write_atomic(&out.join("table.csv"), csv.as_bytes())?;
        crate::weights::write_atomic(&out.join("table.md"), md.as_bytes())?;
        let mut families: Vec<Family> = Vec::new();
        for line in &manifest.lines {
            let (family, _) = preset(&line.job);
            if !families.contains(&family) {
                families.push(family);
            }
        }
        let dataset = manifest
            .lines
            .first()
            .map_or("", |l| l.job.data.dataset.as_str());
        for family in families {
            let seed_name = family.name();
            let series: Vec<(String, Vec<(f64, f64)>)> = rows
                .iter()
                .filter(|r| r.seed == seed_name)
                .map(|r| (label(r), vec![(r.params as f64, 100.0 * r.test_accuracy)]))
                .collect();
            accuracy_vs_params(
                &out.join(format!("accuracy-vs-params-{seed_name}.svg")),
                &format!("{seed_name} on {dataset}: retrained from scratch"),
                &series,
            )?;
        }
        print!("{md}");
        Ok(format!(
            "{}/table.{{csv,md}} and accuracy-vs-params-*.svg",
            out.display()
        ))
    }
}

pub fn run(args: &TableArgs) -> Result<()> {
    let families = args.validate()?;
    sweep::drive(&Table { args, families }, &args.sweep)
}
