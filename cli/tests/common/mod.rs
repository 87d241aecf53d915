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

/// Whether a test that needs a GPU adapter can run. Without one it prints what
/// to install and returns `false`, and the test returns early (passes), unless
/// `SPROUT_REQUIRE_GPU=1`, when it fails instead so that CI never skips silently.
pub fn gpu_available() -> bool {
    use std::io::Write;
    if sprout_gpu::adapter_available() {
        return true;
    }
    let msg = "no GPU adapter found: install Mesa's software Vulkan driver \
               (apt-get install mesa-vulkan-drivers libvulkan1) to run this test; skipping";
    if std::env::var("SPROUT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("{msg} is not allowed with SPROUT_REQUIRE_GPU=1");
    }
    // Straight to stderr: the test harness would hide `eprintln!` of a passing test.
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

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
