//! Loading datasets from disk (IDX, optionally gzipped; CIFAR binary) and the
//! Fashion-MNIST subset compiled into the binary.
//!
//! Every error is one line naming the file and what is wrong with it.

use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sprout_core::data::cifar::{parse_cifar, CifarKind, IMAGE_BYTES};
use sprout_core::data::idx::{
    images_header, labels_header, length_error, parse_idx, IMAGES_HEADER_LEN, LABELS_HEADER_LEN,
};
use sprout_core::data::{Dataset, Normalization};
use sprout_core::error::Error;

use crate::input::{InputSpec, Padding};

/// The datasets `sprout` can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DatasetName {
    /// Fashion-MNIST (IDX; Debian package dataset-fashion-mnist).
    #[cfg_attr(feature = "clap", value(name = "fashion-mnist"))]
    FashionMnist,
    /// MNIST handwritten digits (IDX).
    #[cfg_attr(feature = "clap", value(name = "mnist"))]
    Mnist,
    /// CIFAR-10, binary version.
    #[cfg_attr(feature = "clap", value(name = "cifar10"))]
    Cifar10,
    /// CIFAR-100, binary version (fine labels).
    #[cfg_attr(feature = "clap", value(name = "cifar100"))]
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

    /// The name of every class, by label (CIFAR-100: the fine labels).
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetName::FashionMnist => &FASHION_MNIST_CLASSES,
            DatasetName::Mnist => &MNIST_CLASSES,
            DatasetName::Cifar10 => &CIFAR10_CLASSES,
            DatasetName::Cifar100 => &CIFAR100_CLASSES,
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

/// Fashion-MNIST's classes, by label.
const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST's classes, by label.
const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// CIFAR-10's classes, by label (batches.meta.txt of the binary version).
const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100's fine classes, by label (fine_label_names.txt of the binary
/// version: alphabetical).
const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// A training and a test split.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
    /// Short name of the data, for logs and run records.
    pub name: String,
    /// The name of every class, by label.
    pub class_names: Vec<String>,
    /// The zero padding that took the files' images to the splits' shape.
    pub padding: Padding,
}

impl Splits {
    /// How a network trained on these splits with `normalization` (the
    /// statistics of the training images it saw) takes its images.
    pub fn input_spec(&self, normalization: Normalization) -> InputSpec {
        InputSpec {
            dataset: self.name.clone(),
            class_names: self.class_names.clone(),
            padding: self.padding,
            normalization,
        }
    }
}

/// The names of `name`'s classes as owned strings.
fn owned_class_names(name: DatasetName) -> Vec<String> {
    name.class_names().iter().map(|s| s.to_string()).collect()
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

/// Most pixel bytes one split (training or test set) may hold in memory once
/// padded: 2 GiB, about 2 million 1x32x32 images or 700,000 CIFAR images.
/// Files whose headers (or sizes) declare more are refused before anything
/// is read.
pub const MAX_DATASET_BYTES: u64 = 1 << 31;

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Which of the two IDX files of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxPart {
    Images,
    Labels,
}

/// Reads up to `n` bytes (fewer only at the end of the stream).
fn read_up_to(reader: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    reader.take(n as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// The shape images of `rows x cols` have in memory: padded to
/// [`IMAGE_SIZE`] when they fit, as they are otherwise.
fn padded_side(rows: usize, cols: usize) -> (usize, usize) {
    if rows <= IMAGE_SIZE && cols <= IMAGE_SIZE {
        (IMAGE_SIZE, IMAGE_SIZE)
    } else {
        (rows, cols)
    }
}

/// Refuses `count` images of `c x h x w`, held as `c x ph x pw`, above
/// [`MAX_DATASET_BYTES`]; `what` names the file.
fn check_dataset_size(what: &str, count: u64, shape: [usize; 3], held: [usize; 3]) -> Result<()> {
    let per_image = (held[0] as u128) * (held[1] as u128) * (held[2] as u128);
    let bytes = u128::from(count) * per_image;
    if bytes > u128::from(MAX_DATASET_BYTES) {
        bail!(
            "{what}: {count} images of {}x{}x{} take {bytes} bytes as {}x{}x{}, more than the limit of {MAX_DATASET_BYTES} bytes per split",
            shape[0],
            shape[1],
            shape[2],
            held[0],
            held[1],
            held[2]
        );
    }
    Ok(())
}

/// Reads one IDX file from `reader`, gunzipped if it starts with the gzip
/// magic; `what` names it in errors. The header is read and checked first
/// (magic, dimensions, the in-memory size limit, and for labels
/// `expect_count`), then at most the bytes it declares plus one, so a
/// damaged header or a gzip bomb costs no more memory than the header
/// allows. `file_len` (the size on disk, for an uncompressed file) is checked
/// against the header before the payload is read.
pub fn read_idx_from(
    what: &str,
    mut reader: impl Read,
    file_len: Option<u64>,
    part: IdxPart,
    expect_count: Option<usize>,
) -> Result<Vec<u8>> {
    let header_len = match part {
        IdxPart::Images => IMAGES_HEADER_LEN,
        IdxPart::Labels => LABELS_HEADER_LEN,
    };
    let io = |e: std::io::Error| anyhow!("{what}: {e}");
    let prefix = read_up_to(&mut reader, header_len).map_err(io)?;
    let gz = prefix.starts_with(&GZIP_MAGIC);
    let gzip_err = |e: std::io::Error| anyhow!("{what}: invalid gzip: {e}");
    let mut stream: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(
            Cursor::new(prefix).chain(reader),
        ))
    } else {
        Box::new(Cursor::new(prefix).chain(reader))
    };
    let head =
        read_up_to(&mut stream, header_len).map_err(|e| if gz { gzip_err(e) } else { io(e) })?;
    let part_name = match part {
        IdxPart::Images => "IDX images",
        IdxPart::Labels => "IDX labels",
    };
    let h = match part {
        IdxPart::Images => images_header(&head),
        IdxPart::Labels => labels_header(&head),
    }
    .with_context(|| what.to_string())?;
    match part {
        IdxPart::Images => {
            let (n, rows, cols) = (h.dims[0], h.dims[1], h.dims[2]);
            let (ph, pw) = padded_side(rows, cols);
            check_dataset_size(what, n as u64, [1, rows, cols], [1, ph, pw])?;
        }
        IdxPart::Labels => {
            let n = h.dims[0];
            if let Some(want) = expect_count.filter(|&w| w != n) {
                bail!("{what}: invalid data: {part_name}: count mismatch: {n} labels for {want} images");
            }
            if n as u64 > MAX_DATASET_BYTES {
                bail!(
                    "{what}: {n} labels are more than the limit of {MAX_DATASET_BYTES} per split"
                );
            }
        }
    }
    if let Some(len) = file_len.filter(|_| !gz) {
        let found = usize::try_from(len).unwrap_or(usize::MAX);
        let part = match part {
            IdxPart::Images => "images",
            IdxPart::Labels => "labels",
        };
        if let Some(e) = length_error(part, h.file_len, found) {
            bail!("{what}: {e}");
        }
    }
    let payload = h.file_len - h.header_len;
    let mut bytes = Vec::with_capacity(h.file_len);
    bytes.extend_from_slice(&head);
    stream
        .take(payload as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| if gz { gzip_err(e) } else { io(e) })?;
    if bytes.len() > h.file_len {
        bail!(
            "{what}: invalid data: {part_name}: trailing data after the {} bytes the header declares",
            h.file_len
        );
    }
    Ok(bytes)
}

/// The Fashion-MNIST subset compiled into the binary: the first 600 training
/// images and the first 100 test images of each class (6,000 and 1,000), padded
/// to 1x32x32. See lab/data/fashion-mnist-embedded/README.md.
pub fn embedded() -> Result<Splits> {
    let split = |images: &[u8], labels: &[u8], which: &str| -> Result<(Dataset, Padding)> {
        let what = format!("embedded Fashion-MNIST {which}");
        let images = read_idx_from(&what, images, None, IdxPart::Images, None)?;
        let labels = read_idx_from(&what, labels, None, IdxPart::Labels, None)?;
        let ds = parse_idx(&images, &labels, 10).with_context(|| what.clone())?;
        let padding = Padding::centred([ds.channels, ds.height, ds.width], IMAGE_SIZE, IMAGE_SIZE);
        let ds = ds
            .pad_to(IMAGE_SIZE, IMAGE_SIZE)
            .with_context(|| what.clone())?;
        Ok((ds, padding))
    };
    let (train, padding) = split(EMBEDDED_TRAIN_IMAGES, EMBEDDED_TRAIN_LABELS, "training set")?;
    let (test, _) = split(EMBEDDED_TEST_IMAGES, EMBEDDED_TEST_LABELS, "test set")?;
    Ok(Splits {
        train,
        test,
        name: "fashion-mnist-embedded".into(),
        class_names: owned_class_names(DatasetName::FashionMnist),
        padding,
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
    let (train, test, padding) = match name {
        DatasetName::FashionMnist | DatasetName::Mnist => load_idx(name, dir)?,
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            let (train, test) = load_cifar(name, dir)?;
            let shape = [train.channels, train.height, train.width];
            (train, test, Padding::none(shape))
        }
    };
    Ok(Splits {
        train,
        test,
        name: name.as_str().into(),
        class_names: owned_class_names(name),
        padding,
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

/// Whether anything (a file, a directory, a dangling link) is at `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Opens `path` if it is a regular file (after following links) and returns
/// it with its size; anything else (a FIFO, a device, a directory) is "not a
/// regular file". The type is checked before opening, which would block on a
/// FIFO.
fn open_regular(path: &Path) -> Result<(fs::File, u64)> {
    let meta = fs::metadata(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    let f = fs::File::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((f, meta.len()))
}

/// Reads `dir/base` or `dir/base.gz` (see [`read_idx_from`]); returns the
/// bytes, gunzipped, and the path used.
fn read_idx_file(
    name: DatasetName,
    dir: &Path,
    base: &str,
    part: IdxPart,
    expect_count: Option<usize>,
) -> Result<(Vec<u8>, PathBuf)> {
    let plain = dir.join(base);
    let gz = dir.join(format!("{base}.gz"));
    let path = if exists(&plain) {
        plain
    } else if exists(&gz) {
        gz
    } else {
        bail!("missing {}[.gz]: {}", plain.display(), install_hint(name));
    };
    let (file, len) = open_regular(&path)?;
    let what = path.display().to_string();
    let bytes = read_idx_from(
        &what,
        std::io::BufReader::new(file),
        Some(len),
        part,
        expect_count,
    )?;
    Ok((bytes, path))
}

/// Refuses a test split whose images or classes differ from the training
/// split's, naming both files.
fn check_same_shape(
    train: &Dataset,
    train_file: &Path,
    test: &Dataset,
    test_file: &Path,
) -> Result<()> {
    let shape = |d: &Dataset| format!("{}x{}x{}", d.channels, d.height, d.width);
    if (train.channels, train.height, train.width) != (test.channels, test.height, test.width) {
        bail!(
            "{} holds {} training images but {} holds {} test images; both splits need the same image shape",
            train_file.display(),
            shape(train),
            test_file.display(),
            shape(test)
        );
    }
    if train.classes != test.classes {
        bail!(
            "{} has {} classes but {} has {}; both splits need the same classes",
            train_file.display(),
            train.classes,
            test_file.display(),
            test.classes
        );
    }
    Ok(())
}

/// The IDX splits of `name` in `dir`, and the padding of the training
/// images (the test images have the same shape).
fn load_idx(name: DatasetName, dir: &Path) -> Result<(Dataset, Dataset, Padding)> {
    let split = |images: &str, labels: &str| -> Result<(Dataset, PathBuf, Padding)> {
        let (ib, ip) = read_idx_file(name, dir, images, IdxPart::Images, None)?;
        let count = images_header(&ib).ok().map(|h| h.dims[0]);
        let (lb, lp) = read_idx_file(name, dir, labels, IdxPart::Labels, count)?;
        let ds = parse_idx(&ib, &lb, 10).map_err(|e| {
            // The message says which of the two files is at fault.
            let path = match &e {
                Error::Data(m) if m.starts_with("IDX labels") => &lp,
                _ => &ip,
            };
            let path = path.display().to_string();
            anyhow::Error::new(e).context(path)
        })?;
        drop((ib, lb));
        let source = [ds.channels, ds.height, ds.width];
        if ds.height > IMAGE_SIZE || ds.width > IMAGE_SIZE {
            return Ok((ds, ip, Padding::none(source)));
        }
        let ds = ds
            .pad_to(IMAGE_SIZE, IMAGE_SIZE)
            .with_context(|| ip.display().to_string())?;
        Ok((ds, ip, Padding::centred(source, IMAGE_SIZE, IMAGE_SIZE)))
    };
    let (train, train_file, padding) = split(TRAIN_IMAGES, TRAIN_LABELS)?;
    let (test, test_file, _) = split(TEST_IMAGES, TEST_LABELS)?;
    check_same_shape(&train, &train_file, &test, &test_file)?;
    Ok((train, test, padding))
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
    // Records of the training files so far (the test file is counted alone).
    let mut train_records = 0u64;
    for (i, file) in files.iter().enumerate() {
        let path = base.join(file);
        if !exists(&path) {
            bail!("missing {}: {}", path.display(), install_hint(name));
        }
        let (f, len) = open_regular(&path)?;
        let what = path.display().to_string();
        let records = len / kind.record_len() as u64;
        let counted = if i + 1 == files.len() {
            records
        } else {
            train_records += records;
            train_records
        };
        check_dataset_size(&what, counted, [3, 32, 32], [3, 32, 32])?;
        if len % kind.record_len() as u64 != 0 || len == 0 {
            // parse_cifar words the error; the file is not read.
            let e = parse_cifar(&[&[]], kind)
                .err()
                .filter(|_| len == 0)
                .map(|e| e.to_string())
                .unwrap_or_else(|| {
                    format!(
                        "invalid data: {}: length {len} is not a multiple of the record size {} ({records} whole records and {} bytes over)",
                        kind.name(),
                        kind.record_len(),
                        len % kind.record_len() as u64
                    )
                });
            bail!("{what}: {e}");
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("{what}: {e}"))?;
        let ds = parse_cifar(&[&bytes], kind).with_context(|| what.to_string())?;
        debug_assert_eq!(ds.images.len(), records as usize * IMAGE_BYTES);
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
    /// The line `sprout` prints for an error.
    trait Said {
        fn said(self) -> String;
    }

    impl Said for anyhow::Error {
        fn said(self) -> String {
            format!("{self:#}")
        }
    }

    use super::*;
    use sprout_core::data::cifar::encode_cifar;
    use sprout_core::data::idx::encode_idx;
    use sprout_core::rng::Rng;
    use std::io::Write;

    pub(crate) use crate::scratch::TempDir;

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
        let p = s.padding;
        assert_eq!(p.source, [1, 28, 28]);
        assert_eq!((p.top, p.bottom, p.left, p.right), (2, 2, 2, 2));
        assert_eq!(s.class_names.len(), 10);
        assert_eq!(s.class_names[9], "Ankle boot");
    }

    #[test]
    fn every_dataset_names_its_classes() {
        for (name, n) in [
            (DatasetName::FashionMnist, 10),
            (DatasetName::Mnist, 10),
            (DatasetName::Cifar10, 10),
            (DatasetName::Cifar100, 100),
        ] {
            let names = name.class_names();
            assert_eq!(names.len(), n, "{name}");
            let unique: std::collections::HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), n, "{name}");
        }
        // CIFAR-100's fine label names are in alphabetical order.
        let fine = DatasetName::Cifar100.class_names();
        assert!(fine.windows(2).all(|w| w[0] < w[1]));
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
            let dir = TempDir::new("data");
            write_idx(&dir.0, &train, &test, gz);
            let s = load(DatasetName::Mnist, Some(&dir.0)).unwrap();
            assert_eq!(s.name, "mnist");
            assert_eq!(s.train, train.pad_to(32, 32).unwrap());
            assert_eq!(s.test, test.pad_to(32, 32).unwrap());
        }
        // Gzip is recognised by content, not by name.
        let dir = TempDir::new("data");
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
        let dir = TempDir::new("data");
        write_idx(
            &dir.0,
            &random(4, 1, 28, 10, 3),
            &random(2, 1, 28, 10, 4),
            false,
        );
        let path = dir.0.join(TRAIN_IMAGES);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let m = load(DatasetName::Mnist, Some(&dir.0)).unwrap_err().said();
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
        let m = load(DatasetName::Mnist, Some(&dir.0)).unwrap_err().said();
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
        let m = load(DatasetName::Mnist, Some(&dir.0)).unwrap_err().said();
        assert!(
            m.starts_with(&gz_path.display().to_string()) && m.contains("gzip"),
            "{m}"
        );
    }

    #[test]
    fn missing_files_say_what_to_do() {
        let dir = TempDir::new("data");
        let m = load(DatasetName::FashionMnist, Some(&dir.0))
            .unwrap_err()
            .said();
        let want = format!("missing {}", dir.0.join(TRAIN_IMAGES).display());
        assert!(m.starts_with(&want), "{m}");
        assert!(
            m.contains("dataset-fashion-mnist") && m.contains("--data DIR"),
            "{m}"
        );
        for name in [DatasetName::Cifar10, DatasetName::Cifar100] {
            let m = load(name, None).unwrap_err().said();
            assert!(m.contains("--data DIR"), "{m}");
            let m = load(name, Some(&dir.0)).unwrap_err().said();
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
                let dir = TempDir::new("data");
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
                let m = load(name, Some(&dir.0)).unwrap_err().said();
                assert!(m.starts_with(&bad.display().to_string()), "{m}");
                assert!(m.contains("length 100 is not a multiple"), "{m}");
            }
        }
    }

    #[cfg(feature = "clap")]
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

    #[test]
    fn headers_are_checked_before_payloads_are_read() {
        // 2^24 images of 1x1: 16 GiB padded, refused from the header alone.
        let mut h = vec![0, 0, 8, 3];
        for d in [1u32 << 24, 1, 1] {
            h.extend_from_slice(&d.to_be_bytes());
        }
        let m = read_idx_from("f", &gzip(&h)[..], None, IdxPart::Images, None)
            .unwrap_err()
            .said();
        assert_eq!(
            m,
            format!(
                "f: 16777216 images of 1x1x1 take 17179869184 bytes as 1x32x32, more than the limit of {MAX_DATASET_BYTES} bytes per split"
            )
        );
        // An uncompressed file of the wrong size is refused from its length.
        let (images, labels) = encode_idx(&random(2, 1, 4, 10, 1));
        let m = read_idx_from("f", &images[..16], Some(1 << 40), IdxPart::Images, None)
            .unwrap_err()
            .said();
        assert!(
            m.starts_with("f: invalid data: IDX images:") && m.contains("trailing bytes"),
            "{m}"
        );
        // Gzip is decompressed only up to the declared size plus one byte.
        let mut long = images.clone();
        long.extend(vec![0u8; 1 << 20]);
        let m = read_idx_from("f", &gzip(&long)[..], None, IdxPart::Images, None)
            .unwrap_err()
            .said();
        assert!(m.contains("trailing data after the 48 bytes"), "{m}");
        // Labels for another number of images are refused from the header.
        let m = read_idx_from("l", &labels[..], None, IdxPart::Labels, Some(3))
            .unwrap_err()
            .said();
        assert!(m.contains("count mismatch: 2 labels for 3 images"), "{m}");
        assert_eq!(
            read_idx_from("f", &gzip(&images)[..], None, IdxPart::Images, None).unwrap(),
            images
        );
    }

    #[test]
    fn special_files_are_not_regular() {
        let dir = TempDir::new("data");
        let link = dir.0.join(TRAIN_IMAGES);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let m = load(DatasetName::Mnist, Some(&dir.0)).unwrap_err().said();
        assert_eq!(m, format!("{}: not a regular file", link.display()));
    }

    /// Cases of each gzip-wrapper fuzz test below.
    const GZIP_FUZZ_CASES: u32 = 256;

    /// Ok results hold exactly the file the header declares.
    fn check_read(
        r: Result<Vec<u8>>,
        part: IdxPart,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Ok(bytes) = r {
            let h = match part {
                IdxPart::Images => images_header(&bytes),
                IdxPart::Labels => labels_header(&bytes),
            };
            proptest::prop_assert!(h.is_ok_and(|h| h.file_len >= bytes.len()));
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: GZIP_FUZZ_CASES, ..Default::default() })]

        #[test]
        fn fuzz_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            gz_magic in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = bytes;
            if gz_magic && bytes.len() >= 2 {
                bytes[..2].copy_from_slice(&GZIP_MAGIC);
            }
            for part in [IdxPart::Images, IdxPart::Labels] {
                let len = Some(bytes.len() as u64);
                check_read(read_idx_from("fuzz", &bytes[..], len, part, None), part)?;
                check_read(read_idx_from("fuzz", &bytes[..], None, part, Some(3)), part)?;
            }
        }

        #[test]
        fn fuzz_mutated_gzip_files(
            seed in proptest::prelude::any::<u64>(),
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
            cut in 0usize..8,
        ) {
            let ds = random(3, 1, 5, 10, seed);
            let (images, labels) = encode_idx(&ds);
            for (raw, part) in [(images, IdxPart::Images), (labels, IdxPart::Labels)] {
                let mut g = gzip(&raw);
                for &(pos, b) in &edits {
                    let at = pos % g.len();
                    g[at] = b;
                }
                g.truncate(g.len().saturating_sub(cut));
                let r = read_idx_from("fuzz", &g[..], Some(g.len() as u64), part, None);
                if edits.is_empty() && cut == 0 {
                    proptest::prop_assert_eq!(r.as_deref().ok(), Some(&raw[..]));
                }
                check_read(r, part)?;
            }
        }
    }
}
