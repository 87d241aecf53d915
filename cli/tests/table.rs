//! End-to-end test of `sprout table` on the embedded data at toy scale: every
//! row is there with the parameter count of its run's architecture, random
//! and uniform growth match the first Gauss-Newton run's size as their rule
//! allows, a second invocation reuses the finished runs, and planning,
//! running every manifest line with `run-job` and collecting gives the
//! table of one process.

mod common;

use common::{comparable, err, ok, run_every_line, run_job_error, sprout};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tmp(name: &str) -> PathBuf {
    common::tmp("table", name)
}

/// The sweep: the VGG-19 seed, one fixed width beside it, two lambda_p,
/// one phase of one epoch and a final epoch on 256 images, one thread per
/// run (8 runs).
const SWEEP: &[&str] = &[
    "--archs",
    "vgg19",
    "--vgg-widths",
    "8",
    "--lambdas",
    "3e-7,1e-6",
    "--phases",
    "1",
    "--phase-epochs",
    "1",
    "--final-epochs",
    "1",
    "--train-limit",
    "256",
    "--test-limit",
    "64",
    "--threads-per-run",
    "1",
];

fn table(out: &Path, step: &[&str]) -> String {
    ok(sprout()
        .arg("table")
        .args(SWEEP)
        .args(step)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap())
}

/// The table run in one process (once for the tests that read it).
fn one_process() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tmp("one");
        let log = table(&out, &["--jobs", "1"]);
        assert!(log.contains("planned 8 runs"), "{log}");
        assert!(log.contains("all 8 runs finished"), "{log}");
        out
    })
}

/// `table.md` without its wall-time columns (the last two).
fn md_without_times(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            cells[..cells.len() - 3].join("|")
        })
        .collect()
}

fn widths(run: &Path) -> Vec<usize> {
    let arch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("grow/arch.json")).unwrap()).unwrap();
    arch["widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn table_has_every_row_and_reuses_finished_runs() {
    let out = one_process();
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
        assert_eq!(r[9], "2", "every architecture gets the 1 x 1 + 1 epochs");
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
    // (Per phase the same number; later phases' budgets would round on
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
    let again = table(out, &["--jobs", "1"]);
    assert!(
        again.contains("0 of 8 runs to do (8 finished before)"),
        "{again}"
    );
    assert_eq!(std::fs::read_to_string(out.join("table.csv")).unwrap(), csv);
}

#[test]
fn sweep_runs_describe_their_networks() {
    let runs = one_process().join("runs");
    // A fixed run's model and a growth run's retrained network, beside the
    // growth run's own directory.
    let fixed = runs.join("vgg19-fixed-w8");
    common::assert_described(&fixed, &fixed.join("model.safetensors"));
    let gn = runs.join("vgg19-gn-3e-7");
    common::assert_described(&gn, &gn.join("retrained.safetensors"));
    common::assert_described(&gn.join("grow"), &gn.join("grow/model.safetensors"));
    let eval = ok(sprout()
        .args(["eval", "--run"])
        .arg(&fixed)
        .output()
        .unwrap());
    assert!(eval.contains("test accuracy"), "{eval}");
}

#[test]
fn plan_run_job_and_collect_give_the_one_process_table() {
    let split = tmp("split");
    let plan = table(&split, &["--plan"]);
    assert!(plan.contains("planned 8 runs"), "{plan}");
    let manifest = split.join("manifest.jsonl");
    let first = std::fs::read(&manifest).unwrap();
    table(&split, &["--plan"]);
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        first,
        "planning twice differs"
    );
    let partial = table(&split, &["--collect"]);
    assert!(
        partial.contains("0 of 8 runs finished; not yet:"),
        "{partial}"
    );
    run_every_line(&manifest, 8);
    let collected = table(&split, &["--collect"]);
    assert!(collected.contains("all 8 runs finished"), "{collected}");
    let one = one_process();
    assert_eq!(
        comparable(&split.join("table.csv")),
        comparable(&one.join("table.csv")),
        "plan / run-job / collect differs from one process"
    );
    assert_eq!(
        md_without_times(&split.join("table.md")),
        md_without_times(&one.join("table.md"))
    );

    // An index out of range and a line that does not parse: one line
    // naming the file (and the line).
    let e = run_job_error(&manifest, 8);
    assert!(
        e.contains("--index 8") && e.contains("manifest.jsonl has 8 runs"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let bad = tmp("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let text = String::from_utf8(first).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"format\": \"sprout-sweep-1\", \"index\": 2";
    std::fs::write(bad.join("manifest.jsonl"), lines.join("\n") + "\n").unwrap();
    let e = err(sprout()
        .arg("table")
        .args(SWEEP)
        .args(["--collect", "--out"])
        .arg(&bad)
        .output()
        .unwrap());
    assert!(e.contains("manifest.jsonl:3: not JSON"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = run_job_error(&bad.join("manifest.jsonl"), 0);
    assert!(e.contains("manifest.jsonl:3: not JSON"), "{e}");
    assert!(!bad.join("runs").exists(), "a bad manifest started a run");
    let _ = std::fs::remove_dir_all(&split);
    let _ = std::fs::remove_dir_all(&bad);
}

#[test]
fn bad_table_flags_fail_clearly() {
    for (flags, needle) in [
        (vec!["--lambdas=-1"], "--lambdas"),
        (vec!["--archs", "resnet"], "--archs"),
        (vec!["--phases", "0"], "--phases"),
        (vec!["--jobs", "0"], "--jobs"),
        (vec!["--threads-per-run", "0"], "--threads-per-run"),
        (vec!["--plan", "--collect"], "separate steps"),
    ] {
        let out = tmp("bad-flags");
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
        assert_eq!(e.trim().lines().count(), 1, "{flags:?}: {e}");
        assert!(!out.join("runs").exists(), "{flags:?} started runs");
        assert!(!out.join("manifest.jsonl").exists(), "{flags:?} planned");
    }
}
