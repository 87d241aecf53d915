//! Helpers the command-line tests share: the binary, scratch directories and
//! the outcome of a run.

#![allow(dead_code)]

use std::path::PathBuf;
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
