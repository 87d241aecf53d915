//! `sprout bench`: the rows asked for, with the keys its JSON promises.

mod common;

use common::{err, ok, sprout};

fn bench(extra: &[&str]) -> Vec<serde_json::Value> {
    let out = ok(sprout()
        .args([
            "bench",
            "--json",
            "--windows",
            "1",
            "--window-seconds",
            "0.01",
        ])
        .args(["--batch", "4", "--threads", "1"])
        .args(extra)
        .output()
        .unwrap());
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn steps_selects_rows_and_morph_reports_its_cost() {
    let rows = bench(&["--net", "vgg19", "--width", "16", "--steps", "train,morph"]);
    let steps: Vec<&str> = rows.iter().map(|r| r["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["train", "morph"]);
    for r in &rows {
        assert_eq!(r["net"], "vgg19-w16");
        assert_eq!(r["batch"], 4);
        assert!(r["images_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Achieved GFLOP/s against the GEMM peak the run measured itself.
    let (gflops, peak) = (
        rows[0]["gflops"].as_f64().unwrap(),
        rows[0]["gemm_peak_gflops"].as_f64().unwrap(),
    );
    assert!(gflops > 0.0 && peak > 0.0, "{}", rows[0]);
    let fraction = rows[0]["peak_fraction"].as_f64().unwrap();
    assert!(
        (fraction - gflops / peak).abs() <= 1e-9 * fraction,
        "{}",
        rows[0]
    );
    assert_eq!(rows[1]["gemm_peak_gflops"], rows[0]["gemm_peak_gflops"]);
    // The morphism step has no FLOP count of its own.
    assert!(rows[1]["gflops"].is_null() && rows[1]["peak_fraction"].is_null());
    assert!(rows[0]["cost_vs_train"].is_null());
    // A ratio of timings: only its presence and sign are stable on a
    // loaded machine (0.24 was seen with two other jobs on two cores).
    let cost = rows[1]["cost_vs_train"].as_f64().unwrap();
    assert!(cost.is_finite() && cost > 0.0, "morph cost {cost}");
}

#[test]
fn net_and_width_select_rows() {
    let rows = bench(&["--net", "vgg19", "--width", "4,8", "--steps", "infer"]);
    let nets: Vec<&str> = rows.iter().map(|r| r["net"].as_str().unwrap()).collect();
    assert_eq!(nets, ["vgg19-w4", "vgg19-w8"]);
    // FLOPs per image from the architecture: a forward pass is 2 per MAC,
    // and VGG-19's are nearly quadratic in the width.
    let flops: Vec<f64> = rows
        .iter()
        .map(|r| r["flops_per_image"].as_f64().unwrap())
        .collect();
    assert!(flops[1] > 3.0 * flops[0], "{flops:?}");
    let rows = bench(&["--net", "mobilenet-v1", "--steps", "train"]);
    let nets: Vec<&str> = rows.iter().map(|r| r["net"].as_str().unwrap()).collect();
    assert_eq!(nets, ["mobilenet-v1-w8", "mobilenet-v1-w32"]);
}

#[test]
fn score_all_rows_come_in_pairs() {
    // Only the seeds have score-all rows.
    let rows = bench(&["--net", "mobilenet-v1", "--steps", "score-all"]);
    let steps: Vec<&str> = rows.iter().map(|r| r["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["score-all-estimator", "score-all-brute-force"]);
    assert!(rows.iter().all(|r| r["net"] == "mobilenet-v1-w32"));
}

#[test]
fn bad_flags_are_named() {
    let e = err(sprout().args(["bench", "--batch", "0"]).output().unwrap());
    assert!(e.contains("--batch"), "{e}");
    let e = err(sprout()
        .args(["bench", "--steps", "backprop"])
        .output()
        .unwrap());
    assert!(e.contains("backprop"), "{e}");
    let e = err(sprout()
        .args(["bench", "--net", "resnet"])
        .output()
        .unwrap());
    assert!(e.contains("--net"), "{e}");
    let e = err(sprout()
        .args(["bench", "--net", "vgg19", "--width", "32"])
        .output()
        .unwrap());
    assert!(e.contains("--width"), "{e}");
}
