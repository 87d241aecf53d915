//! End-to-end tests of `sprout grow` on the embedded data: growth happens, a
//! run killed mid-phase resumes to the same weights, and bad flags fail
//! clearly without touching an existing run.

mod common;

use common::{err, ok, sprout};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    common::tmp("grow", name)
}
use std::time::{Duration, Instant};

/// A small, fast growth run: 640 training images, phases of 1 epoch each.
fn small_run(out: &Path, phases: usize) -> Command {
    let mut c = sprout();
    c.args([
        "grow",
        "--train-limit",
        "640",
        "--test-limit",
        "200",
        "--phase-epochs",
        "1",
    ]);
    c.arg("--phases").arg(phases.to_string());
    c.args(["--threads", "2", "--seed", "3", "--width", "8", "--out"])
        .arg(out);
    c
}

fn phase_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn killed_run_resumes_to_identical_weights() {
    let a = tmp("uninterrupted");
    let text = ok(small_run(&a, 3).output().unwrap());
    assert!(text.contains("phase  3"), "{text}");
    let arch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("arch.json")).unwrap()).unwrap();
    let widths: Vec<usize> = serde_json::from_value(arch["widths"].clone()).unwrap();
    assert_ne!(widths, vec![8; 16], "the seed did not change");
    for f in [
        "architecture.svg",
        "accuracy-vs-params.svg",
        "morphisms.jsonl",
        "arch-phase-03.json",
        "final.json",
    ] {
        assert!(a.join(f).exists(), "missing {f}");
    }

    // Kill a second run with SIGKILL once it is inside phase 2, then resume it.
    let b = tmp("killed");
    let mut child = small_run(&b, 3)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let state = b.join("checkpoint").join("state.json");
    while !state.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(
        st["phase"].as_u64().unwrap() < 3,
        "the run finished before it was killed"
    );
    let mut resume = sprout();
    resume.args(["grow", "--threads", "2", "--resume"]).arg(&b);
    let text = ok(resume.output().unwrap());
    assert!(text.contains("resuming"), "{text}");

    // Same architecture and bit-identical tensors (the files' bytes may differ:
    // safetensors writes its metadata map in process-dependent order).
    let wa = sprout::weights::load_network(&a.join("model.safetensors")).unwrap();
    let wb = sprout::weights::load_network(&b.join("model.safetensors")).unwrap();
    assert_eq!(wa.arch, wb.arch);
    for (x, y) in wa.tensors.iter().zip(&wb.tensors) {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "resumed weights differ from the uninterrupted run"
        );
    }
    assert_eq!(phase_lines(&a), phase_lines(&b));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn bad_flags_fail_clearly() {
    let out = tmp("bad");
    for (flags, needle) in [
        (vec!["--lambda-params=-1"], "lambda-params"),
        (vec!["--lambda-params", "NaN"], "lambda-params"),
        (vec!["--grow-fraction", "0"], "grow-fraction"),
        (vec!["--grow-fraction", "1.5"], "grow-fraction"),
        (vec!["--phases", "0"], "phases"),
        (vec!["--arch", "resnet"], "resnet"),
    ] {
        let mut c = sprout();
        c.arg("grow").args(&flags).arg("--out").arg(&out);
        let e = err(c.output().unwrap());
        assert!(e.contains(needle), "{flags:?}: {e}");
        assert!(!e.contains("panicked"), "{flags:?}: {e}");
    }
    assert!(!out.join("checkpoint").exists());
}

#[test]
fn zero_epoch_counts_name_their_own_flag() {
    let out = tmp("zero-epochs");
    for (flag, value, needle) in [
        (
            "--morph-epochs",
            "0",
            "--morph-epochs must be at least 1, got 0",
        ),
        (
            "--phase-epochs",
            "0",
            "--phase-epochs must be at least 1, got 0",
        ),
        ("--ema-alpha", "2", "--ema-alpha must be in (0, 1], got 2"),
    ] {
        let e = err(sprout()
            .args(["grow", flag, value, "--out"])
            .arg(&out)
            .output()
            .unwrap());
        assert_eq!(e.trim().lines().count(), 1, "{flag}: {e}");
        assert_eq!(e.trim(), format!("error: {needle}"), "{flag}");
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

#[test]
fn resume_refuses_missing_foreign_and_half_written_runs() {
    let missing = tmp("missing");
    let e = err(sprout()
        .args(["grow", "--resume"])
        .arg(&missing)
        .output()
        .unwrap());
    assert!(e.contains("config.json"), "{e}");

    // A run directory with a configuration but no checkpoint yet (killed in phase 1).
    let half = tmp("half");
    std::fs::create_dir_all(&half).unwrap();
    ok(small_run(&half, 1).output().unwrap());
    let _ = std::fs::remove_dir_all(half.join("checkpoint"));
    let e = err(sprout()
        .args(["grow", "--threads", "2", "--resume"])
        .arg(&half)
        .output()
        .unwrap());
    assert!(e.contains("no checkpoint"), "{e}");

    // Flags that contradict the stored configuration.
    let e = err(sprout()
        .args(["grow", "--phases", "7", "--resume"])
        .arg(&half)
        .output()
        .unwrap());
    assert!(e.contains("differ"), "{e}");
    // A finished run is not overwritten by a fresh one in the same directory.
    let _ = std::fs::remove_dir_all(&half);
}

fn widths_of(dir: &Path) -> Vec<usize> {
    let arch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("arch.json")).unwrap()).unwrap();
    serde_json::from_value(arch["widths"].clone()).unwrap()
}

#[test]
fn uniform_strategy_keeps_width_ratios_and_random_spreads_the_same_total() {
    let u = tmp("uniform");
    let mut c = small_run(&u, 2);
    c.args(["--strategy", "uniform"]);
    ok(c.output().unwrap());
    // 8 -> 8 + floor(0.3 * 8) = 10 -> 10 + 3 = 13 in every layer.
    assert_eq!(widths_of(&u), vec![13; 16]);

    let r = tmp("random");
    let mut c = small_run(&r, 2);
    c.args(["--strategy", "random"]);
    ok(c.output().unwrap());
    // Each phase adds the sum of the per-layer budgets floor(0.3 * width),
    // spread over channels drawn from all layers.
    let budget = |w: &[usize]| w.iter().map(|&x| (3 * x / 10).max(1)).sum::<usize>();
    let after1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.join("arch-phase-01.json")).unwrap()).unwrap();
    let w1: Vec<usize> = serde_json::from_value(after1["widths"].clone()).unwrap();
    assert_eq!(w1.iter().sum::<usize>(), 8 * 16 + budget(&[8; 16]));
    assert!(
        w1.iter().any(|&x| x != 10),
        "random growth spread evenly: {w1:?}"
    );
    let w2 = widths_of(&r);
    assert_eq!(
        w2.iter().sum::<usize>(),
        w1.iter().sum::<usize>() + budget(&w1)
    );
    let _ = std::fs::remove_dir_all(&u);
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn splitting_strategy_splits_the_most_negative_eigenvalues() {
    let s = tmp("splitting");
    let mut c = small_run(&s, 1);
    c.args(["--strategy", "splitting", "--lambda-params", "0"]);
    ok(c.output().unwrap());
    let cands: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.join("candidates-phase-01.json")).unwrap())
            .unwrap();
    let applied: Vec<serde_json::Value> = std::fs::read_to_string(s.join("morphisms.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!applied.is_empty(), "no splits applied");
    assert!(
        applied.iter().all(|m| m["kind"] == "split"),
        "splitting never prunes"
    );
    for layer in 0..16u64 {
        // Estimated change eps^2/2 * lambda_min: the most negative eigenvalues first.
        let mut mine: Vec<(f64, u64)> = cands["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["layer"] == layer)
            .map(|k| {
                (
                    k["delta_loss"].as_f64().unwrap(),
                    k["channel"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(!mine.is_empty());
        mine.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut want: Vec<u64> = mine
            .iter()
            .take_while(|k| k.0 < 0.0)
            .take(2)
            .map(|k| k.1)
            .collect();
        want.sort_unstable();
        let mut got: Vec<u64> = applied
            .iter()
            .filter(|m| m["layer"] == layer)
            .map(|m| m["channel"].as_u64().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(
            got, want,
            "layer {layer}: applied {got:?}, most negative {mine:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn diverging_loss_stops_with_a_message_and_no_checkpoint() {
    let d = tmp("diverge");
    let mut c = small_run(&d, 2);
    c.args(["--lr", "1e30"]);
    let e = err(c.output().unwrap());
    assert!(e.contains("diverged") && e.contains("checkpoint"), "{e}");
    assert!(
        !d.join("checkpoint").exists(),
        "a diverged phase must not be checkpointed"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Number of moments at which [`killed_at_many_moments_resumes_to_identical_weights`]
/// kills a run.
const KILL_POINTS: usize = 5;

/// Whether `dir` holds a checkpoint a resume can start from.
fn has_checkpoint(dir: &Path) -> bool {
    ["checkpoint", "checkpoint.tmp", "checkpoint.old"]
        .iter()
        .any(|c| dir.join(c).join("state.json").is_file())
}

/// The phase of `dir`'s current checkpoint, if it has one.
fn checkpoint_phase(dir: &Path) -> Option<u64> {
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint/state.json")).ok()?).ok()?;
    st["phase"].as_u64()
}

#[test]
fn killed_at_many_moments_resumes_to_identical_weights() {
    // A tiny run: 2 phases of 1 epoch on 320 images.
    let tiny = |out: &Path| {
        let mut c = sprout();
        c.args([
            "grow",
            "--train-limit",
            "320",
            "--test-limit",
            "100",
            "--phases",
            "2",
            "--phase-epochs",
            "1",
            "--width",
            "4",
            "--threads",
            "2",
            "--seed",
            "5",
            "--out",
        ])
        .arg(out);
        c
    };
    let a = tmp("kill-points-whole");
    ok(tiny(&a).output().unwrap());

    // Each kill waits for a point of the run (so the moments spread over it
    // whatever the machine's speed), then a seeded delay of 0-255 ms:
    // phase 1's training, the first checkpoint being written, phase 2, the
    // log of phase 2 before its checkpoint, final.json before the finished
    // checkpoint. A point an attempt never reaches lets it finish.
    let b = tmp("kill-points-killed");
    type Point = fn(&Path) -> bool;
    let points: [(Point, bool); KILL_POINTS] = [
        (|_| true, true),
        (|d| d.join("checkpoint.tmp").exists(), false),
        (|d| checkpoint_phase(d) == Some(1), true),
        (|d| d.join("arch-phase-02.json").exists(), false),
        (|d| d.join("final.json").exists(), false),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    for (reached, delayed) in points {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut c = if has_checkpoint(&b) {
            let mut r = sprout();
            r.args(["grow", "--threads", "2", "--resume"]).arg(&b);
            r
        } else {
            tiny(&b)
        };
        let mut child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !reached(&b) && child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(120), "run stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        if delayed {
            std::thread::sleep(Duration::from_millis(seed % 256));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 3,
        "only {kills} of the {KILL_POINTS} kill points were reached"
    );
    let mut finish = if has_checkpoint(&b) {
        let mut r = sprout();
        r.args(["grow", "--threads", "2", "--resume"]).arg(&b);
        r
    } else {
        tiny(&b)
    };
    ok(finish.output().unwrap());

    let wa = sprout::weights::load_network(&a.join("model.safetensors")).unwrap();
    let wb = sprout::weights::load_network(&b.join("model.safetensors")).unwrap();
    assert_eq!(wa.arch, wb.arch);
    for (x, y) in wa.tensors.iter().zip(&wb.tensors) {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "weights after {kills} kills differ from the uninterrupted run"
        );
    }
    let fin = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("final.json")).unwrap()).unwrap()
    };
    assert_eq!(fin(&a), fin(&b));
    assert_eq!(phase_lines(&a), phase_lines(&b));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
