//! Hostile input to the `sprout` binary: oversized or impossible dataset
//! headers, files that are not regular files, flags asking for more memory
//! or threads than the machine has, mismatched splits, and run directories
//! that are foreign, in use or hold a run's saved progress. Each must end in
//! a one-line error naming the file, flag or shape, never a panic or an
//! allocation abort, and must leave existing directories as they were.

mod common;

use common::{err, ok, resume, sprout, tiny_grow};
use sprout_core::data::idx::encode_idx;
use sprout_core::data::Dataset;
use sprout_core::rng::Rng;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let p = common::tmp("reliability", name);
    fs::create_dir_all(&p).unwrap();
    p
}

/// Asserts a one-line error without a panic.
fn one_line(e: &str) -> &str {
    assert!(!e.contains("panicked"), "{e}");
    assert!(!e.contains("memory allocation"), "{e}");
    let line = e.trim_end();
    assert_eq!(line.lines().count(), 1, "not one line: {e}");
    line
}

fn random(n: usize, side: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let images = (0..n * side * side).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, 1, side, side, 10).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// An MNIST-style directory of small IDX files: `train_side` and `test_side`
/// pixel images.
fn idx_dir(name: &str, train_side: usize, test_side: usize) -> PathBuf {
    let dir = tmp(name);
    for (ds, images, labels) in [
        (random(40, train_side, 1), TRAIN_IMAGES, TRAIN_LABELS),
        (random(20, test_side, 2), TEST_IMAGES, TEST_LABELS),
    ] {
        let (i, l) = encode_idx(&ds);
        fs::write(dir.join(images), i).unwrap();
        fs::write(dir.join(labels), l).unwrap();
    }
    dir
}

/// An IDX image header declaring `n` images of `rows x cols`.
fn images_header(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut h = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

/// `sprout train` on the MNIST files in `data`, a tiny fast run.
fn train_on(data: &Path, out: &Path) -> Command {
    let mut c = sprout();
    c.args([
        "train",
        "--dataset",
        "mnist",
        "--epochs",
        "1",
        "--width",
        "2",
        "--batch",
        "16",
        "--threads",
        "2",
    ])
    .arg("--data")
    .arg(data)
    .arg("--out")
    .arg(out);
    c
}

/// Replaces the training images of `dir` by `bytes` (removing the plain
/// file when `gz`).
fn replace_train_images(dir: &Path, bytes: &[u8], gz: bool) -> PathBuf {
    let _ = fs::remove_file(dir.join(TRAIN_IMAGES));
    let _ = fs::remove_file(dir.join(format!("{TRAIN_IMAGES}.gz")));
    let path = if gz {
        dir.join(format!("{TRAIN_IMAGES}.gz"))
    } else {
        dir.join(TRAIN_IMAGES)
    };
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn oversized_and_impossible_idx_headers_fail_before_allocating() {
    let data = idx_dir("idx-headers", 28, 28);
    let out = tmp("idx-headers-out").join("run");

    // 2^24 images of 1x1 in a small gzip: 16 GiB once padded to 32x32.
    let mut bytes = images_header(1 << 24, 1, 1);
    bytes.extend(vec![0u8; 1 << 20]);
    let path = replace_train_images(&data, &gzip(&bytes), true);
    let e = err(train_on(&data, &out).output().unwrap());
    let e = one_line(&e);
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("16777216 images of 1x1x1")
            && e.contains("limit"),
        "{e}"
    );

    // A consistent 2^30-image header on a sparse file of the declared size.
    let path = replace_train_images(&data, &images_header(1 << 30, 1, 1), false);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(16 + (1 << 30))
        .unwrap();
    let e = err(train_on(&data, &out).output().unwrap());
    assert!(one_line(&e).contains("1073741824 images of 1x1x1"), "{e}");

    // A 4 GiB sparse file whose header declares one 28x28 image: refused
    // from its size, without reading it.
    let path = replace_train_images(&data, &images_header(1, 28, 28), false);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let e = err(train_on(&data, &out).output().unwrap());
    let e = one_line(&e);
    assert!(
        e.contains(&path.display().to_string())
            && e.contains(
                "invalid data: IDX images: 4294966496 trailing bytes: expected 800 bytes"
            ),
        "{e}"
    );
    fs::remove_file(&path).unwrap();

    // A gzip bomb: a small header followed by 64 MiB of zeros.
    let mut bomb = images_header(40, 28, 28);
    bomb.extend(vec![0u8; 64 << 20]);
    let path = replace_train_images(&data, &gzip(&bomb), true);
    let e = err(train_on(&data, &out).output().unwrap());
    let e = one_line(&e);
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("trailing data after the 31376 bytes"),
        "{e}"
    );
    // A damaged gzip stream names the file.
    let mut g = gzip(&encode_idx(&random(40, 28, 1)).0);
    g.truncate(g.len() / 2);
    let path = replace_train_images(&data, &g, true);
    let e = err(train_on(&data, &out).output().unwrap());
    assert!(
        one_line(&e).contains(&format!("{}: invalid gzip", path.display())),
        "{e}"
    );
    assert!(!out.exists(), "a failed run wrote {}", out.display());
    let _ = fs::remove_dir_all(&data);
}

#[test]
fn huge_cifar_file_is_refused_from_its_size() {
    let data = tmp("cifar");
    let path = data.join("data_batch_1.bin");
    let f = fs::File::create(&path).unwrap();
    // 1.4 million records: 4.3 GB, sparse.
    f.set_len(1_400_000 * 3073).unwrap();
    let e = err(sprout()
        .args(["train", "--dataset", "cifar10", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(data.join("run"))
        .output()
        .unwrap());
    let e = one_line(&e);
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("1400000 images of 3x32x32")
            && e.contains("limit"),
        "{e}"
    );
    let _ = fs::remove_dir_all(&data);
}

#[test]
fn fifo_and_device_links_are_not_regular_files() {
    let data = idx_dir("special", 28, 28);
    let out = tmp("special-out").join("run");
    let link = data.join(TRAIN_LABELS);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let e = err(train_on(&data, &out).output().unwrap());
    assert_eq!(
        one_line(&e),
        format!("error: {}: not a regular file", link.display())
    );
    fs::remove_file(&link).unwrap();
    fs::write(&link, encode_idx(&random(40, 28, 1)).1).unwrap();
    let fifo = data.join(TEST_IMAGES);
    fs::remove_file(&fifo).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let e = err(train_on(&data, &out).output().unwrap());
        assert!(
            one_line(&e).contains(&format!("{}: not a regular file", fifo.display())),
            "{e}"
        );
    }
    let _ = fs::remove_dir_all(&data);
}

#[test]
fn train_and_test_images_of_different_shapes_are_refused() {
    let data = idx_dir("shapes", 64, 28);
    let out = tmp("shapes-out").join("run");
    let e = err(train_on(&data, &out).output().unwrap());
    let e = one_line(&e);
    assert!(
        e.contains(&data.join(TRAIN_IMAGES).display().to_string())
            && e.contains(&data.join(TEST_IMAGES).display().to_string())
            && e.contains("1x64x64")
            && e.contains("1x32x32"),
        "{e}"
    );
    assert!(!out.exists());
    let _ = fs::remove_dir_all(&data);
}

#[test]
fn flags_beyond_memory_threads_or_zero_limits_are_refused() {
    let out = tmp("flags");
    let run = out.join("run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--width", "65536"],
            "--width 65536: the network has",
        ),
        (
            vec!["grow", "--batch", "100000"],
            "--batch must be between 1 and 4096, got 100000",
        ),
        (
            vec!["grow", "--threads", "100000"],
            "--threads 100000 is more than 4 per core",
        ),
        (vec!["train", "--threads", "100000"], "--threads 100000"),
        (
            vec!["grow", "--test-limit", "0"],
            "--test-limit must be at least 1",
        ),
        (
            vec!["grow", "--train-limit", "0"],
            "--train-limit must be at least 1",
        ),
        // A backend that does not open is found before --out is written.
        (
            vec!["train", "--adapter", "any"],
            "--adapter any needs --backend gpu",
        ),
        (
            vec!["grow", "--adapter", "any"],
            "--adapter any needs --backend gpu",
        ),
    ];
    for (flags, needle) in cases {
        let e = err(sprout()
            .args(&flags)
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap());
        assert!(one_line(&e).contains(needle), "{flags:?}: {e}");
    }
    assert!(!run.exists(), "a refused run wrote {}", run.display());
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn eval_caps_its_batch_at_the_test_set() {
    let dir = tmp("eval");
    let net = sprout_core::Network::init(&sprout_core::Arch::vgg19(2, [1, 32, 32], 10).unwrap(), 1);
    sprout::weights::save_network(&dir.join("model.safetensors"), &net, None, &[]).unwrap();
    let text = ok(sprout()
        .args([
            "eval",
            "--dataset",
            "fashion-mnist-embedded",
            "--batch",
            "1000000",
            "--run",
        ])
        .arg(&dir)
        .output()
        .unwrap());
    assert!(text.contains("/1000)"), "{text}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn negative_running_variance_is_refused_by_name() {
    let dir = tmp("negvar");
    let mut net =
        sprout_core::Network::init(&sprout_core::Arch::vgg19(2, [1, 32, 32], 10).unwrap(), 1);
    let specs = net.specs();
    let i = specs
        .iter()
        .position(|s| s.name == "layers.4.bn.running_var")
        .unwrap();
    net.tensors[i][1] = -0.5;
    // save_network does not judge values; the loader does.
    let path = dir.join("model.safetensors");
    sprout::weights::save_network(&path, &net, None, &[]).unwrap();
    let e = err(sprout()
        .args(["eval", "--dataset", "fashion-mnist-embedded", "--run"])
        .arg(&dir)
        .output()
        .unwrap());
    assert!(
        one_line(&e).contains(&format!(
            "{}: tensor layers.4.bn.running_var holds the negative variance -0.5 at index 1",
            path.display()
        )),
        "{e}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn diverged_growth_says_so_and_that_no_checkpoint_exists() {
    let d = tmp("diverge");
    let out = d.join("run");
    let mut c = sprout();
    c.args([
        "grow",
        "--lr",
        "100",
        "--train-limit",
        "640",
        "--test-limit",
        "100",
        "--phases",
        "2",
        "--phase-epochs",
        "1",
        "--width",
        "8",
        "--threads",
        "2",
        "--seed",
        "1",
        "--out",
    ])
    .arg(&out);
    let e = err(c.output().unwrap());
    let e = one_line(&e);
    assert!(
        e.contains("training diverged") && e.contains("lower --lr (now 100)"),
        "{e}"
    );
    assert!(!e.contains("shape mismatch"), "{e}");
    assert!(e.contains("no checkpoint was written"), "{e}");
    assert!(!e.contains("is kept"), "{e}");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn failed_train_leaves_an_existing_run_untouched() {
    let data = idx_dir("untouched", 28, 28);
    let out = tmp("untouched-out").join("run");
    ok(train_on(&data, &out).output().unwrap());
    let before: Vec<(PathBuf, Vec<u8>)> = ["config.json", "arch.json", "metrics.jsonl", "run.json"]
        .iter()
        .map(|f| (out.join(f), fs::read(out.join(f)).unwrap()))
        .collect();
    // An architecture for 3-channel images, on 1-channel data.
    let arch = out.join("../rgb.json");
    let rgb = sprout_core::Arch::vgg19(2, [3, 32, 32], 10).unwrap();
    fs::write(&arch, serde_json::to_vec(&rgb).unwrap()).unwrap();
    let mut c = train_on(&data, &out);
    c.arg("--arch-file").arg(&arch);
    let e = err(c.output().unwrap());
    assert!(
        one_line(&e).contains("takes 3x32x32 images but the data has 1x32x32"),
        "{e}"
    );
    for (p, b) in &before {
        assert_eq!(&fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    let _ = fs::remove_dir_all(&data);
    let _ = fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn foreign_directories_need_force_and_grow_runs_are_never_overwritten() {
    let data = idx_dir("foreign", 28, 28);
    let base = tmp("foreign-out");

    // Someone else's files.
    let foreign = base.join("mine");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), "keep").unwrap();
    let e = err(train_on(&data, &foreign).output().unwrap());
    assert_eq!(
        one_line(&e),
        format!(
            "error: {} is not empty and not a sprout train run; choose another --out or pass --force",
            foreign.display()
        )
    );
    assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);
    let mut c = train_on(&data, &foreign);
    c.arg("--force");
    ok(c.output().unwrap());
    assert!(foreign.join("model.safetensors").exists());
    assert!(foreign.join("notes.txt").exists());

    // A grow run is not a train run, and its progress is resumed, not redone.
    let grown = base.join("grown");
    ok(tiny_grow(&grown).output().unwrap());
    let e = err(train_on(&data, &grown).output().unwrap());
    assert!(
        one_line(&e).contains("is not empty and not a sprout train run"),
        "{e}"
    );
    for moved in ["checkpoint", "checkpoint.old", "checkpoint.tmp"] {
        if moved != "checkpoint" {
            fs::rename(grown.join("checkpoint"), grown.join(moved)).unwrap();
        }
        for force in [false, true] {
            let mut c = tiny_grow(&grown);
            if force {
                c.arg("--force");
            }
            let e = err(c.output().unwrap());
            assert!(
                one_line(&e).contains(&format!("use --resume {}", grown.display())),
                "{moved}: {e}"
            );
            assert!(grown.join(moved).join("state.json").exists());
        }
        // The moved checkpoint resumes.
        let text = ok(resume(&grown).output().unwrap());
        assert!(text.contains("resuming"), "{text}");
        if moved != "checkpoint" {
            fs::rename(grown.join(moved), grown.join("checkpoint")).unwrap();
        }
    }
    let _ = fs::remove_dir_all(&data);
    let _ = fs::remove_dir_all(&base);
}

#[test]
fn a_directory_in_use_is_refused_with_the_holder() {
    let base = tmp("locked");
    let dir = base.join("run");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.json"), "{}").unwrap();
    let _held = sprout::run_dir::RunDir::lock_existing(&dir).unwrap();
    let want = format!(
        "error: {} is in use by process {}",
        dir.display(),
        std::process::id()
    );
    let e = err(resume(&dir).output().unwrap());
    assert_eq!(one_line(&e), want);
    let e = err(tiny_grow(&dir).arg("--force").output().unwrap());
    assert_eq!(one_line(&e), want);
    let _ = fs::remove_dir_all(&base);
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn resume_refuses_other_data_threads_and_foreign_checkpoints() {
    let base = tmp("resume-checks");
    let dir = base.join("run");
    ok(tiny_grow(&dir).output().unwrap());
    let record = dir.join("record.json");
    let state = dir.join("checkpoint").join("state.json");
    let arch1 = dir.join("arch-phase-01.json");
    let saved: Vec<(PathBuf, Vec<u8>)> = [&record, &state, &arch1]
        .iter()
        .map(|p| (p.to_path_buf(), fs::read(p).unwrap()))
        .collect();
    let restore = || {
        for (p, b) in &saved {
            fs::write(p, b).unwrap();
        }
    };
    let check = |c: &mut Command, needle: &str| {
        let e = err(c.output().unwrap());
        assert!(one_line(&e).contains(needle), "{needle}: {e}");
        restore();
    };

    check(
        resume(&dir).args(["--dataset", "fashion-mnist"]),
        "the run grows on fashion-mnist-embedded, not --dataset fashion-mnist",
    );
    edit_json(&record, |v| v["threads"] = 7.into());
    check(&mut resume(&dir), "the run used 7 worker threads");
    edit_json(&record, |v| {
        v["data_fingerprint"] = "0123456789abcdef".into()
    });
    check(&mut resume(&dir), "fingerprint 0123456789abcdef");
    edit_json(&state, |v| v["phase"] = 99.into());
    check(&mut resume(&dir), "phase 99 is beyond the run's 1 phases");
    edit_json(&arch1, |v| v["widths"][0] = 5.into());
    check(&mut resume(&dir), "the checkpoint is not this run's");

    // Restored, it resumes.
    ok(resume(&dir).output().unwrap());
    let _ = fs::remove_dir_all(&base);
}
