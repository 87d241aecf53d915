//! `sprout train`: train a fixed architecture and write a run directory.

use crate::commands::info::arch_from_flags;
use crate::data::{resolve, DatasetName};
use crate::device::DeviceArgs;
use crate::progress::bar;
use crate::run_dir::{set_threads, RunDir};
use crate::weights::save_network;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use sprout_core::data::{Augment, Normalization};
use sprout_core::optim::{Sgd, StepSchedule};
use sprout_core::rng::Rng;
use sprout_core::train::{evaluate, train_epoch, Batches};
use sprout_core::Network;
use std::path::PathBuf;
use std::time::Instant;

/// Flags shared by every command that trains: architecture, data, optimizer.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Architecture preset: vgg19 or mobilenet-v1.
    #[arg(long, default_value = "vgg19")]
    pub arch: String,
    /// Width of every growable layer (default: 16 for vgg19, 32 for mobilenet-v1).
    #[arg(long)]
    pub width: Option<usize>,
    /// Per-layer widths, comma-separated (overrides --width).
    #[arg(long)]
    pub widths: Option<String>,
    /// Architecture JSON (as written to arch.json by a run); overrides --arch/--width.
    #[arg(long)]
    pub arch_file: Option<PathBuf>,
    /// Dataset; without it, the embedded Fashion-MNIST subset (6,000 train / 1,000 test).
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    /// Directory holding the dataset files (default: where Debian installs them).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Initial learning rate (SGD, Nesterov momentum 0.9, weight decay 1e-4).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    /// Epochs at which the learning rate is multiplied by --lr-gamma, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Turn off random-crop and flip augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Run directory.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Write into --out even if it holds something other than a sprout train run.
    #[arg(long)]
    pub force: bool,
    /// Engine for the steps.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainArgs {
    /// Checks the optimizer flags and builds the schedule.
    pub fn schedule(&self) -> Result<StepSchedule> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be zero or positive, got {}",
                self.weight_decay
            );
        }
        if !(self.lr_gamma.is_finite() && self.lr_gamma > 0.0) {
            bail!("--lr-gamma must be positive, got {}", self.lr_gamma);
        }
        if self.batch == 0 || self.batch > 4096 {
            bail!("--batch must be between 1 and 4096, got {}", self.batch);
        }
        Ok(StepSchedule {
            base: self.lr,
            milestones: self.milestones.clone(),
            gamma: self.lr_gamma,
        })
    }

    pub fn augment(&self) -> Option<Augment> {
        (!self.no_augment).then(Augment::default)
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    set_threads(args.threads)?;
    let schedule = args.schedule()?;
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let splits = resolve(args.dataset, args.data.as_deref())?;
    let t = &splits.train;
    let input = format!("{}x{}x{}", t.channels, t.height, t.width);
    let arch = arch_from_flags(
        &args.arch,
        args.width,
        args.widths.as_deref(),
        &input,
        t.classes,
        args.arch_file.as_deref(),
    )?;
    check_arch_fits(&arch, t, args.arch_file.as_deref())?;
    crate::memory::check(&arch, args.batch, &arch_flag(args), "--batch")?;
    // Everything is checked (the backend opens) before the directory is touched.
    let mut backend = args.device.open(args.batch)?;
    let norm = Normalization::of(&splits.train);
    let input = splits.input_spec(norm.clone());
    let (run, _lock) = RunDir::claim(&args.out, "train", args.force)?;
    let config = json!({
        "command": "train",
        "dataset": splits.name,
        "data_dir": args.data,
        "arch": arch.family.name(),
        "widths": arch.widths,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "milestones": args.milestones,
        "lr_gamma": args.lr_gamma,
        "seed": args.seed,
        "augment": !args.no_augment,
    });
    run.write_json("config.json", &input.describe(&config, Some(&arch)))?;
    run.write_json("arch.json", &arch)?;
    let _ = std::fs::remove_file(run.file("metrics.jsonl"));
    println!(
        "training {} on {} ({} train / {} test images): {} parameters, {} MACs",
        arch.family.name(),
        splits.name,
        splits.train.len(),
        splits.test.len(),
        arch.params(),
        arch.macs()
    );
    let net = Network::init(&arch, args.seed);
    backend.load(&net, None)?;
    let augment = args.augment();
    let mut rng = Rng::new(args.seed ^ 0x5eed_da7a);
    let mut buffers = Batches::new(&splits.train, args.batch);
    let mut eval_buffers = Batches::new(&splits.test, args.batch);
    for epoch in 0..args.epochs {
        let sgd = Sgd {
            weight_decay: args.weight_decay,
            ..Sgd::paper(schedule.lr_at(epoch))
        };
        let pb = bar(
            splits.train.len().div_ceil(args.batch) as u64,
            &format!("epoch {}/{}", epoch + 1, args.epochs),
        );
        let start = Instant::now();
        let stats = train_epoch(
            backend.as_mut(),
            &splits.train,
            &norm,
            &mut buffers,
            augment.as_ref(),
            &sgd,
            &mut rng,
            &mut |done, _, s| {
                pb.set_position(done as u64);
                pb.set_message(format!("loss {:.4}", s.loss));
            },
        )
        .with_context(|| format!("epoch {}", epoch + 1))?;
        let secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let test = evaluate(backend.as_mut(), &splits.test, &norm, &mut eval_buffers)?;
        let ips = stats.samples as f64 / secs;
        println!(
            "epoch {:>3}/{}  loss {:.4}  train {:6.2}%  test {:6.2}%  {:7.0} img/s",
            epoch + 1,
            args.epochs,
            stats.loss,
            100.0 * stats.accuracy,
            100.0 * test.accuracy,
            ips
        );
        run.append_jsonl(
            "metrics.jsonl",
            &json!({
                "epoch": epoch + 1,
                "lr": sgd.lr,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "test_loss": test.loss,
                "test_accuracy": test.accuracy,
                "images_per_s": ips,
                "seconds": secs,
            }),
        )?;
        save_network(
            &run.file("model.safetensors"),
            &backend.network()?,
            Some(&input),
            &[("epoch", (epoch + 1).to_string())],
        )?;
    }
    println!("wrote {}", run.path.display());
    Ok(())
}

/// The flag that chose the architecture, for messages.
fn arch_flag(args: &TrainArgs) -> String {
    match (&args.arch_file, &args.widths, args.width) {
        (Some(p), _, _) => format!("--arch-file {}", p.display()),
        (None, Some(w), _) => format!("--widths {w}"),
        (None, None, Some(w)) => format!("--width {w}"),
        (None, None, None) => format!("--arch {}", args.arch),
    }
}

/// Refuses an architecture whose input is not the data's image shape or
/// that has fewer classes than the data (an --arch-file written for other data).
pub(crate) fn check_arch_fits(
    arch: &sprout_core::Arch,
    data: &sprout_core::data::Dataset,
    arch_file: Option<&std::path::Path>,
) -> Result<()> {
    let what = arch_file.map_or("the architecture".to_string(), |p| p.display().to_string());
    let [c, h, w] = arch.input;
    if [data.channels, data.height, data.width] != arch.input {
        bail!(
            "{what} takes {c}x{h}x{w} images but the data has {}x{}x{}",
            data.channels,
            data.height,
            data.width
        );
    }
    if arch.classes < data.classes {
        bail!(
            "{what} has {} classes but the data has {}",
            arch.classes,
            data.classes
        );
    }
    Ok(())
}
