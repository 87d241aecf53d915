//! Epoch loops over a [`Backend`]: training with SGD and evaluation.

use crate::backend::{Backend, BatchStats};
use crate::data::{fill_batch, Augment, BatchPlan, Dataset, Normalization};
use crate::error::{Error, Result};
use crate::optim::Sgd;
use crate::rng::Rng;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Mean loss and accuracy of one pass over a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PassStats {
    /// Mean loss per sample.
    pub loss: f32,
    /// Fraction of samples classified correctly.
    pub accuracy: f32,
    /// Samples classified correctly.
    pub correct: usize,
    /// Samples seen.
    pub samples: usize,
}

/// Reusable batch buffers for one dataset layout.
#[derive(Debug)]
pub struct Batches {
    /// Samples per batch.
    pub batch: usize,
    /// Normalised images of the current batch, NCHW.
    pub images: Vec<f32>,
    /// Labels of the current batch.
    pub labels: Vec<u32>,
}

impl Batches {
    /// Buffers for batches of `batch` images of `ds`'s shape.
    pub fn new(ds: &Dataset, batch: usize) -> Batches {
        Batches {
            batch,
            images: vec![0.0; batch * ds.image_len()],
            labels: vec![0; batch],
        }
    }
}

fn accumulate(total: &mut (f64, usize, usize), s: &BatchStats) {
    total.0 += s.loss as f64 * s.samples as f64;
    total.1 += s.correct;
    total.2 += s.samples;
}

fn finish(total: (f64, usize, usize)) -> PassStats {
    let n = total.2.max(1);
    PassStats {
        loss: (total.0 / n as f64) as f32,
        accuracy: total.1 as f32 / n as f32,
        correct: total.1,
        samples: total.2,
    }
}

/// One mini-batch step: images, labels, count.
pub type BatchStep<'a> = &'a mut dyn FnMut(&[f32], &[u32], usize) -> Result<BatchStats>;

/// One pass over `ds` in a seeded shuffled order (the last batch may be
/// smaller), calling `step(images, labels, n)` per batch and
/// `progress(done, total, stats)` after it.
#[allow(clippy::too_many_arguments)]
pub fn shuffled_pass(
    ds: &Dataset,
    norm: &Normalization,
    buffers: &mut Batches,
    augment: Option<&Augment>,
    rng: &mut Rng,
    step: BatchStep,
    progress: &mut dyn FnMut(usize, usize, &BatchStats),
) -> Result<PassStats> {
    if ds.is_empty() {
        return Err(Error::Data("training set is empty".into()));
    }
    let plan = BatchPlan::new(ds.len(), buffers.batch, true, false, rng);
    let mut total = (0.0f64, 0usize, 0usize);
    for (b, idx) in plan.iter().enumerate() {
        fill_batch(
            ds,
            norm,
            idx,
            augment,
            rng,
            &mut buffers.images,
            &mut buffers.labels,
        );
        let s = step(&buffers.images, &buffers.labels, idx.len()).map_err(|e| match e {
            Error::NonFinite(m) => Error::NonFinite(format!("{m} at batch {b}")),
            e => e,
        })?;
        accumulate(&mut total, &s);
        progress(b + 1, plan.len(), &s);
    }
    Ok(finish(total))
}

/// One epoch of SGD over `ds` (see [`shuffled_pass`]).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    backend: &mut dyn Backend,
    ds: &Dataset,
    norm: &Normalization,
    buffers: &mut Batches,
    augment: Option<&Augment>,
    sgd: &Sgd,
    rng: &mut Rng,
    progress: &mut dyn FnMut(usize, usize, &BatchStats),
) -> Result<PassStats> {
    shuffled_pass(
        ds,
        norm,
        buffers,
        augment,
        rng,
        &mut |x, y, n| backend.train_batch(x, y, n, sgd),
        progress,
    )
}

/// Loss and accuracy over `ds` with BN in eval mode, in file order.
pub fn evaluate(
    backend: &mut dyn Backend,
    ds: &Dataset,
    norm: &Normalization,
    buffers: &mut Batches,
) -> Result<PassStats> {
    let mut rng = Rng::new(0);
    let plan = BatchPlan::new(ds.len(), buffers.batch, false, false, &mut rng);
    let mut total = (0.0f64, 0usize, 0usize);
    for idx in plan.iter() {
        fill_batch(
            ds,
            norm,
            idx,
            None,
            &mut rng,
            &mut buffers.images,
            &mut buffers.labels,
        );
        let s = backend.eval_batch(&buffers.images, &buffers.labels, idx.len())?;
        accumulate(&mut total, &s);
    }
    Ok(finish(total))
}
