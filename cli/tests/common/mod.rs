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
