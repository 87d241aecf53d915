//! The CIFAR-10 and CIFAR-100 binary formats.
//!
//! A file is a sequence of fixed-size records: the label byte(s) then 3072
//! pixel bytes (a 3x32x32 image, channel-major: 1024 red, 1024 green, 1024
//! blue). CIFAR-10 records have one label byte; CIFAR-100 records have two,
//! the coarse (superclass) label then the fine label, of which the fine one
//! (100 classes) is used.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::Dataset;
use crate::error::{Error, Result};

/// Bytes of one CIFAR image (3x32x32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR binary format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CifarKind {
    /// 10 classes, one label byte per record.
    Cifar10,
    /// 100 fine classes, two label bytes (coarse, fine) per record.
    Cifar100,
}

impl CifarKind {
    /// Label bytes at the start of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Bytes per record: label bytes plus 3072 pixel bytes.
    pub fn record_len(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    /// Number of classes of the label that is used.
    pub fn classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// "CIFAR-10" or "CIFAR-100".
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 => "CIFAR-100",
        }
    }
}

/// Parses CIFAR binary files (for example `data_batch_1.bin` ..
/// `data_batch_5.bin`), concatenated in the given order, into a 3x32x32
/// dataset. Errors name the file by its position in `files` when there are
/// several.
pub fn parse_cifar(files: &[&[u8]], kind: CifarKind) -> Result<Dataset> {
    let name = kind.name();
    let record = kind.record_len();
    let classes = kind.classes();
    if files.is_empty() {
        return Err(Error::Data(format!("{name}: no files given")));
    }
    let mut total = 0usize;
    // "CIFAR-10 file 2" among several files, "CIFAR-10" for a single one.
    let which = |f: usize| {
        if files.len() > 1 {
            format!("{name} file {f}")
        } else {
            String::from(name)
        }
    };
    for (f, bytes) in files.iter().enumerate() {
        if bytes.is_empty() {
            return Err(Error::Data(format!("{}: empty", which(f))));
        }
        if bytes.len() % record != 0 {
            return Err(Error::Data(format!(
                "{}: length {} is not a multiple of the record size {record} \
                 ({} whole records and {} bytes over)",
                which(f),
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            )));
        }
        total += bytes.len() / record;
    }
    let mut images = Vec::with_capacity(total * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(total);
    for (f, bytes) in files.iter().enumerate() {
        for (r, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[kind.label_bytes() - 1];
            if usize::from(label) >= classes {
                return Err(Error::Data(format!(
                    "{}: label {label} of record {r} is not below the {classes} classes",
                    which(f)
                )));
            }
            labels.push(label);
            images.extend_from_slice(&rec[kind.label_bytes()..]);
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes,
    })
}

/// Writes `ds` as one CIFAR binary file, the inverse of [`parse_cifar`].
/// CIFAR-100's coarse label, which [`Dataset`] does not keep, is written as 0.
///
/// Panics if the images are not 3x32x32.
pub fn encode_cifar(ds: &Dataset, kind: CifarKind) -> Vec<u8> {
    assert!(
        ds.channels == 3 && ds.height == 32 && ds.width == 32,
        "CIFAR holds 3x32x32 images, the dataset has {}x{}x{}",
        ds.channels,
        ds.height,
        ds.width
    );
    let mut out = Vec::with_capacity(ds.len() * kind.record_len());
    for i in 0..ds.len() {
        if kind == CifarKind::Cifar100 {
            out.push(0);
        }
        out.push(ds.labels[i]);
        out.extend_from_slice(ds.image(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn sample(n: usize, classes: usize, seed: u64) -> Dataset {
        let mut rng = crate::rng::Rng::new(seed);
        let images = (0..n * IMAGE_BYTES).map(|_| rng.below(256) as u8).collect();
        let labels = (0..n).map(|_| rng.below(classes) as u8).collect();
        Dataset::new(images, labels, 3, 32, 32, classes).unwrap()
    }

    #[test]
    fn round_trip_both_kinds() {
        for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
            let d = sample(4, kind.classes(), 1);
            let bytes = encode_cifar(&d, kind);
            assert_eq!(bytes.len(), 4 * kind.record_len());
            assert_eq!(parse_cifar(&[&bytes], kind).unwrap(), d);
        }
    }

    #[test]
    fn files_are_concatenated_in_order() {
        let a = sample(2, 10, 2);
        let b = sample(3, 10, 3);
        let (ea, eb) = (
            encode_cifar(&a, CifarKind::Cifar10),
            encode_cifar(&b, CifarKind::Cifar10),
        );
        let d = parse_cifar(&[&ea, &eb], CifarKind::Cifar10).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d.labels[..2], a.labels[..]);
        assert_eq!(d.image(4), b.image(2));
    }

    #[test]
    fn cifar100_uses_fine_label() {
        let mut rec = vec![7u8, 93];
        rec.extend((0..IMAGE_BYTES).map(|i| (i % 256) as u8));
        let d = parse_cifar(&[&rec], CifarKind::Cifar100).unwrap();
        assert_eq!((d.labels[0], d.classes), (93, 100));
        // The same bytes are not a whole number of CIFAR-10 records.
        assert!(parse_cifar(&[&rec], CifarKind::Cifar10).is_err());
    }

    #[test]
    fn errors() {
        let good = encode_cifar(&sample(2, 10, 4), CifarKind::Cifar10);
        let m = parse_cifar(&[&good, &good[..5000]], CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("CIFAR-10 file 1: length 5000 is not a multiple of the record size 3073"),
            "{m}"
        );
        let m = parse_cifar(&[], CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(m.contains("no files"), "{m}");
        let m = parse_cifar(&[&good, &[]], CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(m.contains("file 1: empty"), "{m}");
        let mut bad = good.clone();
        bad[3073] = 10;
        let m = parse_cifar(&[&bad], CifarKind::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("CIFAR-10: label 10 of record 1 is not below"),
            "{m}"
        );
        let mut bad = encode_cifar(&sample(1, 100, 5), CifarKind::Cifar100);
        bad[1] = 100;
        assert!(parse_cifar(&[&bad], CifarKind::Cifar100).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            a in proptest::collection::vec(any::<u8>(), 0..7000),
            b in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let _ = parse_cifar(&[&a, &b], CifarKind::Cifar10);
            let _ = parse_cifar(&[&a], CifarKind::Cifar100);
            let _ = parse_cifar(&[&b, &a], CifarKind::Cifar100);
        }

        #[test]
        fn record_sized_random_bytes_never_panic(
            n in 1usize..3, fill in any::<u8>(), label in any::<u8>(),
        ) {
            for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
                let mut bytes = vec![fill; n * kind.record_len()];
                for rec in bytes.chunks_exact_mut(kind.record_len()) {
                    rec[kind.label_bytes() - 1] = label;
                }
                let r = parse_cifar(&[&bytes], kind);
                prop_assert_eq!(r.is_ok(), usize::from(label) < kind.classes());
            }
        }

        #[test]
        fn truncated_valid_files_are_errors(n in 1usize..4, cut in any::<usize>(), seed in any::<u64>()) {
            for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
                let d = sample(n, kind.classes(), seed);
                let bytes = encode_cifar(&d, kind);
                let c = cut % bytes.len();
                // Any strict prefix is empty or not a whole number of records,
                // unless it ends on a record boundary, where it is the records before.
                match parse_cifar(&[&bytes[..c]], kind) {
                    Ok(p) => {
                        prop_assert_eq!(c % kind.record_len(), 0);
                        prop_assert_eq!(p, d.subset(&(0..c / kind.record_len()).collect::<Vec<_>>()));
                    }
                    Err(_) => prop_assert!(c == 0 || !c.is_multiple_of(kind.record_len())),
                }
                prop_assert_eq!(parse_cifar(&[&bytes], kind).unwrap(), d);
            }
        }
    }

    /// Cases of each CIFAR fuzz test below.
    const CIFAR_FUZZ_CASES: u32 = 256;

    proptest! {
        #![proptest_config(ProptestConfig { cases: CIFAR_FUZZ_CASES, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..6200)) {
            for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
                if let Ok(d) = parse_cifar(&[&bytes], kind) {
                    prop_assert!(bytes.len().is_multiple_of(kind.record_len()));
                    prop_assert_eq!(d.images.len(), d.len() * IMAGE_BYTES);
                }
            }
        }

        #[test]
        fn fuzz_mutated_valid_files(
            seed in any::<u64>(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in 0usize..5,
        ) {
            for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
                let mut bytes = encode_cifar(&sample(2, kind.classes(), seed), kind);
                for &(pos, b) in &edits {
                    let at = pos % bytes.len();
                    bytes[at] = b;
                }
                bytes.truncate(bytes.len() - cut);
                let r = parse_cifar(&[&bytes, &bytes], kind);
                if cut != 0 {
                    prop_assert!(r.is_err());
                }
                if let Ok(d) = r {
                    prop_assert_eq!(d.len(), 4);
                    prop_assert!(d.labels.iter().all(|&l| usize::from(l) < kind.classes()));
                }
            }
        }
    }
}
