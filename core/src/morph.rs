//! Channel morphisms (paper section 3.1): split a channel into two with
//! incoming kernels `w_in +- theta` and outgoing weights `w_out / 2` each, or
//! prune it. Many morphisms of many layers are applied at once.
//!
//! Every tensor that carries layer `l`'s channels is rewritten through one
//! channel map: the incoming conv kernel, the BN parameters and running
//! statistics, the next-block depthwise kernel and its BN (MobileNet) are
//! copied to the new channel; the outgoing weights (next conv's input
//! channels, or the head's columns) are halved on both halves of a split.

use crate::arch::{Arch, Role};
use crate::error::{Error, Result};
use crate::network::Network;
use alloc::format;
use alloc::vec::Vec;

/// What to do with one channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Morphism {
    /// Split with `theta` (shaped like the channel's incoming kernel, `cin * k * k`).
    Split {
        /// The split direction: halves `w_in + theta` and `w_in - theta`.
        theta: Vec<f32>,
    },
    /// Remove the channel and its outgoing weights.
    Prune,
}

/// A morphism of channel `channel` (index before any morphism of this call) in `layer`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMorphism {
    /// Growable layer.
    pub layer: usize,
    /// Channel of `layer`.
    pub channel: usize,
    /// What to do with it.
    pub morphism: Morphism,
}

/// Where each channel of a layer comes from after its morphisms.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMap {
    /// Old channel index of each new channel.
    pub from: Vec<usize>,
    /// `+1`: incoming kernel gets `+theta`; `-1`: `-theta`; `0`: unchanged.
    pub sign: Vec<i8>,
    /// Factor on the outgoing weights (1/2 on both halves of a split).
    pub out_scale: Vec<f32>,
}

impl ChannelMap {
    /// The map for `width` channels: splits put the second half right after
    /// the first; pruned channels disappear.
    pub fn new(width: usize, splits: &[usize], prunes: &[usize]) -> ChannelMap {
        let mut m = ChannelMap {
            from: Vec::new(),
            sign: Vec::new(),
            out_scale: Vec::new(),
        };
        for c in 0..width {
            if prunes.contains(&c) {
                continue;
            }
            if splits.contains(&c) {
                m.push(c, 1, 0.5);
                m.push(c, -1, 0.5);
            } else {
                m.push(c, 0, 1.0);
            }
        }
        m
    }
    fn push(&mut self, from: usize, sign: i8, scale: f32) {
        self.from.push(from);
        self.sign.push(sign);
        self.out_scale.push(scale);
    }
    /// Channels of the layer after its morphisms.
    pub fn width(&self) -> usize {
        self.from.len()
    }
}

/// How a tensor is laid out around the channel axis: `[outer, channels, inner]`.
#[derive(Clone, Copy, Debug)]
struct Axis {
    outer: usize,
    channels: usize,
    inner: usize,
}

/// Rewrites `t` (laid out as `axis`) through `map`. `scale` applies
/// `out_scale`; `theta`, when given, adds `sign * theta[from]` (an `inner`-long
/// block per old channel, only for `outer == 1` incoming kernels).
fn remap(
    t: &[f32],
    axis: Axis,
    map: &ChannelMap,
    scale: bool,
    theta: Option<&[Vec<f32>]>,
) -> Vec<f32> {
    let w = map.width();
    let mut out = Vec::with_capacity(axis.outer * w * axis.inner);
    for o in 0..axis.outer {
        for j in 0..w {
            let src = &t[(o * axis.channels + map.from[j]) * axis.inner..][..axis.inner];
            let f = if scale { map.out_scale[j] } else { 1.0 };
            match theta.map(|th| &th[map.from[j]]) {
                Some(th) if map.sign[j] != 0 && !th.is_empty() => {
                    let s = map.sign[j] as f32;
                    out.extend(src.iter().zip(th).map(|(v, d)| (v + s * d) * f));
                }
                _ => out.extend(src.iter().map(|v| v * f)),
            }
        }
    }
    out
}

/// The channel axis of every tensor that carries layer `l`'s channels, and
/// whether it is on the outgoing side.
fn channel_axes(arch: &Arch, l: usize) -> Vec<(usize, Axis, bool)> {
    let units = arch.units();
    let mut axes = Vec::new();
    for (i, spec) in arch.param_specs().iter().enumerate() {
        let c = units[l].cout;
        let ax = match spec.role {
            Role::ConvWeight { layer } if layer == l => Some((
                Axis {
                    outer: 1,
                    channels: c,
                    inner: units[l].fan_in(),
                },
                false,
            )),
            Role::BatchNorm { layer, .. } if layer == l => Some((
                Axis {
                    outer: 1,
                    channels: c,
                    inner: 1,
                },
                false,
            )),
            Role::DepthwiseWeight { layer } if layer == l => Some((
                Axis {
                    outer: 1,
                    channels: c,
                    inner: 9,
                },
                false,
            )),
            Role::ConvWeight { layer } if layer == l + 1 => {
                let k = units[layer].kernel;
                Some((
                    Axis {
                        outer: units[layer].cout,
                        channels: c,
                        inner: k * k,
                    },
                    true,
                ))
            }
            Role::HeadWeight if l + 1 == units.len() => {
                let h = arch.head();
                Some((
                    Axis {
                        outer: h.classes,
                        channels: c,
                        inner: h.positions,
                    },
                    true,
                ))
            }
            _ => None,
        };
        if let Some((a, out)) = ax {
            axes.push((i, a, out));
        }
    }
    axes
}

/// Per-layer channel maps for a set of morphisms, checked for bad indices,
/// duplicates, theta sizes, and layers that would lose every channel.
pub fn channel_maps(arch: &Arch, morphisms: &[ChannelMorphism]) -> Result<Vec<ChannelMap>> {
    let units = arch.units();
    let mut splits: Vec<Vec<usize>> = alloc::vec![Vec::new(); units.len()];
    let mut prunes: Vec<Vec<usize>> = alloc::vec![Vec::new(); units.len()];
    for m in morphisms {
        let u = units.get(m.layer).ok_or_else(|| {
            Error::Morphism(format!(
                "morphism names layer {} of {}",
                m.layer,
                units.len()
            ))
        })?;
        if m.channel >= u.cout {
            return Err(Error::Morphism(format!(
                "morphism names channel {} of layer {} with {} channels",
                m.channel, m.layer, u.cout
            )));
        }
        if splits[m.layer].contains(&m.channel) || prunes[m.layer].contains(&m.channel) {
            return Err(Error::Morphism(format!(
                "two morphisms for channel {} of layer {}",
                m.channel, m.layer
            )));
        }
        match &m.morphism {
            Morphism::Split { theta } => {
                if theta.len() != u.fan_in() {
                    return Err(Error::shape(
                        format!("theta for layer {} (its incoming kernel's values)", m.layer),
                        u.fan_in(),
                        theta.len(),
                    ));
                }
                splits[m.layer].push(m.channel)
            }
            Morphism::Prune => prunes[m.layer].push(m.channel),
        }
    }
    units
        .iter()
        .enumerate()
        .map(|(l, u)| {
            let map = ChannelMap::new(u.cout, &splits[l], &prunes[l]);
            if map.width() == 0 {
                return Err(Error::Morphism(format!(
                    "pruning would leave layer {l} with no channels"
                )));
            }
            Ok(map)
        })
        .collect()
}

/// Applies morphisms to a network, and to optimizer buffers shaped like its
/// tensors (`extra`, e.g. SGD momentum: copied to new channels, outgoing
/// entries halved like the weights, no theta). Returns the new network.
pub fn apply(
    net: &Network,
    morphisms: &[ChannelMorphism],
    extra: &mut [Vec<Vec<f32>>],
) -> Result<Network> {
    let maps = channel_maps(&net.arch, morphisms)?;
    let mut arch = net.arch.clone();
    let mut tensors = net.tensors.clone();
    for e in extra.iter() {
        if e.len() != tensors.len() {
            return Err(Error::shape(
                "optimizer state tensors",
                tensors.len(),
                e.len(),
            ));
        }
    }
    // Last layer first: a layer's thetas are shaped by its input width, which
    // the morphisms of the layer before it change.
    for (l, map) in maps.iter().enumerate().rev() {
        let identity =
            map.from.iter().enumerate().all(|(j, &f)| j == f) && map.width() == arch.widths[l];
        if identity {
            continue;
        }
        let mut thetas: Vec<Vec<f32>> = alloc::vec![Vec::new(); arch.widths[l]];
        for m in morphisms.iter().filter(|m| m.layer == l) {
            if let Morphism::Split { theta } = &m.morphism {
                thetas[m.channel] = theta.clone();
            }
        }
        for (i, axis, outgoing) in channel_axes(&arch, l) {
            let th = if outgoing {
                None
            } else {
                Some(thetas.as_slice())
            };
            let is_kernel = matches!(net.specs()[i].role, Role::ConvWeight { layer } if layer == l);
            tensors[i] = remap(
                &tensors[i],
                axis,
                map,
                outgoing,
                if is_kernel { th } else { None },
            );
            for e in extra.iter_mut() {
                e[i] = remap(&e[i], axis, map, outgoing, None);
            }
        }
        arch.widths[l] = map.width();
    }
    Network::from_tensors(arch, tensors)
}
