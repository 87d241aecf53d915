//! Run directories describe their networks: config.json and every saved
//! network's metadata record the dataset, class names, padding,
//! normalisation and architecture; `sprout eval` uses the recorded
//! normalisation, and runs written before sprout recorded it still resume.

mod common;

use common::{assert_described, ok, resume, sprout, tiny_grow};
use std::fs;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    common::tmp("describe", name)
}

/// `sprout eval --run dir`'s accuracy line.
fn eval(dir: &Path) -> String {
    let text = ok(sprout().args(["eval", "--run"]).arg(dir).output().unwrap());
    text.lines()
        .find(|l| l.starts_with("test accuracy"))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string()
}

#[test]
fn train_records_its_input_in_config_and_model() {
    let out = tmp("train");
    ok(sprout()
        .args(["train", "--width", "2", "--epochs", "1", "--threads", "2"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    let input = assert_described(&out, &out.join("model.safetensors"));
    assert_eq!(input.dataset, "fashion-mnist-embedded");
    // The statistics of the (whole) training split it trained on.
    let splits = sprout::data::embedded().unwrap();
    assert_eq!(
        input.normalization,
        sprout_core::data::Normalization::of(&splits.train)
    );
    assert!(eval(&out).contains("/1000)"));
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn grow_records_its_input_and_old_runs_still_resume() {
    let out = tmp("grow");
    ok(tiny_grow(&out).output().unwrap());
    let input = assert_described(&out, &out.join("model.safetensors"));
    // The normalisation of the 64 training images the run saw, not of the
    // whole split.
    let splits = sprout::data::embedded().unwrap();
    let first = splits.train.subset(&(0..64).collect::<Vec<_>>());
    assert_eq!(
        input.normalization,
        sprout_core::data::Normalization::of(&first)
    );
    let checkpoint = out.join("checkpoint").join("model.safetensors");
    assert_eq!(
        sprout::weights::load_input_spec(&checkpoint).unwrap(),
        Some(input.clone())
    );
    let before = eval(&out);

    // A run directory of an earlier sprout: config.json without the new
    // fields, networks without the metadata. It resumes, and the
    // description comes back.
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    for k in ["class_names", "padding", "normalization", "architecture"] {
        cfg.as_object_mut().unwrap().remove(k).unwrap();
    }
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    for file in [out.join("model.safetensors"), checkpoint.clone()] {
        let net = sprout::weights::load_network(&file).unwrap();
        sprout::weights::save_network(&file, &net, None, &[]).unwrap();
    }
    let config_path = out.join("config.json");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        sprout::input::InputSpec::from_config(&config_path, &config).unwrap(),
        None
    );
    let text = ok(resume(&out).output().unwrap());
    assert!(text.contains("resuming"), "{text}");
    assert_eq!(
        assert_described(&out, &out.join("model.safetensors")),
        input
    );
    assert_eq!(eval(&out), before);
    let _ = fs::remove_dir_all(&out);
}
