//! Assembling normalised `f32` batches, with the standard augmentation for
//! training (random crop from a zero-padded image, horizontal flip).

use alloc::vec::Vec;

use super::{Dataset, Normalization};
use crate::rng::Rng;

/// Training augmentation, applied per image in this order: a random crop of
/// the original size from the image zero-padded by `crop_padding` pixels on
/// every side (padding is raw pixel value 0, as torchvision's
/// `RandomCrop(padding=4)` before `Normalize`), then a horizontal flip with
/// probability 1/2 when `flip` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Augment {
    /// Zero padding on each side for the random crop (0: no crop).
    pub crop_padding: usize,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
}

impl Default for Augment {
    /// 4-pixel crop padding and flips.
    fn default() -> Self {
        Augment {
            crop_padding: 4,
            flip: true,
        }
    }
}

/// The order in which an epoch visits `n` samples: `0..n`, shuffled with
/// `rng` when `shuffle` is set (the same seed gives the same order).
pub fn epoch_order(n: usize, shuffle: bool, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        rng.shuffle(&mut order);
    }
    order
}

/// One epoch split into batches of sample indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    order: Vec<usize>,
    batch_size: usize,
}

impl BatchPlan {
    /// The batches of one epoch over `n` samples: [`epoch_order`] cut into
    /// batches of `batch_size` (at least 1); the last batch is shorter when
    /// `batch_size` does not divide `n`, and is left out if `drop_last`.
    pub fn new(n: usize, batch_size: usize, shuffle: bool, drop_last: bool, rng: &mut Rng) -> Self {
        let batch_size = batch_size.max(1);
        let mut order = epoch_order(n, shuffle, rng);
        if drop_last {
            order.truncate(n - n % batch_size);
        }
        BatchPlan { order, batch_size }
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The largest batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// All sample indices of the epoch, in visiting order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Batch `b` (panics if `b >= len()`).
    pub fn batch(&self, b: usize) -> &[usize] {
        let start = b * self.batch_size;
        &self.order[start..(start + self.batch_size).min(self.order.len())]
    }

    /// The batches in order.
    pub fn iter(&self) -> core::slice::Chunks<'_, usize> {
        self.order.chunks(self.batch_size)
    }
}

impl<'a> IntoIterator for &'a BatchPlan {
    type Item = &'a [usize];
    type IntoIter = core::slice::Chunks<'a, usize>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Writes the images `indices` of `ds` into `images_out` (NCHW `f32`,
/// `indices.len() * ds.image_len()` values, each pixel `x` becoming
/// `(x / 255 - mean[c]) / std[c]`) and their labels into `labels_out`.
///
/// With `augment`, each image is randomly cropped and flipped as described in
/// [`Augment`], with draws from `rng` (two `below` draws for the crop, then
/// one for the flip when enabled, per image); without it `rng` is not used.
///
/// Buffers longer than needed keep their tail untouched. This is an internal
/// API whose callers size the buffers: it panics, naming the sizes, if a
/// buffer is too short, if `norm` has a different channel count than `ds`, or
/// if an index is out of range.
pub fn fill_batch(
    ds: &Dataset,
    norm: &Normalization,
    indices: &[usize],
    augment: Option<&Augment>,
    rng: &mut Rng,
    images_out: &mut [f32],
    labels_out: &mut [u32],
) {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let plane = h * w;
    let image_len = c * plane;
    assert!(
        images_out.len() >= indices.len() * image_len,
        "fill_batch: image buffer holds {} values, {} images of {image_len} need {}",
        images_out.len(),
        indices.len(),
        indices.len() * image_len
    );
    assert!(
        labels_out.len() >= indices.len(),
        "fill_batch: label buffer holds {} values, {} needed",
        labels_out.len(),
        indices.len()
    );
    assert!(
        norm.mean.len() == c && norm.std.len() == c,
        "fill_batch: normalisation has {} means and {} stds for {c} channels",
        norm.mean.len(),
        norm.std.len()
    );
    // x -> x * scale[c] + shift[c]; a padded pixel (x = 0) becomes shift[c].
    let scale: Vec<f32> = norm.std.iter().map(|&sd| 1.0 / (255.0 * sd)).collect();
    let shift: Vec<f32> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(&m, &sd)| -m / sd)
        .collect();

    for (b, &i) in indices.iter().enumerate() {
        assert!(
            i < ds.len(),
            "fill_batch: index {i} out of range for {} images",
            ds.len()
        );
        labels_out[b] = u32::from(ds.labels[i]);
        let src = &ds.images[i * image_len..(i + 1) * image_len];
        let dst = &mut images_out[b * image_len..(b + 1) * image_len];
        let Some(aug) = augment else {
            for ch in 0..c {
                let (s, t) = (scale[ch], shift[ch]);
                let out = &mut dst[ch * plane..(ch + 1) * plane];
                for (o, &x) in out.iter_mut().zip(&src[ch * plane..(ch + 1) * plane]) {
                    *o = f32::from(x) * s + t;
                }
            }
            continue;
        };
        // Output pixel (y, x) reads source (y + dy, x + dx), zero outside.
        let p = aug.crop_padding as isize;
        let dy = rng.below(2 * aug.crop_padding + 1) as isize - p;
        let dx = rng.below(2 * aug.crop_padding + 1) as isize - p;
        let flip = aug.flip && rng.below(2) == 1;
        let (hi, wi) = (h as isize, w as isize);
        // Columns x with 0 <= x + dx < w.
        let x0 = (-dx).clamp(0, wi) as usize;
        let x1 = (wi - dx).clamp(0, wi) as usize;
        for ch in 0..c {
            let (s, t) = (scale[ch], shift[ch]);
            let src_plane = &src[ch * plane..(ch + 1) * plane];
            let out_plane = &mut dst[ch * plane..(ch + 1) * plane];
            for (y, row) in out_plane.chunks_exact_mut(w).enumerate() {
                let sy = y as isize + dy;
                if sy < 0 || sy >= hi || x0 >= x1 {
                    row.fill(t);
                    continue;
                }
                let sy = sy as usize;
                let sx0 = (x0 as isize + dx) as usize;
                let src_row = &src_plane[sy * w + sx0..sy * w + sx0 + (x1 - x0)];
                row[..x0].fill(t);
                for (o, &x) in row[x0..x1].iter_mut().zip(src_row) {
                    *o = f32::from(x) * s + t;
                }
                row[x1..].fill(t);
                if flip {
                    row.reverse();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn toy(n: usize, c: usize, h: usize, w: usize) -> Dataset {
        let mut rng = Rng::new(11);
        let images = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new(images, labels, c, h, w, 3).unwrap()
    }

    fn plain(ds: &Dataset, norm: &Normalization, idx: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; idx.len() * ds.image_len()];
        let mut labels = vec![0; idx.len()];
        fill_batch(ds, norm, idx, None, &mut Rng::new(0), &mut out, &mut labels);
        out
    }

    #[test]
    fn plain_batch_normalises_per_channel() {
        let ds = toy(3, 3, 4, 5);
        let norm = Normalization {
            mean: vec![0.1, 0.5, 0.9],
            std: vec![0.2, 0.3, 0.4],
        };
        let mut out = vec![f32::NAN; 2 * ds.image_len() + 1];
        let mut labels = vec![9; 3];
        fill_batch(
            &ds,
            &norm,
            &[2, 0],
            None,
            &mut Rng::new(0),
            &mut out,
            &mut labels,
        );
        assert_eq!(labels, vec![2, 0, 9]);
        assert!(out[2 * ds.image_len()].is_nan(), "tail untouched");
        for (b, &i) in [2usize, 0].iter().enumerate() {
            for k in 0..ds.image_len() {
                let ch = k / 20;
                let want = (ds.image(i)[k] as f32 / 255.0 - norm.mean[ch]) / norm.std[ch];
                assert!((out[b * ds.image_len() + k] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn zero_shift_crop_without_flip_is_plain() {
        let ds = toy(4, 3, 6, 6);
        let norm = Normalization::of(&ds);
        let aug = Augment {
            crop_padding: 0,
            flip: false,
        };
        let idx = [3, 1, 2];
        let mut out = vec![0.0; idx.len() * ds.image_len()];
        let mut labels = vec![0; idx.len()];
        fill_batch(
            &ds,
            &norm,
            &idx,
            Some(&aug),
            &mut Rng::new(5),
            &mut out,
            &mut labels,
        );
        assert_eq!(out, plain(&ds, &norm, &idx));
    }

    #[test]
    fn crops_shift_and_pad_with_raw_zero() {
        let ds = toy(1, 2, 5, 7);
        let norm = Normalization {
            mean: vec![0.3, 0.6],
            std: vec![0.5, 0.25],
        };
        let base = plain(&ds, &norm, &[0]);
        let aug = Augment {
            crop_padding: 3,
            flip: false,
        };
        let mut out = vec![0.0; ds.image_len()];
        let mut labels = [0];
        for seed in 0..40 {
            // Recover the shift from the same draws fill_batch makes.
            let mut r = Rng::new(seed);
            let dy = r.below(7) as isize - 3;
            let dx = r.below(7) as isize - 3;
            fill_batch(
                &ds,
                &norm,
                &[0],
                Some(&aug),
                &mut Rng::new(seed),
                &mut out,
                &mut labels,
            );
            for ch in 0..2 {
                let pad = -norm.mean[ch] / norm.std[ch];
                for y in 0..5isize {
                    for x in 0..7isize {
                        let (sy, sx) = (y + dy, x + dx);
                        let got = out[ch * 35 + (y * 7 + x) as usize];
                        let want = if (0..5).contains(&sy) && (0..7).contains(&sx) {
                            base[ch * 35 + (sy * 7 + sx) as usize]
                        } else {
                            pad
                        };
                        assert_eq!(got, want, "seed {seed} ch {ch} ({y},{x}) shift ({dy},{dx})");
                    }
                }
            }
        }
    }

    #[test]
    fn flip_mirrors_rows_and_twice_is_identity() {
        let ds = toy(1, 3, 4, 5);
        let norm = Normalization::of(&ds);
        let base = plain(&ds, &norm, &[0]);
        let aug = Augment {
            crop_padding: 0,
            flip: true,
        };
        // Find a seed that flips, and check the mirrored image.
        let mut out = vec![0.0; ds.image_len()];
        let mut labels = [0];
        let mut flipped = 0;
        for seed in 0..20 {
            fill_batch(
                &ds,
                &norm,
                &[0],
                Some(&aug),
                &mut Rng::new(seed),
                &mut out,
                &mut labels,
            );
            if out == base {
                continue;
            }
            flipped += 1;
            let mut twice = out.clone();
            for row in twice.chunks_exact_mut(5) {
                row.reverse();
            }
            assert_eq!(twice, base);
        }
        assert!(flipped > 3 && flipped < 17, "{flipped} flips of 20");
        // A flipped dataset flipped again by fill_batch gives the original.
        let mut mirrored = ds.clone();
        for row in mirrored.images.chunks_exact_mut(5) {
            row.reverse();
        }
        let mut again = vec![0.0; ds.image_len()];
        for seed in 0..20 {
            fill_batch(
                &ds,
                &norm,
                &[0],
                Some(&aug),
                &mut Rng::new(seed),
                &mut out,
                &mut labels,
            );
            fill_batch(
                &mirrored,
                &norm,
                &[0],
                Some(&aug),
                &mut Rng::new(seed),
                &mut again,
                &mut labels,
            );
            if out != base {
                assert_eq!(again, base, "seed {seed}");
            }
        }
    }

    #[test]
    fn same_seed_same_batch() {
        let ds = toy(10, 3, 8, 8);
        let norm = Normalization::of(&ds);
        let aug = Augment::default();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let order = epoch_order(ds.len(), true, &mut rng);
            let mut out = vec![0.0; 4 * ds.image_len()];
            let mut labels = vec![0; 4];
            fill_batch(
                &ds,
                &norm,
                &order[..4],
                Some(&aug),
                &mut rng,
                &mut out,
                &mut labels,
            );
            (order, out, labels)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3).1, run(4).1);
    }

    #[test]
    fn large_padding_gives_all_padding_or_image() {
        let ds = toy(1, 1, 2, 2);
        let norm = Normalization::identity(1);
        let aug = Augment {
            crop_padding: 9,
            flip: true,
        };
        let mut out = vec![0.0; 4];
        let mut labels = [0];
        for seed in 0..50 {
            fill_batch(
                &ds,
                &norm,
                &[0],
                Some(&aug),
                &mut Rng::new(seed),
                &mut out,
                &mut labels,
            );
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    #[should_panic(expected = "image buffer holds")]
    fn short_buffer_panics_clearly() {
        let ds = toy(2, 1, 2, 2);
        let norm = Normalization::identity(1);
        let mut out = vec![0.0; 7];
        let mut labels = vec![0; 2];
        fill_batch(
            &ds,
            &norm,
            &[0, 1],
            None,
            &mut Rng::new(0),
            &mut out,
            &mut labels,
        );
    }

    #[test]
    fn epoch_orders_and_plans() {
        let a = epoch_order(50, true, &mut Rng::new(1));
        assert_eq!(a, epoch_order(50, true, &mut Rng::new(1)));
        assert_ne!(a, epoch_order(50, true, &mut Rng::new(2)));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, false, &mut Rng::new(1)), vec![0, 1, 2, 3, 4]);

        let plan = BatchPlan::new(10, 4, false, false, &mut Rng::new(0));
        assert_eq!(plan.len(), 3);
        assert_eq!(plan.batch(2), &[8, 9]);
        let sizes: Vec<usize> = plan.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let plan = BatchPlan::new(10, 4, true, true, &mut Rng::new(0));
        assert_eq!(plan.len(), 2);
        assert_eq!((&plan).into_iter().flatten().count(), 8);
        assert!(BatchPlan::new(0, 4, true, false, &mut Rng::new(0)).is_empty());
    }
}
