//! `sprout pareto` end to end on a CI-sized sweep, its plan / run-job /
//! collect split, and the bad inputs of a sweep.

mod common;

use common::{comparable, err, ok, run_every_line, run_job_error, sprout, tmp};

#[test]
fn tiny_sweep_gives_every_method_a_point_and_the_split_form_the_same_table() {
    let one = tmp("pareto", "one");
    let out = ok(sprout()
        .args(["pareto", "--tiny", "--jobs", "1", "--out"])
        .arg(&one)
        .output()
        .unwrap());
    assert!(out.contains("planned 15 runs"), "{out}");
    assert!(out.contains("all 15 runs finished"), "{out}");
    let rows = comparable(&one.join("pareto.csv"));
    assert_eq!(
        rows[0],
        [
            "id",
            "method",
            "point",
            "seed",
            "params",
            "macs",
            "grown_test_accuracy",
            "test_accuracy",
            "mean_true_delta_loss",
            "mean_true_delta_loss_recalibrated"
        ]
    );
    let mut methods: Vec<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    methods.sort();
    methods.dedup();
    assert_eq!(
        methods,
        [
            "fixed",
            "gn",
            "gn-noise",
            "gn-noise-noprune",
            "gn-noise-prunes-after",
            "gn-noprune",
            "gn-prunes-after",
            "random",
            "splitting",
            "uniform"
        ]
    );
    for r in &rows[1..] {
        let acc: f64 = r[7].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r:?}");
        assert!(r[4].parse::<u64>().unwrap() > 0, "{r:?}");
        // Growth runs report their accuracy at the end of growth and the
        // true loss change after the morphisms.
        assert_eq!(r[1] != "fixed", !r[6].is_empty(), "{r:?}");
        assert_eq!(r[1] != "fixed", !r[8].is_empty(), "{r:?}");
    }
    // Uniform and random growth are sized to the gn run's parameter count.
    let params = |m: &str| -> u64 { rows.iter().find(|r| r[1] == m).unwrap()[4].parse().unwrap() };
    for svg in ["pareto.svg", "pareto-grown.svg"] {
        assert!(std::fs::read_to_string(one.join(svg))
            .unwrap()
            .contains("<svg"));
    }
    let md = std::fs::read_to_string(one.join("pareto.md")).unwrap();
    assert!(md.contains("| gn | lambda_p 1e-4 | 1 |"), "{md}");
    // Learned against noise theta, paired over the one phase.
    for gn in ["gn", "gn-noprune", "gn-prunes-after"] {
        let pair = format!("| {gn} against {} | 1 |", gn.replacen("gn", "gn-noise", 1));
        assert!(md.contains(&pair), "{md}");
    }
    // Both Gauss-Newton methods are compared with growth sized to them.
    for gn in ["gn", "gn-noprune", "gn-prunes-after"] {
        assert!(
            md.contains(&format!("| uniform | lambda_p 1e-4 sized to {gn} | 1 |")),
            "{md}"
        );
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {gn} | lambda_p 1e-4 | retrained |")))
            .unwrap_or_else(|| panic!("{md}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // vs uniform, vs random, vs the noise-theta ablation.
        assert!(cells[5..8].iter().all(|c| *c != "-"), "{line}");
    }
    assert!(params("uniform") > 0 && params("random") > 0);

    // A rerun reuses every finished run.
    let again = ok(sprout()
        .args(["pareto", "--tiny", "--jobs", "1", "--out"])
        .arg(&one)
        .output()
        .unwrap());
    assert!(
        again.contains("0 of 15 runs to do (15 finished before)"),
        "{again}"
    );

    // Plan, run every line with run-job, collect: the same table.
    let split = tmp("pareto", "split");
    let plan = ok(sprout()
        .args(["pareto", "--tiny", "--plan", "--out"])
        .arg(&split)
        .output()
        .unwrap());
    assert!(plan.contains("planned 15 runs"), "{plan}");
    let manifest = split.join("manifest.jsonl");
    let first = std::fs::read(&manifest).unwrap();
    ok(sprout()
        .args(["pareto", "--tiny", "--plan", "--out"])
        .arg(&split)
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        first,
        "planning twice differs"
    );
    let partial = ok(sprout()
        .args(["pareto", "--tiny", "--collect", "--out"])
        .arg(&split)
        .output()
        .unwrap());
    assert!(
        partial.contains("0 of 15 runs finished; not yet:"),
        "{partial}"
    );
    run_every_line(&manifest, 15);
    ok(sprout()
        .args(["pareto", "--tiny", "--collect", "--out"])
        .arg(&split)
        .output()
        .unwrap());
    assert_eq!(
        comparable(&split.join("pareto.csv")),
        rows,
        "plan / run-job / collect differs from one process"
    );

    // Bad manifests and indices: one line naming the file and line.
    let e = run_job_error(&manifest, 15);
    assert!(e.contains("--index 15") && e.contains("has 15 runs"), "{e}");
    let text = String::from_utf8(first.clone()).unwrap();
    let edited = split.join("edited.jsonl");
    std::fs::write(
        &edited,
        text.replacen("sprout-sweep-1", "sprout-sweep-0", 1),
    )
    .unwrap();
    let e = run_job_error(&edited, 0);
    assert!(e.contains("edited.jsonl:1:") && e.contains("format"), "{e}");
    std::fs::write(&edited, text.replacen("\"seed\":0", "\"seed\":\"x\"", 1)).unwrap();
    let e = run_job_error(&edited, 0);
    assert!(e.contains("edited.jsonl:1:"), "{e}");
    // A run directory holding another job is never overwritten.
    let job = split
        .join("runs")
        .join("vgg19-fixed-w2-s0")
        .join("job.json");
    let before = std::fs::read(split.join("runs/vgg19-fixed-w2-s0/model.safetensors")).unwrap();
    std::fs::remove_file(split.join("runs/vgg19-fixed-w2-s0/done.json")).unwrap();
    let stored = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, stored.replacen("\"seed\": 0", "\"seed\": 5", 1)).unwrap();
    let e = run_job_error(&manifest, 0);
    assert!(e.contains("job.json") && e.contains("line 1"), "{e}");
    assert_eq!(
        std::fs::read(split.join("runs/vgg19-fixed-w2-s0/model.safetensors")).unwrap(),
        before
    );
    // Another sweep planned into the same folder is refused.
    let e = err(sprout()
        .args(["pareto", "--tiny", "--plan", "--lr", "0.1", "--out"])
        .arg(&split)
        .output()
        .unwrap());
    assert!(e.contains("manifest.jsonl holds a different sweep"), "{e}");
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&split);
}

#[test]
fn bad_sweep_flags_name_the_flag() {
    let dir = tmp("pareto", "bad");
    for (flags, needle) in [
        (&["--lambdas", "1e-4,-1"][..], "--lambdas: -1"),
        (&["--lambdas", "1e-4,inf"][..], "--lambdas: inf"),
        (&["--seed-width", "0"][..], "--seed-width"),
        (&["--jobs", "0"][..], "--jobs"),
        (&["--threads-per-run", "0"][..], "--threads-per-run"),
        (&["--plan", "--collect"][..], "separate steps"),
    ] {
        let e = err(sprout()
            .args(["pareto", "--out"])
            .arg(&dir)
            .args(flags)
            .output()
            .unwrap());
        assert!(e.contains(needle), "{flags:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{flags:?}: {e}");
    }
    assert!(!dir.join("manifest.jsonl").exists());
}
