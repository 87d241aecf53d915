//! The IDX format of MNIST and Fashion-MNIST.
//!
//! An image file is the magic `0x00000803`, then the image count, rows and
//! columns (big-endian `u32`), then `count * rows * cols` pixel bytes. A label
//! file is the magic `0x00000801`, the count, then one byte per label. The
//! files are parsed uncompressed; opening gzip is left to the caller.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::Dataset;
use crate::error::{Error, Result};

/// Magic number of an IDX file of `u8` with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of `u8` with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn data_err(part: &str, what: String) -> Error {
    Error::Data(format!("IDX {part}: {what}"))
}

/// Bytes of an image file's header: magic, count, rows, columns.
pub const IMAGES_HEADER_LEN: usize = 16;
/// Bytes of a label file's header: magic, count.
pub const LABELS_HEADER_LEN: usize = 8;

/// What the header of an IDX file declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxHeader {
    /// The dimensions: `[count, rows, cols]` for images, `[count]` for labels.
    pub dims: Vec<usize>,
    /// Bytes of the header.
    pub header_len: usize,
    /// Bytes of the whole file the header describes (header and payload).
    pub file_len: usize,
}

/// Checks the header at the start of `bytes` (at least `4 + 4 * ndims`
/// bytes; more are ignored) and returns what it declares.
fn declared(part: &str, bytes: &[u8], magic: u32, ndims: usize) -> Result<IdxHeader> {
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(data_err(
            part,
            format!(
                "truncated header: expected {header_len} bytes, found {}",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(data_err(
            part,
            format!("wrong magic {found:#010x}, expected {magic:#010x}"),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    if dims.contains(&0) {
        let shown: Vec<String> = dims.iter().map(|d| format!("{d}")).collect();
        return Err(data_err(
            part,
            format!("zero-sized dimensions {}", shown.join("x")),
        ));
    }
    let file_len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|p| p.checked_add(header_len))
        .ok_or_else(|| data_err(part, format!("dimensions {dims:?} overflow")))?;
    Ok(IdxHeader {
        dims,
        header_len,
        file_len,
    })
}

/// Checks the header of an IDX image file from its first
/// [`IMAGES_HEADER_LEN`] bytes (or more), without looking at the payload, so
/// a caller can check the file's size before reading it.
pub fn images_header(bytes: &[u8]) -> Result<IdxHeader> {
    declared("images", bytes, IMAGES_MAGIC, 3)
}

/// Checks the header of an IDX label file from its first
/// [`LABELS_HEADER_LEN`] bytes (or more); see [`images_header`].
pub fn labels_header(bytes: &[u8]) -> Result<IdxHeader> {
    declared("labels", bytes, LABELS_MAGIC, 1)
}

/// The error for a file of `found` bytes whose header declares `expected`,
/// or `None` when they agree.
pub fn length_error(part: &str, expected: usize, found: usize) -> Option<Error> {
    if found < expected {
        Some(data_err(
            part,
            format!("truncated: expected {expected} bytes, found {found}"),
        ))
    } else if found > expected {
        Some(data_err(
            part,
            format!(
                "{} trailing bytes: expected {expected} bytes, found {found}",
                found - expected
            ),
        ))
    } else {
        None
    }
}

/// Checks the header of one IDX file; returns its dimensions and the payload.
fn header<'a>(
    part: &str,
    bytes: &'a [u8],
    magic: u32,
    ndims: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    let h = declared(part, bytes, magic, ndims)?;
    if let Some(e) = length_error(part, h.file_len, bytes.len()) {
        return Err(e);
    }
    Ok((h.dims, &bytes[h.header_len..]))
}

/// Parses an IDX image file and its label file (both uncompressed) into a
/// one-channel dataset with `classes` classes.
pub fn parse_idx(images: &[u8], labels: &[u8], classes: usize) -> Result<Dataset> {
    let (idims, pixels) = header("images", images, IMAGES_MAGIC, 3)?;
    let (ldims, label_bytes) = header("labels", labels, LABELS_MAGIC, 1)?;
    let (n, rows, cols) = (idims[0], idims[1], idims[2]);
    if ldims[0] != n {
        return Err(Error::Data(format!(
            "IDX labels: count mismatch: {} labels for {n} images",
            ldims[0]
        )));
    }
    if let Some((i, &l)) = label_bytes
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= classes)
    {
        return Err(data_err(
            "labels",
            format!("label {l} at index {i} is not below the {classes} classes"),
        ));
    }
    Ok(Dataset {
        images: pixels.to_vec(),
        labels: label_bytes.to_vec(),
        channels: 1,
        height: rows,
        width: cols,
        classes,
    })
}

/// Writes `ds` as an IDX image file and an IDX label file (uncompressed),
/// the inverse of [`parse_idx`].
///
/// Panics if `ds` has more than one channel or a dimension beyond `u32`.
pub fn encode_idx(ds: &Dataset) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(
        ds.channels, 1,
        "IDX holds one-channel images, the dataset has {} channels",
        ds.channels
    );
    let dim = |d: usize| -> [u8; 4] {
        u32::try_from(d)
            .expect("IDX dimension exceeds u32")
            .to_be_bytes()
    };
    let mut images = Vec::with_capacity(16 + ds.images.len());
    images.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    images.extend_from_slice(&dim(ds.len()));
    images.extend_from_slice(&dim(ds.height));
    images.extend_from_slice(&dim(ds.width));
    images.extend_from_slice(&ds.images);
    let mut labels = Vec::with_capacity(8 + ds.labels.len());
    labels.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    labels.extend_from_slice(&dim(ds.len()));
    labels.extend_from_slice(&ds.labels);
    (images, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn sample() -> Dataset {
        Dataset::new(
            (0..5 * 3 * 4).map(|i| i as u8).collect(),
            vec![0, 1, 2, 1, 0],
            1,
            3,
            4,
            3,
        )
        .unwrap()
    }

    fn msg(r: Result<Dataset>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn round_trip() {
        let d = sample();
        let (i, l) = encode_idx(&d);
        assert_eq!(i.len(), 16 + 60);
        assert_eq!(&i[..4], &[0, 0, 8, 3]);
        assert_eq!(parse_idx(&i, &l, 3).unwrap(), d);
    }

    #[test]
    fn errors_name_the_file_and_defect() {
        let (i, l) = encode_idx(&sample());
        let mut bad = i.clone();
        bad[3] = 1;
        let m = msg(parse_idx(&bad, &l, 3));
        assert!(
            m.contains("IDX images") && m.contains("wrong magic 0x00000801"),
            "{m}"
        );
        assert!(m.contains("expected 0x00000803"), "{m}");
        let m = msg(parse_idx(&i, &i, 3));
        assert!(
            m.contains("IDX labels") && m.contains("expected 0x00000801"),
            "{m}"
        );
        let m = msg(parse_idx(&i[..i.len() - 1], &l, 3));
        assert!(
            m.contains("IDX images: truncated: expected 76 bytes, found 75"),
            "{m}"
        );
        let m = msg(parse_idx(&i, &l[..6], 3));
        assert!(m.contains("IDX labels: truncated header"), "{m}");
        let m = msg(parse_idx(&i, &l[..l.len() - 2], 3));
        assert!(m.contains("IDX labels: truncated"), "{m}");
        let m = msg(parse_idx(&i, &l, 2));
        assert!(m.contains("label 2 at index 2"), "{m}");

        let mut fewer = l.clone();
        fewer[7] = 4;
        fewer.pop();
        let m = msg(parse_idx(&i, &fewer, 3));
        assert!(m.contains("count mismatch: 4 labels for 5 images"), "{m}");

        let mut zero = i.clone();
        zero[8..12].copy_from_slice(&[0; 4]);
        let m = msg(parse_idx(&zero, &l, 3));
        assert!(m.contains("zero-sized dimensions 5x0x4"), "{m}");

        let mut huge = i.clone();
        for b in &mut huge[4..16] {
            *b = 0xff;
        }
        assert!(parse_idx(&huge, &l, 3).is_err());

        let mut long = i.clone();
        long.push(0);
        let m = msg(parse_idx(&long, &l, 3));
        assert!(m.contains("1 trailing bytes"), "{m}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            images in proptest::collection::vec(any::<u8>(), 0..64),
            labels in proptest::collection::vec(any::<u8>(), 0..32),
            classes in 0usize..300,
        ) {
            let _ = parse_idx(&images, &labels, classes);
        }

        #[test]
        fn random_headers_never_panic(
            dims in proptest::array::uniform3(any::<u32>()),
            n_labels in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut images = IMAGES_MAGIC.to_be_bytes().to_vec();
            for d in dims {
                images.extend_from_slice(&d.to_be_bytes());
            }
            images.extend_from_slice(&tail);
            let mut labels = LABELS_MAGIC.to_be_bytes().to_vec();
            labels.extend_from_slice(&n_labels.to_be_bytes());
            labels.extend_from_slice(&tail);
            let _ = parse_idx(&images, &labels, 10);
        }

        #[test]
        fn truncated_valid_files_are_errors(
            n in 1usize..6, h in 1usize..5, w in 1usize..5, seed in any::<u64>(),
            cut_i in any::<usize>(), cut_l in any::<usize>(),
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let pixels = (0..n * h * w).map(|_| rng.below(256) as u8).collect();
            let labels = (0..n).map(|_| rng.below(10) as u8).collect();
            let d = Dataset::new(pixels, labels, 1, h, w, 10).unwrap();
            let (i, l) = encode_idx(&d);
            let ci = cut_i % i.len();
            let cl = cut_l % l.len();
            prop_assert!(parse_idx(&i[..ci], &l, 10).is_err());
            prop_assert!(parse_idx(&i, &l[..cl], 10).is_err());
            prop_assert_eq!(parse_idx(&i, &l, 10).unwrap(), d);
        }
    }

    /// Cases of each IDX fuzz test below.
    const IDX_FUZZ_CASES: u32 = 512;

    /// A valid pair of files, then `edits` (position, byte) applied to the
    /// images (even positions) or labels (odd), then cut or extended.
    fn mutated(seed: u64, edits: &[(usize, u8)], cut: usize, extra: usize) -> (Vec<u8>, Vec<u8>) {
        let mut rng = crate::rng::Rng::new(seed);
        let (n, h, w) = (1 + rng.below(4), 1 + rng.below(6), 1 + rng.below(6));
        let pixels = (0..n * h * w).map(|_| rng.below(256) as u8).collect();
        let labels = (0..n).map(|_| rng.below(10) as u8).collect();
        let (mut i, mut l) = encode_idx(&Dataset::new(pixels, labels, 1, h, w, 10).unwrap());
        for &(pos, b) in edits {
            let f = if pos.is_multiple_of(2) {
                &mut i
            } else {
                &mut l
            };
            let at = (pos / 2) % f.len();
            f[at] = b;
        }
        let f = if cut.is_multiple_of(2) {
            &mut i
        } else {
            &mut l
        };
        let keep = f.len() - (cut / 2) % (f.len() + 1).min(4);
        f.truncate(keep);
        i.extend(core::iter::repeat_n(0u8, extra % 3));
        (i, l)
    }

    /// Ok results are consistent datasets.
    fn check(r: Result<Dataset>) -> core::result::Result<(), TestCaseError> {
        if let Ok(d) = r {
            prop_assert_eq!(d.images.len(), d.len() * d.height * d.width);
            prop_assert!(d.labels.iter().all(|&l| l < 10));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: IDX_FUZZ_CASES, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_arbitrary_bytes(
            images in proptest::collection::vec(any::<u8>(), 0..96),
            labels in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            check(parse_idx(&images, &labels, 10))?;
            let _ = images_header(&images);
            let _ = labels_header(&labels);
        }

        #[test]
        fn fuzz_mutated_valid_files(
            seed in any::<u64>(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            extra in any::<usize>(),
        ) {
            let (i, l) = mutated(seed, &edits, cut, extra);
            let r = parse_idx(&i, &l, 10);
            // A header that declares what the file holds parses.
            if let (Ok(hi), Ok(hl)) = (images_header(&i), labels_header(&l)) {
                let whole = hi.file_len == i.len() && hl.file_len == l.len() && hi.dims[0] == hl.dims[0];
                if !whole {
                    prop_assert!(r.is_err());
                }
            }
            check(r)?;
        }
    }
}
