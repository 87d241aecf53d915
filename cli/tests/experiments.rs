//! The paper's Figure 3 and Figure 4 experiments end to end on a small slice
//! of the embedded data: they run, and their files hold what they promise.

use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sprout-exp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn run(args: &[&str], out: &PathBuf) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
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
    let csv = std::fs::read_to_string(out.join("candidates.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("layer,channel,estimated,true,theta_norm")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 16 * 4, "one row per split candidate");
    assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite())));
    assert!(
        rows.iter().all(|r| r[4] > 0.0),
        "every theta moved away from zero"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for key in ["overall", "overall_heldout_estimate"] {
        let s = summary[key]["spearman"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&s), "{key}: {s}");
    }
    assert_eq!(summary["per_layer"].as_array().unwrap().len(), 16);
    assert!(out.join("thetas.safetensors").exists());
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
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("channel,gn,direct,splitting_line_search")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite())));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let f = summary["gn_beats_splitting_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f));
    assert!(out.join("compare.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}
