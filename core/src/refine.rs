//! Theta refined on the real loss: a short optimisation of only the chosen
//! splits' theta on the expanded network's own training loss, with every
//! weight of the model fixed (docs/conventions.md, "Refinement on the real
//! loss"). The eq. (1) estimate that learned theta sees each split alone;
//! here the whole set is applied at once, so their interactions count.
//!
//! The halves of a split of channel `c` have incoming kernels `w + theta`
//! and `w - theta`, so `dL/dtheta = dL/dw_+ - dL/dw_-` of the expanded
//! network. BN runs in evaluation mode, both halves with the running
//! statistics they were copied, as in the estimator (frozen sigma).

use crate::data::{fill_batch, Dataset, Normalization};
use crate::engine::Mode;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::morph::{apply, ChannelMap, ChannelMorphism, Morphism};
use crate::network::Network;
use crate::optim::Adam;
use crate::rng::Rng;
use crate::train::Batches;
use alloc::vec;
use alloc::vec::Vec;

/// Where the `+theta` half of every split of `morphisms` sits in the
/// expanded network: `(morphism index, layer, new channel index)`; the
/// `-theta` half is the next channel.
fn split_positions(net: &Network, morphisms: &[ChannelMorphism]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for l in 0..net.arch.layers() {
        let of = |split: bool| -> Vec<usize> {
            morphisms
                .iter()
                .filter(|m| m.layer == l && matches!(m.morphism, Morphism::Split { .. }) == split)
                .map(|m| m.channel)
                .collect()
        };
        let (splits, prunes) = (of(true), of(false));
        if splits.is_empty() {
            continue;
        }
        let map = ChannelMap::new(net.arch.widths[l], &splits, &prunes);
        for (i, m) in morphisms.iter().enumerate() {
            if m.layer != l || !matches!(m.morphism, Morphism::Split { .. }) {
                continue;
            }
            if let Some(j) = (0..map.width()).find(|&j| map.from[j] == m.channel && map.sign[j] > 0)
            {
                out.push((i, l, j));
            }
        }
    }
    out
}

/// Runs `steps` Adam steps on the theta of every split in `morphisms`
/// (updated in place), each on `batch` training images drawn from `ds` with
/// `rng` (no augmentation), descending the expanded network's loss. Prunes
/// are applied as given and not changed. Returns the mean loss of the first
/// and of the last step's batch.
#[allow(clippy::too_many_arguments)]
pub fn refine_splits(
    net: &Network,
    morphisms: &mut [ChannelMorphism],
    ds: &Dataset,
    norm: &Normalization,
    steps: usize,
    batch: usize,
    adam: &Adam,
    rng: &mut Rng,
) -> Result<(f32, f32)> {
    if ds.is_empty() || batch == 0 {
        return Err(Error::Data("refinement needs training images".into()));
    }
    let positions = split_positions(net, morphisms);
    let theta_of = |m: &ChannelMorphism| match &m.morphism {
        Morphism::Split { theta } => theta.len(),
        Morphism::Prune => 0,
    };
    let mut moments: Vec<(Vec<f32>, Vec<f32>)> = positions
        .iter()
        .map(|&(i, _, _)| {
            let n = theta_of(&morphisms[i]);
            (vec![0.0; n], vec![0.0; n])
        })
        .collect();
    let mut buf = Batches::new(ds, batch);
    let mut model: Option<Model> = None;
    let mut grad = Vec::new();
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    for t in 0..steps {
        let expanded = apply(net, morphisms, &mut [])?;
        let model = model.get_or_insert_with(|| Model::new(&expanded.arch, batch));
        let idx: Vec<usize> = (0..batch).map(|_| rng.below(ds.len())).collect();
        fill_batch(ds, norm, &idx, None, rng, &mut buf.images, &mut buf.labels);
        model.forward(&expanded, &buf.images, batch, Mode::Eval);
        let (loss, _) = model.loss(&buf.labels);
        if !loss.is_finite() {
            return Err(Error::NonFinite(alloc::format!(
                "refinement loss is {loss} at step {t}"
            )));
        }
        if t == 0 {
            first = loss;
        }
        last = loss;
        let mut grads = expanded.zeros_like();
        model.backward(&expanded, &mut grads);
        let index = expanded.index();
        for (&(i, l, j), (m, v)) in positions.iter().zip(moments.iter_mut()) {
            let g = &grads[index.units[l].conv];
            let Morphism::Split { theta } = &mut morphisms[i].morphism else {
                continue;
            };
            let fan = theta.len();
            grad.clear();
            grad.extend((0..fan).map(|e| g[j * fan + e] - g[(j + 1) * fan + e]));
            adam.step(t as u32 + 1, theta, &grad, m, v);
        }
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Arch, Family};

    /// One image, so every step sees the same batch: the refined set lowers
    /// that image's loss, only the splits' theta move, prunes stay, and the
    /// halves of each split land where the channel map puts them.
    #[test]
    fn refinement_descends_the_expanded_loss_of_a_mixed_set() {
        let arch = Arch::new(Family::Vgg19, [1, 32, 32], 3, vec![3; 16]).unwrap();
        let net = Network::init(&arch, 5);
        let mut rng = Rng::new(6);
        let pixels: Vec<u8> = (0..32 * 32).map(|_| rng.below(256) as u8).collect();
        let ds = Dataset::new(pixels, vec![2], 1, 32, 32, 3).unwrap();
        let norm = Normalization::of(&ds);
        let split = |layer: usize, channel: usize, rng: &mut Rng| ChannelMorphism {
            layer,
            channel,
            morphism: Morphism::Split {
                theta: (0..arch.units()[layer].fan_in())
                    .map(|_| 0.3 * rng.normal())
                    .collect(),
            },
        };
        // A channel of layer 12 that is active on the image (many die at width 3).
        let live = {
            let mut m = Model::new(&arch, 1);
            let mut b = Batches::new(&ds, 1);
            fill_batch(
                &ds,
                &norm,
                &[0],
                None,
                &mut rng.clone(),
                &mut b.images,
                &mut b.labels,
            );
            m.forward(&net, &b.images, 1, Mode::Eval);
            let a = m.unit_output(12);
            let plane = a.len() / 3;
            (0..3)
                .max_by(|&x, &y| {
                    let s = |c: usize| a[c * plane..(c + 1) * plane].iter().sum::<f32>();
                    s(x).total_cmp(&s(y))
                })
                .unwrap()
        };
        let mut set = vec![
            split(3, 2, &mut rng),
            ChannelMorphism {
                layer: 3,
                channel: 0,
                morphism: Morphism::Prune,
            },
            split(3, 1, &mut rng),
            split(12, live, &mut rng),
        ];
        let before = set.clone();
        let positions = split_positions(&net, &set);
        // Layer 3 keeps channels 1 (split), 2 (split): halves at 0,1 and 2,3.
        assert_eq!(positions, vec![(0, 3, 2), (2, 3, 0), (3, 12, live)]);
        let (first, last) =
            refine_splits(&net, &mut set, &ds, &norm, 30, 1, &Adam::paper(), &mut rng).unwrap();
        assert!(last < first, "loss {first} -> {last}");
        assert_eq!(set[1], before[1]);
        for i in [0, 2, 3] {
            assert_ne!(set[i], before[i], "split {i} did not move");
        }
    }
}
