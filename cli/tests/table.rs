//! End-to-end test of `sprout table` on the embedded data at toy scale: every
//! row is there with the parameter count of its run's architecture, random
//! and uniform growth match the first Gauss-Newton run's size as their rule
//! allows, and a second invocation reuses the finished runs.

mod common;

use common::{ok, sprout};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    common::tmp("table", name)
}

fn table(out: &Path) -> String {
    let o = sprout()
        .args([
            "table",
            "--archs",
            "vgg19",
            "--vgg-widths",
            "8",
            "--lambdas",
            "3e-7,1e-6",
            "--phases",
            "2",
            "--phase-epochs",
            "1",
            "--final-epochs",
            "1",
            "--train-limit",
            "384",
            "--test-limit",
            "128",
            "--threads",
            "2",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    ok(o)
}

fn widths(run: &Path) -> Vec<usize> {
    let arch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("arch.json")).unwrap()).unwrap();
    arch["widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn table_has_every_row_and_reuses_finished_runs() {
    let out = tmp("rows");
    table(&out);
    let csv = std::fs::read_to_string(out.join("table.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let methods: Vec<(&str, &str)> = rows.iter().map(|r| (r[1], r[2])).collect();
    assert_eq!(
        methods,
        [
            ("fixed", ""),
            ("fixed", ""),
            ("gn", "3e-7"),
            ("gn", "1e-6"),
            ("gn-independent", "3e-7"),
            ("splitting", "3e-7"),
            ("random", ""),
            ("uniform", ""),
        ]
    );
    for r in &rows {
        assert_eq!(r[0], "vgg19");
        let err: f64 = r[6].parse().unwrap();
        assert!((0.0..=100.0).contains(&err), "test error {err}");
        assert_eq!(r[9], "3", "every architecture gets the 2 x 1 + 1 epochs");
    }
    // The growth rows report the parameters of the architecture their run ended with.
    let runs = out.join("runs");
    for (dir, row) in [
        ("vgg19-gn-3e-7", 2),
        ("vgg19-splitting-3e-7", 5),
        ("vgg19-uniform", 7),
    ] {
        let w = widths(&runs.join(dir));
        let arch = sprout_core::Arch::new(sprout_core::Family::Vgg19, [1, 32, 32], 10, w).unwrap();
        assert_eq!(rows[row][3], arch.params().to_string(), "{dir}");
    }
    // Uniform widening keeps the seed's equal widths; random adds as many
    // channels, anywhere.
    let uniform = widths(&runs.join("vgg19-uniform"));
    assert!(
        uniform.iter().all(|&w| w == uniform[0] && w > 16),
        "{uniform:?}"
    );
    let random = widths(&runs.join("vgg19-random"));
    // (Per phase the same number; the second phase's budgets round on
    // different widths, at most one channel per layer apart.)
    let (r, u) = (random.iter().sum::<usize>(), uniform.iter().sum::<usize>());
    assert!(
        r.abs_diff(u) <= random.len(),
        "random {r} vs uniform {u} channels"
    );
    assert_ne!(random, uniform, "random growth widened every layer alike");
    assert!(out.join("table.md").exists());
    let svg = std::fs::read_to_string(out.join("accuracy-vs-params-vgg19.svg")).unwrap();
    assert!(
        svg.matches("<circle").count() >= rows.len(),
        "one marker per run"
    );

    // Finished runs are reused, and the table comes out the same.
    let again = table(&out);
    assert_eq!(again.matches("done before").count(), rows.len(), "{again}");
    assert_eq!(std::fs::read_to_string(out.join("table.csv")).unwrap(), csv);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_table_flags_fail_clearly() {
    for (flags, needle) in [
        (vec!["--lambdas=-1"], "--lambdas"),
        (vec!["--archs", "resnet"], "--archs"),
        (vec!["--phases", "0"], "--phases"),
    ] {
        let out = tmp("bad");
        let o = sprout()
            .arg("table")
            .args(&flags)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flags:?} should fail");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains(needle) && !e.contains("panicked"),
            "{flags:?}: {e}"
        );
        assert!(!out.join("runs").exists(), "{flags:?} started runs");
    }
}
