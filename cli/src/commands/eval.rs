//! `sprout eval`: test accuracy and loss of a run directory's model.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use sprout_core::backend::{Backend, BatchStats, CpuBackend};
use sprout_core::data::{Dataset, Normalization};
use sprout_core::train::Batches;

use crate::data::{self, DatasetName, Splits};
use crate::input::InputSpec;
use crate::weights::{load_input_spec, load_network};

/// Name of the Fashion-MNIST subset compiled into the binary.
pub const EMBEDDED: &str = "fashion-mnist-embedded";

/// Flags of `sprout eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Run directory holding model.safetensors (and config.json).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Dataset to test on [default: the one in DIR/config.json]: fashion-mnist-embedded,
    /// fashion-mnist, mnist, cifar10 or cifar100.
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<String>,
    /// Directory holding the dataset files [default: DIR/config.json's data_dir, then the dataset's default].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
}

/// Loads the dataset called `name` (`fashion-mnist-embedded` or a
/// [`DatasetName`]) from `dir` or its default location.
pub fn load_dataset(name: &str, dir: Option<&Path>) -> Result<Splits> {
    if name == EMBEDDED || name == "embedded" {
        return data::embedded();
    }
    let parsed = DatasetName::from_str(name, true).map_err(|_| {
        let known: Vec<String> = DatasetName::value_variants()
            .iter()
            .map(|d| d.as_str().to_string())
            .collect();
        anyhow!(
            "--dataset: unknown dataset '{name}' (expected {EMBEDDED}, {})",
            known.join(", ")
        )
    })?;
    data::load(parsed, dir)
}

/// What a run directory's config.json says about its data: the dataset name
/// and directory, if present. `Ok(None)` when there is no config.json.
pub fn run_dataset(run: &Path) -> Result<Option<(String, Option<PathBuf>)>> {
    let Some((path, config)) = run_config(run)? else {
        return Ok(None);
    };
    let name = match config.get("dataset") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => bail!("{}: \"dataset\" must be a string", path.display()),
        None => return Ok(None),
    };
    let dir = match config.get("data_dir") {
        Some(serde_json::Value::String(s)) => Some(PathBuf::from(s)),
        Some(serde_json::Value::Null) | None => None,
        Some(_) => bail!("{}: \"data_dir\" must be a string or null", path.display()),
    };
    Ok(Some((name, dir)))
}

/// How the network `model` of the run directory `run` takes its images: from
/// the model's metadata, else from the run's config.json; `Ok(None)` for a
/// run written before sprout recorded it.
pub fn recorded_input(run: &Path, model: &Path) -> Result<Option<InputSpec>> {
    if let Some(input) = load_input_spec(model)? {
        return Ok(Some(input));
    }
    match run_config(run)? {
        Some((path, config)) => InputSpec::from_config(&path, &config),
        None => Ok(None),
    }
}

/// The path and content of `run`'s config.json; `Ok(None)` when there is none.
fn run_config(run: &Path) -> Result<Option<(PathBuf, serde_json::Value)>> {
    let path = run.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let config = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
    Ok(Some((path, config)))
}

/// Loss and accuracy counts of `backend`'s loaded network on all of `ds`, in
/// batches of at most `batch` images (BN in eval mode, no augmentation):
/// `loss` is the mean over images, `correct` and `samples` the totals.
pub fn evaluate_counts(
    backend: &mut dyn Backend,
    ds: &Dataset,
    norm: &Normalization,
    batch: usize,
) -> Result<BatchStats> {
    if ds.is_empty() {
        bail!("cannot evaluate on an empty dataset");
    }
    if batch == 0 {
        bail!("--batch: must be at least 1");
    }
    let mut buffers = Batches::new(ds, batch.min(ds.len()));
    let s = sprout_core::train::evaluate(backend, ds, norm, &mut buffers)?;
    Ok(BatchStats {
        loss: s.loss,
        correct: s.correct,
        samples: s.samples,
    })
}

/// Mean loss and accuracy (in [0, 1]) of `backend`'s loaded network on `ds`;
/// see [`evaluate_counts`].
pub fn evaluate(
    backend: &mut dyn Backend,
    ds: &Dataset,
    norm: &Normalization,
    batch: usize,
) -> Result<(f32, f32)> {
    let s = evaluate_counts(backend, ds, norm, batch)?;
    Ok((s.loss, s.correct as f32 / s.samples as f32))
}

/// Checks that images of `ds` fit the network's input and its labels its classes.
fn check_fits(ds: &Dataset, name: &str, arch: &sprout_core::Arch, model: &Path) -> Result<()> {
    let [c, h, w] = arch.input;
    if [ds.channels, ds.height, ds.width] != arch.input {
        bail!(
            "{name} has {}x{}x{} images but the model in {} expects {c}x{h}x{w}",
            ds.channels,
            ds.height,
            ds.width,
            model.display()
        );
    }
    if ds.classes > arch.classes {
        bail!(
            "{name} has {} classes but the model in {} has {}",
            ds.classes,
            model.display(),
            arch.classes
        );
    }
    Ok(())
}

/// Test loss and accuracy counts of the model in `args.run`.
pub fn eval_run(args: &EvalArgs) -> Result<(String, BatchStats)> {
    if args.batch == 0 {
        bail!("--batch: must be at least 1");
    }
    let model = args.run.join("model.safetensors");
    let net = load_network(&model)?;
    let from_config = run_dataset(&args.run)?;
    let (name, dir) = match (&args.dataset, from_config) {
        (Some(name), cfg) => {
            // The config's data_dir only applies to the dataset it names.
            let cfg_dir = cfg.filter(|(n, _)| n == name).and_then(|(_, d)| d);
            (name.clone(), args.data.clone().or(cfg_dir))
        }
        (None, Some((name, dir))) => (name, args.data.clone().or(dir)),
        (None, None) => bail!(
            "{}: no dataset recorded (config.json missing or without \"dataset\"); pass --dataset NAME",
            args.run.display()
        ),
    };
    let splits = load_dataset(&name, dir.as_deref())?;
    check_fits(&splits.test, &splits.name, &net.arch, &model)?;
    // The statistics the network was trained with; runs written before
    // sprout recorded them used those of the whole training split.
    let norm = match recorded_input(&args.run, &model)? {
        Some(input) => {
            input
                .check_fits(&net.arch)
                .map_err(|e| anyhow!("{}: {e}", model.display()))?;
            input.normalization
        }
        None => Normalization::of(&splits.train),
    };
    // Batches beyond the test set would only hold empty buffers.
    let batch = args.batch.min(splits.test.len()).max(1);
    crate::memory::check(&net.arch, batch, &model.display().to_string(), "--batch")?;
    let mut backend = CpuBackend::new(batch);
    backend
        .load(&net, None)
        .with_context(|| model.display().to_string())?;
    let stats = evaluate_counts(&mut backend, &splits.test, &norm, batch)?;
    Ok((splits.name, stats))
}

/// Runs `sprout eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let (name, s) = eval_run(args)?;
    eprintln!(
        "evaluated {} on the {name} test set",
        args.run.join("model.safetensors").display()
    );
    println!(
        "test accuracy: {:.2}% ({}/{}), loss {:.4}",
        100.0 * s.correct as f64 / s.samples as f64,
        s.correct,
        s.samples,
        s.loss
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{save_network, write_atomic};
    use sprout_core::data::fill_batch;
    use sprout_core::rng::Rng;
    use sprout_core::{Arch, Network};
    use sprout_lab::scratch::TempDir;

    fn run_dir(dir: &Path, config: Option<&str>) {
        let net = Network::init(&Arch::vgg19(8, [1, 32, 32], 10).unwrap(), 5);
        save_network(&dir.join("model.safetensors"), &net, None, &[]).unwrap();
        if let Some(c) = config {
            write_atomic(&dir.join("config.json"), c.as_bytes()).unwrap();
        }
    }

    fn args(dir: &Path, dataset: Option<&str>, batch: usize) -> EvalArgs {
        EvalArgs {
            run: dir.to_path_buf(),
            dataset: dataset.map(str::to_string),
            data: None,
            batch,
        }
    }

    #[test]
    fn evaluates_a_run_directory() {
        let dir = TempDir::new("eval");
        run_dir(
            &dir.0,
            Some(r#"{"dataset": "fashion-mnist-embedded", "data_dir": null}"#),
        );
        let (name, s) = eval_run(&args(&dir.0, None, 256)).unwrap();
        assert_eq!(name, EMBEDDED);
        assert_eq!(s.samples, 1000);
        assert!(s.correct <= 1000);
        assert!(s.loss.is_finite() && s.loss > 0.0);
        // Eval-mode BN: the batch size changes nothing but rounding.
        let (_, s2) = eval_run(&args(&dir.0, None, 77)).unwrap();
        assert_eq!(s2.correct, s.correct);
        assert!(
            (s2.loss - s.loss).abs() < 1e-4 * s.loss.max(1.0),
            "{} vs {}",
            s2.loss,
            s.loss
        );
        run(&args(&dir.0, None, 500)).unwrap();
    }

    #[test]
    fn the_recorded_normalisation_is_used() {
        let dir = TempDir::new("eval");
        let splits = data::embedded().unwrap();
        // Statistics other than the training split's, as a --train-limit run records.
        let first = splits.train.subset(&(0..100).collect::<Vec<_>>());
        let norm = Normalization::of(&first);
        assert_ne!(norm, Normalization::of(&splits.train));
        let net = Network::init(&Arch::vgg19(8, [1, 32, 32], 10).unwrap(), 5);
        let input = splits.input_spec(norm.clone());
        save_network(&dir.0.join("model.safetensors"), &net, Some(&input), &[]).unwrap();
        let (_, s) = eval_run(&args(&dir.0, Some(EMBEDDED), 250)).unwrap();
        let mut backend = CpuBackend::new(250);
        backend.load(&net, None).unwrap();
        let want = evaluate_counts(&mut backend, &splits.test, &norm, 250).unwrap();
        assert_eq!((s.correct, s.samples), (want.correct, want.samples));
        assert_eq!(s.loss.to_bits(), want.loss.to_bits());
        // Without it in the model, config.json's is used.
        save_network(&dir.0.join("model.safetensors"), &net, None, &[]).unwrap();
        let config = serde_json::json!({"dataset": EMBEDDED});
        write_atomic(
            &dir.0.join("config.json"),
            &serde_json::to_vec(&input.describe(&config, Some(&net.arch))).unwrap(),
        )
        .unwrap();
        let (_, s2) = eval_run(&args(&dir.0, None, 250)).unwrap();
        assert_eq!(s2.loss.to_bits(), want.loss.to_bits());
    }

    #[test]
    fn evaluate_matches_one_big_batch() {
        let splits = data::embedded().unwrap();
        let ds = splits.test.subset(&(0..200).collect::<Vec<_>>());
        let norm = Normalization::of(&splits.train);
        let net = Network::init(&Arch::vgg19(8, [1, 32, 32], 10).unwrap(), 9);
        let mut backend = CpuBackend::new(200);
        backend.load(&net, None).unwrap();
        let (loss, acc) = evaluate(&mut backend, &ds, &norm, 64).unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let mut images = vec![0f32; 200 * ds.image_len()];
        let mut labels = vec![0u32; 200];
        let idx: Vec<usize> = (0..200).collect();
        fill_batch(
            &ds,
            &norm,
            &idx,
            None,
            &mut Rng::new(0),
            &mut images,
            &mut labels,
        );
        let whole = backend.eval_batch(&images, &labels, 200).unwrap();
        assert!(
            (whole.loss - loss).abs() < 1e-4 * loss.max(1.0),
            "{} vs {loss}",
            whole.loss
        );
        assert_eq!(whole.correct as f32 / 200.0, acc);
        assert!(evaluate(&mut backend, &ds, &norm, 0).is_err());
    }

    #[test]
    fn dataset_flag_and_errors() {
        let dir = TempDir::new("eval");
        run_dir(&dir.0, None);
        let m = eval_run(&args(&dir.0, None, 64)).unwrap_err().to_string();
        assert!(m.contains("--dataset"), "{m}");
        let (name, s) = eval_run(&args(&dir.0, Some("fashion-mnist-embedded"), 500)).unwrap();
        assert_eq!((name.as_str(), s.samples), (EMBEDDED, 1000));
        let m = eval_run(&args(&dir.0, Some("imagenet"), 64))
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with("--dataset: unknown dataset 'imagenet'"),
            "{m}"
        );
        let m = eval_run(&args(&dir.0, Some(EMBEDDED), 0))
            .unwrap_err()
            .to_string();
        assert!(m.contains("--batch"), "{m}");

        // A model for other images is refused with both shapes named.
        let other = TempDir::new("eval");
        let net = Network::init(&Arch::vgg19(4, [3, 32, 32], 10).unwrap(), 1);
        save_network(&other.0.join("model.safetensors"), &net, None, &[]).unwrap();
        let m = eval_run(&args(&other.0, Some(EMBEDDED), 64))
            .unwrap_err()
            .to_string();
        assert!(m.contains("1x32x32") && m.contains("3x32x32"), "{m}");

        // Broken config and missing model name their files.
        write_atomic(&dir.0.join("config.json"), b"{oops").unwrap();
        let m = eval_run(&args(&dir.0, None, 64)).unwrap_err().to_string();
        assert!(
            m.contains("config.json") && m.contains("invalid JSON"),
            "{m}"
        );
        let empty = TempDir::new("eval");
        let m = eval_run(&args(&empty.0, Some(EMBEDDED), 64))
            .unwrap_err()
            .to_string();
        assert!(m.contains("model.safetensors"), "{m}");
    }
}
