//! In-memory datasets of `u8` images and their per-channel normalisation.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// Images with one label each, pixels as stored on disk (`u8`, 0..=255).
///
/// `images` holds `len() * channels * height * width` bytes in NCHW order;
/// `labels[i]` is the class of image `i`, below `classes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, NCHW.
    pub images: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u8>,
    /// Channels per image.
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
}

impl Dataset {
    /// A dataset after checking that the sizes agree and every label is below
    /// `classes`.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Dataset> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(Error::Data(format!(
                "zero-sized image shape {channels}x{height}x{width}"
            )));
        }
        if classes == 0 {
            return Err(Error::Data("zero classes".into()));
        }
        let image_len = channels
            .checked_mul(height)
            .and_then(|x| x.checked_mul(width))
            .ok_or_else(|| {
                Error::Data(format!("image shape {channels}x{height}x{width} overflows"))
            })?;
        let expected = labels.len().checked_mul(image_len).ok_or_else(|| {
            Error::Data(format!(
                "{} images of {image_len} bytes overflow",
                labels.len()
            ))
        })?;
        if images.len() != expected {
            return Err(Error::Data(format!(
                "{} labels need {expected} pixel bytes of {channels}x{height}x{width} images, found {}",
                labels.len(),
                images.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(Error::Data(format!(
                "label {l} of image {i} is not below the {classes} classes"
            )));
        }
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (CHW). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The images zero-padded to `height x width`, centred (28x28 to 32x32 adds
    /// 2 pixels on each side; an odd surplus puts the extra pixel at the bottom
    /// or right). Errors if the target is smaller than the current size.
    pub fn pad_to(&self, height: usize, width: usize) -> Result<Dataset> {
        if height < self.height || width < self.width {
            return Err(Error::Mismatch(format!(
                "cannot pad {}x{} images to the smaller {height}x{width}",
                self.height, self.width
            )));
        }
        if height == self.height && width == self.width {
            return Ok(self.clone());
        }
        let top = (height - self.height) / 2;
        let left = (width - self.width) / 2;
        let planes = self.len() * self.channels;
        let total = planes
            .checked_mul(height)
            .and_then(|x| x.checked_mul(width))
            .ok_or_else(|| {
                Error::Data(format!(
                    "{} images padded to {}x{height}x{width} overflow",
                    self.len(),
                    self.channels
                ))
            })?;
        let mut images = vec![0u8; total];
        let src_plane = self.height * self.width;
        let dst_plane = height * width;
        for p in 0..planes {
            let src = &self.images[p * src_plane..(p + 1) * src_plane];
            let dst = &mut images[p * dst_plane..(p + 1) * dst_plane];
            for (y, row) in src.chunks_exact(self.width).enumerate() {
                let start = (top + y) * width + left;
                dst[start..start + self.width].copy_from_slice(row);
            }
        }
        Ok(Dataset {
            images,
            labels: self.labels.clone(),
            channels: self.channels,
            height,
            width,
            classes: self.classes,
        })
    }

    /// The images at `indices`, in that order (repeats allowed). Panics if an
    /// index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }

    /// Number of images of each class (length `classes`; labels not below
    /// `classes` are not counted).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// The first `per_class` images of every class, kept in file order.
    /// Errors if some class has fewer.
    pub fn balanced_subset(&self, per_class: usize) -> Result<Dataset> {
        let counts = self.class_counts();
        if let Some((c, &n)) = counts.iter().enumerate().find(|&(_, &n)| n < per_class) {
            return Err(Error::Data(format!(
                "class {c} has {n} images, fewer than the {per_class} per class requested"
            )));
        }
        let mut taken = vec![0usize; self.classes];
        let mut indices = Vec::with_capacity(per_class * self.classes);
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(t) = taken.get_mut(usize::from(l)) {
                if *t < per_class {
                    *t += 1;
                    indices.push(i);
                }
            }
        }
        Ok(self.subset(&indices))
    }
}

/// Per-channel mean and standard deviation of pixels scaled to [0, 1]; a
/// pixel `x` normalises to `(x / 255 - mean[c]) / std[c]`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Normalization {
    /// Per-channel mean of the pixels scaled to `[0, 1]`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the pixels scaled to `[0, 1]`.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Statistics of `ds` over all its images. A channel whose standard
    /// deviation is (nearly) zero gets 1 so that normalising stays finite; an
    /// empty dataset gives mean 0 and std 1.
    pub fn of(ds: &Dataset) -> Normalization {
        let c = ds.channels;
        let plane = ds.height * ds.width;
        // Exact integer sums: 255^2 * 2^40 pixels still fit in u64 per channel.
        let mut sum = vec![0u64; c];
        let mut sum_sq = vec![0u64; c];
        if plane > 0 {
            for (p, pixels) in ds.images.chunks_exact(plane).enumerate() {
                let ch = p % c;
                let (mut s, mut s2) = (0u64, 0u64);
                for &x in pixels {
                    let x = u64::from(x);
                    s += x;
                    s2 += x * x;
                }
                sum[ch] += s;
                sum_sq[ch] += s2;
            }
        }
        let count = (ds.len() * plane) as f64;
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for ch in 0..c {
            if count == 0.0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let m = sum[ch] as f64 / count / 255.0;
            let var = (sum_sq[ch] as f64 / count / (255.0 * 255.0) - m * m).max(0.0);
            let s = libm::sqrt(var);
            mean.push(m as f32);
            std.push(if s < 1e-6 { 1.0 } else { s as f32 });
        }
        Normalization { mean, std }
    }

    /// Mean 0 and std 1 on every channel: pixels map to `x / 255`.
    pub fn identity(channels: usize) -> Normalization {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Number of channels described.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        // 6 images 1x2x2, labels cycle 0,1,2,0,1,2.
        let images = (0..24u8).collect();
        Dataset::new(images, vec![0, 1, 2, 0, 1, 2], 1, 2, 2, 3).unwrap()
    }

    #[test]
    fn new_checks_sizes_and_labels() {
        assert!(Dataset::new(vec![0; 7], vec![0, 0], 1, 2, 2, 1).is_err());
        let e = Dataset::new(vec![0; 8], vec![0, 3], 1, 2, 2, 3).unwrap_err();
        assert!(format!("{e}").contains("label 3 of image 1"), "{e}");
        assert!(Dataset::new(vec![], vec![], 0, 2, 2, 1).is_err());
    }

    #[test]
    fn image_and_len() {
        let d = toy();
        assert_eq!(d.len(), 6);
        assert!(!d.is_empty());
        assert_eq!(d.image_len(), 4);
        assert_eq!(d.image(2), &[8, 9, 10, 11]);
    }

    #[test]
    fn pad_centres_28_to_32() {
        let images: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8 + 1).collect();
        let d = Dataset::new(images.clone(), vec![0], 1, 28, 28, 1).unwrap();
        let p = d.pad_to(32, 32).unwrap();
        assert_eq!((p.height, p.width, p.len()), (32, 32, 1));
        for y in 0..32 {
            for x in 0..32 {
                let v = p.images[y * 32 + x];
                if (2..30).contains(&y) && (2..30).contains(&x) {
                    assert_eq!(v, images[(y - 2) * 28 + (x - 2)]);
                } else {
                    assert_eq!(v, 0, "border pixel {y},{x}");
                }
            }
        }
        assert!(d.pad_to(27, 32).is_err());
        assert_eq!(d.pad_to(28, 28).unwrap(), d);
    }

    #[test]
    fn pad_multichannel_keeps_planes() {
        let d = Dataset::new(vec![1, 2, 3, 4], vec![0, 0], 2, 1, 1, 1).unwrap();
        let p = d.pad_to(3, 3).unwrap();
        assert_eq!(p.image(1)[4], 3);
        assert_eq!(p.image(1)[9 + 4], 4);
        assert_eq!(p.images.iter().map(|&x| x as u32).sum::<u32>(), 10);
    }

    #[test]
    fn subsets_and_counts() {
        let d = toy();
        assert_eq!(d.class_counts(), vec![2, 2, 2]);
        let s = d.subset(&[5, 0]);
        assert_eq!(s.labels, vec![2, 0]);
        assert_eq!(s.image(0), d.image(5));
        let b = d.balanced_subset(1).unwrap();
        assert_eq!(b.labels, vec![0, 1, 2]);
        assert_eq!(b.images, d.images[..12].to_vec());
        let e = d.balanced_subset(3).unwrap_err();
        assert!(format!("{e}").contains("class 0 has 2"), "{e}");
    }

    #[test]
    fn normalization_statistics() {
        // Channel 0 is constant 255, channel 1 alternates 0 and 255.
        let d = Dataset::new(
            vec![255, 255, 0, 255, 255, 255, 0, 255],
            vec![0, 0],
            2,
            1,
            2,
            1,
        )
        .unwrap();
        let n = Normalization::of(&d);
        assert!((n.mean[0] - 1.0).abs() < 1e-6);
        assert_eq!(n.std[0], 1.0);
        assert!((n.mean[1] - 0.5).abs() < 1e-6);
        assert!((n.std[1] - 0.5).abs() < 1e-6);
        let empty = Dataset::new(vec![], vec![], 3, 2, 2, 1).unwrap();
        assert_eq!(Normalization::of(&empty), Normalization::identity(3));
    }
}
