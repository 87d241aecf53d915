//! The GPU backend from the command line: adapters are listed, a tiny growth
//! run on the GPU completes and selects the same morphisms as on the CPU,
//! and bad device flags fail clearly.

mod common;

use common::{err, gpu_available, ok, sprout};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    common::tmp("gpu", name)
}

#[test]
fn devices_lists_the_adapters() {
    if !gpu_available() {
        return;
    }
    let text = ok(sprout().arg("devices").output().unwrap());
    let mut lines = text.lines();
    assert!(lines.next().unwrap_or("").starts_with("name"), "{text}");
    let first = lines.next().unwrap_or("");
    assert!(
        ["Vulkan", "Metal", "Dx12"]
            .iter()
            .any(|b| first.contains(b)),
        "no adapter listed:\n{text}"
    );
}

/// One phase of growth on 64 images at width 4.
fn tiny_grow(out: &Path, backend: &str) -> Command {
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
        "--final-epochs",
        "0",
        "--batch",
        "32",
        "--width",
        "4",
        "--seed",
        "3",
        "--threads",
        "2",
        "--backend",
        backend,
        "--out",
    ])
    .arg(out);
    c
}

/// `(kind, layer, channel)` of every applied morphism.
fn selection(dir: &Path) -> Vec<(String, u64, u64)> {
    std::fs::read_to_string(dir.join("morphisms.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].as_str().unwrap().to_string(),
                v["layer"].as_u64().unwrap(),
                v["channel"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn grow_on_the_gpu_selects_what_the_cpu_selects() {
    if !gpu_available() {
        return;
    }
    let (g, c) = (tmp("gpu"), tmp("cpu"));
    let text = ok(tiny_grow(&g, "gpu").output().unwrap());
    assert!(text.contains("phase  1"), "{text}");
    ok(tiny_grow(&c, "cpu").output().unwrap());
    let (sg, sc) = (selection(&g), selection(&c));
    assert!(!sg.is_empty(), "no morphism was applied");
    assert_eq!(sg, sc);
    let arch = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("arch.json")).unwrap()).unwrap()
    };
    assert_eq!(arch(&g)["widths"], arch(&c)["widths"]);
    let _ = std::fs::remove_dir_all(&g);
    let _ = std::fs::remove_dir_all(&c);
}

#[test]
fn bad_device_flags_fail_clearly() {
    let out = tmp("flags");
    let e = err(sprout()
        .args(["train", "--epochs", "1", "--adapter", "anything", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    assert!(e.contains("--adapter anything needs --backend gpu"), "{e}");
    if !gpu_available() {
        return;
    }
    let e = err(sprout()
        .args([
            "train",
            "--epochs",
            "1",
            "--backend",
            "gpu",
            "--adapter",
            "no-such-device",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert!(e.contains("no GPU adapter matches 'no-such-device'"), "{e}");
    let e = err(sprout()
        .args([
            "grow",
            "--strategy",
            "splitting",
            "--backend",
            "gpu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert!(
        e.contains("splitting is not supported on the gpu backend"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
