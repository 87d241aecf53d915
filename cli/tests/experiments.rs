//! The paper's Figure 3 and Figure 4 experiments end to end on a small slice
//! of the embedded data: they run, and their files hold what they promise.

mod common;

use common::{assert_described, ok, sprout};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    common::tmp("exp", name)
}

fn run(args: &[&str], out: &Path) -> String {
    ok(sprout().args(args).arg("--out").arg(out).output().unwrap())
}

/// The numeric rows of `dir/name` after checking its header line.
fn numeric_csv(dir: &Path, name: &str, header: &str) -> Vec<Vec<f64>> {
    let csv = std::fs::read_to_string(dir.join(name)).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(header), "{name} header");
    lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn estimate_writes_candidates_thetas_plots_and_correlations() {
    let out = tmp("estimate");
    run(
        &[
            "estimate",
            "--width",
            "4",
            "--train-limit",
            "640",
            "--train-epochs",
            "1",
            "--theta-epochs",
            "1",
            "--heldout",
            "128",
            "--threads",
            "2",
        ],
        &out,
    );
    let rows = numeric_csv(
        &out,
        "candidates.csv",
        "layer,channel,estimated,true,theta_norm",
    );
    assert_eq!(rows.len(), 16 * 4, "one row per split candidate");
    assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite())));
    assert!(
        rows.iter().all(|r| r[4] > 0.0),
        "every theta moved away from zero"
    );
    let summary = summary(&out);
    for key in ["overall", "overall_heldout_estimate"] {
        let s = summary[key]["spearman"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&s), "{key}: {s}");
    }
    assert_eq!(summary["per_layer"].as_array().unwrap().len(), 16);
    assert!(out.join("thetas.safetensors").exists());
    // The trained network the thetas belong to, described.
    assert_described(&out, &out.join("model.safetensors"));
    assert!(out.join("scatter-layer-01.svg").exists() && out.join("scatter-all.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_writes_three_true_changes_per_first_layer_channel() {
    let out = tmp("compare");
    run(
        &[
            "compare",
            "--width",
            "4",
            "--train-limit",
            "640",
            "--train-epochs",
            "1",
            "--theta-epochs",
            "1",
            "--direct-steps",
            "3",
            "--splitting-batches",
            "2",
            "--heldout",
            "64",
            "--search-images",
            "64",
            "--threads",
            "2",
        ],
        &out,
    );
    let rows = numeric_csv(
        &out,
        "compare.csv",
        "channel,gn,direct,splitting_line_search",
    );
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite())));
    let summary = summary(&out);
    let f = summary["gn_beats_splitting_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f));
    assert_described(&out, &out.join("model.safetensors"));
    assert!(out.join("compare.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}
