//! Helpers the command-line tests share: the binary, scratch directories and
//! the outcome of a run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sprout` binary (headless Vulkan drivers want a runtime directory).
pub fn sprout() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sprout"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// Whether a test that needs a GPU adapter can run (see
/// [`sprout_gpu::adapter_or_skip`]).
#[allow(unused_imports)]
pub use sprout_gpu::adapter_or_skip as gpu_available;

/// A fresh scratch directory named for the test file (`suite`) and case.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sprout-{suite}-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Stdout and stderr of a run that must have succeeded.
pub fn ok(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sprout failed:\n{text}");
    text
}

/// Stderr of a run that must have failed.
pub fn err(out: Output) -> String {
    assert!(!out.status.success(), "sprout should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A sweep's CSV without its wall-time columns (headers ending in `seconds`).
pub fn comparable(csv: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !header[i].ends_with("seconds"))
        .collect();
    std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(lines.map(|l| l.split(',').map(String::from).collect()))
        .map(|row| keep.iter().map(|&i| row[i].clone()).collect())
        .collect()
}

/// Runs lines `0..runs` of a sweep's manifest, one `sprout run-job` each.
pub fn run_every_line(manifest: &Path, runs: usize) {
    for i in 0..runs {
        ok(sprout()
            .args(["run-job", "--manifest"])
            .arg(manifest)
            .args(["--index", &i.to_string()])
            .output()
            .unwrap());
    }
}

/// Stderr of `sprout run-job` on line `index` of `manifest`, which must fail.
pub fn run_job_error(manifest: &Path, index: usize) -> String {
    err(sprout()
        .args(["run-job", "--manifest"])
        .arg(manifest)
        .args(["--index", &index.to_string()])
        .output()
        .unwrap())
}

/// Checks that `run`'s config.json and the network file `model` describe
/// the network's input (dataset, class names, padding, normalisation) alike,
/// that config.json's architecture is the model's, and that the embedded
/// Fashion-MNIST's 28x28 images are recorded as padded by 2 on each side.
/// Returns the description.
pub fn assert_described(run: &Path, model: &Path) -> sprout::input::InputSpec {
    let path = run.join("config.json");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let from_config = sprout::input::InputSpec::from_config(&path, &config)
        .unwrap()
        .unwrap_or_else(|| panic!("{}: no input description", path.display()));
    let from_model = sprout::weights::load_input_spec(model)
        .unwrap()
        .unwrap_or_else(|| panic!("{}: no input description", model.display()));
    assert_eq!(from_config, from_model);
    let net = sprout::weights::load_network(model).unwrap();
    let arch: sprout_core::Arch = serde_json::from_value(config["architecture"].clone()).unwrap();
    assert_eq!(arch, net.arch, "{}: architecture", path.display());
    from_model.check_fits(&net.arch).unwrap();
    let p = from_model.padding;
    if from_model.dataset == "fashion-mnist-embedded" {
        assert_eq!(p.source, [1, 28, 28]);
        assert_eq!((p.top, p.bottom, p.left, p.right), (2, 2, 2, 2));
        assert_eq!(from_model.class_names.len(), 10);
        assert_eq!(from_model.class_names[0], "T-shirt/top");
    }
    let n = &from_model.normalization;
    assert_eq!((n.mean.len(), n.std.len()), (1, 1));
    assert!(n.mean[0] > 0.0 && n.mean[0] < 1.0 && n.std[0] > 0.0);
    from_model
}

/// A tiny growth run on the embedded data: one phase of one epoch on 64
/// images at width 2.
pub fn tiny_grow(out: &Path) -> Command {
    let mut c = sprout();
    c.args([
        "grow",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--phases",
        "1",
        "--phase-epochs",
        "1",
        "--width",
        "2",
        "--batch",
        "32",
        "--threads",
        "2",
        "--out",
    ])
    .arg(out);
    c
}

/// `sprout grow --resume dir` with 2 threads.
pub fn resume(dir: &Path) -> Command {
    let mut c = sprout();
    c.args(["grow", "--threads", "2", "--resume"]).arg(dir);
    c
}
