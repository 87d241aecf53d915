//! Loading datasets from disk (IDX, optionally gzipped; CIFAR binary) and the
//! Fashion-MNIST subset compiled into the binary.
//!
//! Every error is one line naming the file and what is wrong with it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use sprout_core::data::cifar::{parse_cifar, CifarKind};
use sprout_core::data::idx::parse_idx;
use sprout_core::data::Dataset;
use sprout_core::error::Error;

/// The datasets `sprout` can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DatasetName {
    /// Fashion-MNIST (IDX; Debian package dataset-fashion-mnist).
    #[value(name = "fashion-mnist")]
    FashionMnist,
    /// MNIST handwritten digits (IDX).
    #[value(name = "mnist")]
    Mnist,
    /// CIFAR-10, binary version.
    #[value(name = "cifar10")]
    Cifar10,
    /// CIFAR-100, binary version (fine labels).
    #[value(name = "cifar100")]
    Cifar100,
}

impl DatasetName {
    /// The name as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
        }
    }

    /// Where the dataset is looked for without `--data`, if anywhere.
    pub fn default_dir(self) -> Option<&'static Path> {
        match self {
            DatasetName::FashionMnist => Some(Path::new("/usr/share/datasets/fashion-mnist")),
            DatasetName::Mnist => Some(Path::new("/usr/share/datasets/mnist")),
            DatasetName::Cifar10 | DatasetName::Cifar100 => None,
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A training and a test split.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
    /// Short name of the data, for logs and run records.
    pub name: String,
}

/// Side length that every image is padded to (28x28 IDX images get 2 zero
/// pixels on each side).
pub const IMAGE_SIZE: usize = 32;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

const EMBEDDED_TRAIN_IMAGES: &[u8] =
    include_bytes!("../data/fashion-mnist-embedded/train-images-idx3-ubyte.gz");
const EMBEDDED_TRAIN_LABELS: &[u8] =
    include_bytes!("../data/fashion-mnist-embedded/train-labels-idx1-ubyte.gz");
const EMBEDDED_TEST_IMAGES: &[u8] =
    include_bytes!("../data/fashion-mnist-embedded/t10k-images-idx3-ubyte.gz");
const EMBEDDED_TEST_LABELS: &[u8] =
    include_bytes!("../data/fashion-mnist-embedded/t10k-labels-idx1-ubyte.gz");

/// Whether `bytes` start with the gzip magic.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// The bytes, gunzipped if they are gzip; `what` names them in errors.
fn maybe_gunzip(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    if !is_gzip(&bytes) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{what}: invalid gzip: {e}"))?;
    Ok(out)
}

/// The Fashion-MNIST subset compiled into the binary: the first 600 training
/// images and the first 100 test images of each class (6,000 and 1,000), padded
/// to 1x32x32. See cli/data/fashion-mnist-embedded/README.md.
pub fn embedded() -> Result<Splits> {
    let split = |images: &[u8], labels: &[u8], which: &str| -> Result<Dataset> {
        let what = format!("embedded Fashion-MNIST {which}");
        let images = maybe_gunzip(images.to_vec(), &what)?;
        let labels = maybe_gunzip(labels.to_vec(), &what)?;
        let ds = parse_idx(&images, &labels, 10).map_err(|e| anyhow!("{what}: {e}"))?;
        ds.pad_to(IMAGE_SIZE, IMAGE_SIZE)
            .map_err(|e| anyhow!("{what}: {e}"))
    };
    Ok(Splits {
        train: split(EMBEDDED_TRAIN_IMAGES, EMBEDDED_TRAIN_LABELS, "training set")?,
        test: split(EMBEDDED_TEST_IMAGES, EMBEDDED_TEST_LABELS, "test set")?,
        name: "fashion-mnist-embedded".into(),
    })
}

/// Loads `name` from `dir`, or from its default directory when `dir` is `None`
/// (Fashion-MNIST: /usr/share/datasets/fashion-mnist, MNIST:
/// /usr/share/datasets/mnist; CIFAR has none and needs `dir`).
///
/// IDX files are found as `NAME` or `NAME.gz` (gzip is recognised by its
/// magic bytes) and padded to 32x32. CIFAR-10 reads `data_batch_1.bin` ..
/// `data_batch_5.bin` and `test_batch.bin`, CIFAR-100 `train.bin` and
/// `test.bin`, in `dir` or in the archive's subdirectory
/// (`cifar-10-batches-bin/`, `cifar-100-binary/`).
pub fn load(name: DatasetName, dir: Option<&Path>) -> Result<Splits> {
    let dir = match dir.or(name.default_dir()) {
        Some(d) => d,
        None => bail!(
            "{name}: no default location; pass --data DIR with the {} binary files ({})",
            cifar_kind(name).name(),
            cifar_files(name).join(", ")
        ),
    };
    let (train, test) = match name {
        DatasetName::FashionMnist | DatasetName::Mnist => load_idx(name, dir)?,
        DatasetName::Cifar10 | DatasetName::Cifar100 => load_cifar(name, dir)?,
    };
    Ok(Splits {
        train,
        test,
        name: name.as_str().into(),
    })
}

/// What to do about a missing file of `name`.
fn install_hint(name: DatasetName) -> &'static str {
    match name {
        DatasetName::FashionMnist => {
            "install the Debian package dataset-fashion-mnist or pass --data DIR"
        }
        DatasetName::Mnist => "pass --data DIR holding the MNIST IDX files",
        DatasetName::Cifar10 => "pass --data DIR holding the CIFAR-10 binary version",
        DatasetName::Cifar100 => "pass --data DIR holding the CIFAR-100 binary version",
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Reads `dir/base` or `dir/base.gz`, gunzipped; returns the path used.
fn read_idx_file(name: DatasetName, dir: &Path, base: &str) -> Result<(Vec<u8>, PathBuf)> {
    let plain = dir.join(base);
    let gz = dir.join(format!("{base}.gz"));
    let path = if plain.is_file() {
        plain
    } else if gz.is_file() {
        gz
    } else {
        bail!("missing {}[.gz]: {}", plain.display(), install_hint(name));
    };
    let bytes = read_file(&path)?;
    let bytes = maybe_gunzip(bytes, &path.display().to_string())?;
    Ok((bytes, path))
}

fn load_idx(name: DatasetName, dir: &Path) -> Result<(Dataset, Dataset)> {
    let split = |images: &str, labels: &str| -> Result<Dataset> {
        let (ib, ip) = read_idx_file(name, dir, images)?;
        let (lb, lp) = read_idx_file(name, dir, labels)?;
        let ds = parse_idx(&ib, &lb, 10).map_err(|e| {
            // The message says which of the two files is at fault.
            let path = match &e {
                Error::Data(m) if m.starts_with("IDX labels") => &lp,
                _ => &ip,
            };
            anyhow!("{}: {e}", path.display())
        })?;
        if ds.height > IMAGE_SIZE || ds.width > IMAGE_SIZE {
            return Ok(ds);
        }
        ds.pad_to(IMAGE_SIZE, IMAGE_SIZE)
            .map_err(|e| anyhow!("{}: {e}", ip.display()))
    };
    Ok((
        split(TRAIN_IMAGES, TRAIN_LABELS)?,
        split(TEST_IMAGES, TEST_LABELS)?,
    ))
}

fn cifar_kind(name: DatasetName) -> CifarKind {
    match name {
        DatasetName::Cifar100 => CifarKind::Cifar100,
        _ => CifarKind::Cifar10,
    }
}

/// The CIFAR file names: the training files, then the test file last.
fn cifar_files(name: DatasetName) -> Vec<&'static str> {
    match name {
        DatasetName::Cifar100 => vec!["train.bin", "test.bin"],
        _ => vec![
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ],
    }
}

fn load_cifar(name: DatasetName, dir: &Path) -> Result<(Dataset, Dataset)> {
    let kind = cifar_kind(name);
    let files = cifar_files(name);
    let subdir = match kind {
        CifarKind::Cifar10 => "cifar-10-batches-bin",
        CifarKind::Cifar100 => "cifar-100-binary",
    };
    // The directory itself, or the subdirectory the archive unpacks to.
    let nested = dir.join(subdir);
    let base = if !dir.join(files[0]).is_file() && nested.join(files[0]).is_file() {
        nested
    } else {
        dir.to_path_buf()
    };
    let mut parts = Vec::with_capacity(files.len());
    for file in &files {
        let path = base.join(file);
        if !path.is_file() {
            bail!("missing {}: {}", path.display(), install_hint(name));
        }
        let bytes = read_file(&path)?;
        let ds = parse_cifar(&[&bytes], kind).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        parts.push(ds);
    }
    let test = parts.pop().expect("CIFAR has a test file");
    let mut parts = parts.into_iter();
    let mut train = parts.next().expect("CIFAR has a training file");
    for p in parts {
        train.images.extend_from_slice(&p.images);
        train.labels.extend_from_slice(&p.labels);
    }
    Ok((train, test))
}

/// The splits a command trains and tests on: the embedded subset when no
/// `--dataset` is given, otherwise the named dataset from `--data DIR` or its
/// default location.
pub fn resolve(name: Option<DatasetName>, dir: Option<&Path>) -> Result<Splits> {
    match (name, dir) {
        (None, None) => embedded(),
        (None, Some(d)) => anyhow::bail!(
            "--data {} needs --dataset to say which format it holds (fashion-mnist, mnist, cifar10 or cifar100)",
            d.display()
        ),
        (Some(n), d) => load(n, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_core::data::cifar::encode_cifar;
    use sprout_core::data::idx::encode_idx;
    use sprout_core::rng::Rng;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "sprout-data-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn random(n: usize, c: usize, side: usize, classes: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let images = (0..n * c * side * side)
            .map(|_| rng.below(256) as u8)
            .collect();
        let labels = (0..n).map(|_| rng.below(classes) as u8).collect();
        Dataset::new(images, labels, c, side, side, classes).unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes IDX files for a train and a test split, gzipped or not.
    fn write_idx(dir: &Path, train: &Dataset, test: &Dataset, gz: bool) {
        for (ds, images, labels) in [
            (train, TRAIN_IMAGES, TRAIN_LABELS),
            (test, TEST_IMAGES, TEST_LABELS),
        ] {
            let (ib, lb) = encode_idx(ds);
            if gz {
                fs::write(dir.join(format!("{images}.gz")), gzip(&ib)).unwrap();
                fs::write(dir.join(format!("{labels}.gz")), gzip(&lb)).unwrap();
            } else {
                fs::write(dir.join(images), ib).unwrap();
                fs::write(dir.join(labels), lb).unwrap();
            }
        }
    }

    #[test]
    fn embedded_is_balanced_and_padded() {
        let s = embedded().unwrap();
        assert_eq!(s.name, "fashion-mnist-embedded");
        for (ds, n, per) in [(&s.train, 6000, 600), (&s.test, 1000, 100)] {
            assert_eq!(ds.len(), n);
            assert_eq!(
                (ds.channels, ds.height, ds.width, ds.classes),
                (1, 32, 32, 10)
            );
            assert_eq!(ds.class_counts(), vec![per; 10]);
            // The 2-pixel border is zero padding.
            let img = ds.image(0);
            assert!(img[..64].iter().all(|&x| x == 0));
            assert!(img.iter().any(|&x| x != 0));
        }
    }

    #[test]
    fn embedded_is_the_start_of_the_installed_files() {
        // Checks the embedded files against the package when it is installed.
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.join(format!("{TEST_IMAGES}.gz")).is_file() {
            return;
        }
        let full = load(DatasetName::FashionMnist, None).unwrap();
        let emb = embedded().unwrap();
        assert_eq!(full.train.len(), 60000);
        assert_eq!(full.test.len(), 10000);
        assert_eq!(full.train.balanced_subset(600).unwrap(), emb.train);
        assert_eq!(full.test.balanced_subset(100).unwrap(), emb.test);
    }

    #[test]
    fn loads_idx_plain_and_gzipped() {
        let train = random(7, 1, 28, 10, 1);
        let test = random(3, 1, 28, 10, 2);
        for gz in [false, true] {
            let dir = TempDir::new();
            write_idx(&dir.0, &train, &test, gz);
            let s = load(DatasetName::Mnist, Some(&dir.0)).unwrap();
            assert_eq!(s.name, "mnist");
            assert_eq!(s.train, train.pad_to(32, 32).unwrap());
            assert_eq!(s.test, test.pad_to(32, 32).unwrap());
        }
        // Gzip is recognised by content, not by name.
        let dir = TempDir::new();
        write_idx(&dir.0, &train, &test, true);
        fs::rename(
            dir.0.join(format!("{TRAIN_LABELS}.gz")),
            dir.0.join(TRAIN_LABELS),
        )
        .unwrap();
        let s = load(DatasetName::FashionMnist, Some(&dir.0)).unwrap();
        assert_eq!(s.train.labels, train.labels);
    }

    #[test]
    fn truncated_or_wrong_files_name_the_path() {
        let dir = TempDir::new();
        write_idx(
            &dir.0,
            &random(4, 1, 28, 10, 3),
            &random(2, 1, 28, 10, 4),
            false,
        );
        let path = dir.0.join(TRAIN_IMAGES);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let m = load(DatasetName::Mnist, Some(&dir.0))
            .unwrap_err()
            .to_string();
        assert!(m.starts_with(&path.display().to_string()), "{m}");
        assert!(m.contains("IDX images: truncated"), "{m}");
        assert!(!m.contains('\n'), "{m}");

        // Wrong magic in a gzipped label file.
        fs::write(&path, &bytes).unwrap();
        let lpath = dir.0.join(TEST_LABELS);
        let mut lb = fs::read(&lpath).unwrap();
        lb[3] = 3;
        fs::remove_file(&lpath).unwrap();
        let gz_path = dir.0.join(format!("{TEST_LABELS}.gz"));
        fs::write(&gz_path, gzip(&lb)).unwrap();
        let m = load(DatasetName::Mnist, Some(&dir.0))
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with(&format!(
                "{}: invalid data: IDX labels: wrong magic",
                gz_path.display()
            )),
            "{m}"
        );

        // A damaged gzip stream.
        let mut g = gzip(&lb);
        g.truncate(g.len() / 2);
        fs::write(&gz_path, g).unwrap();
        let m = load(DatasetName::Mnist, Some(&dir.0))
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with(&gz_path.display().to_string()) && m.contains("gzip"),
            "{m}"
        );
    }

    #[test]
    fn missing_files_say_what_to_do() {
        let dir = TempDir::new();
        let m = load(DatasetName::FashionMnist, Some(&dir.0))
            .unwrap_err()
            .to_string();
        let want = format!("missing {}", dir.0.join(TRAIN_IMAGES).display());
        assert!(m.starts_with(&want), "{m}");
        assert!(
            m.contains("dataset-fashion-mnist") && m.contains("--data DIR"),
            "{m}"
        );
        for name in [DatasetName::Cifar10, DatasetName::Cifar100] {
            let m = load(name, None).unwrap_err().to_string();
            assert!(m.contains("--data DIR"), "{m}");
            let m = load(name, Some(&dir.0)).unwrap_err().to_string();
            assert!(m.starts_with("missing ") && m.contains("--data DIR"), "{m}");
        }
    }

    #[test]
    fn loads_cifar10_and_cifar100() {
        for (name, kind, nested) in [
            (
                DatasetName::Cifar10,
                CifarKind::Cifar10,
                "cifar-10-batches-bin",
            ),
            (
                DatasetName::Cifar100,
                CifarKind::Cifar100,
                "cifar-100-binary",
            ),
        ] {
            let files = cifar_files(name);
            let parts: Vec<Dataset> = (0..files.len())
                .map(|i| random(2 + i, 3, 32, kind.classes(), 10 + i as u64))
                .collect();
            for sub in [None, Some(nested)] {
                let dir = TempDir::new();
                let base = sub.map_or(dir.0.clone(), |s| dir.0.join(s));
                fs::create_dir_all(&base).unwrap();
                for (f, ds) in files.iter().zip(&parts) {
                    fs::write(base.join(f), encode_cifar(ds, kind)).unwrap();
                }
                let s = load(name, Some(&dir.0)).unwrap();
                assert_eq!(s.test, parts[parts.len() - 1]);
                let mut train = parts[0].clone();
                for p in &parts[1..parts.len() - 1] {
                    train.images.extend_from_slice(&p.images);
                    train.labels.extend_from_slice(&p.labels);
                }
                assert_eq!(s.train, train);
                assert_eq!((s.train.channels, s.train.classes), (3, kind.classes()));

                // A damaged file is named.
                let bad = base.join(files[1]);
                fs::write(&bad, vec![0u8; 100]).unwrap();
                let m = load(name, Some(&dir.0)).unwrap_err().to_string();
                assert!(m.starts_with(&bad.display().to_string()), "{m}");
                assert!(m.contains("length 100 is not a multiple"), "{m}");
            }
        }
    }

    #[test]
    fn value_names() {
        use clap::ValueEnum;
        let names: Vec<String> = DatasetName::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(names, ["fashion-mnist", "mnist", "cifar10", "cifar100"]);
        for v in DatasetName::value_variants() {
            assert_eq!(v.to_string(), v.to_possible_value().unwrap().get_name());
        }
    }
}
