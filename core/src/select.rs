//! Choosing which morphisms to apply (paper section 3.3): a morphism is worth
//! it when `-DeltaL > lambda_p * DeltaR_p (+ lambda_f * DeltaR_macs)`; per layer
//! the best candidates by gain are applied, at most a fraction of its channels.

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::learn::MorphState;
use crate::morph::{ChannelMorphism, Morphism};
use alloc::format;
use alloc::vec::Vec;

/// Split or prune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Kind {
    Split,
    Prune,
}

/// One scored candidate morphism.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Candidate {
    pub layer: usize,
    pub channel: usize,
    pub kind: Kind,
    /// Estimated change of the training loss (EMA of eq. 1).
    pub delta_loss: f32,
    /// Change of the parameter count.
    pub delta_params: i64,
    /// Change of the multiply-accumulates per image.
    pub delta_macs: i64,
    /// `-DeltaL - lambda_p DeltaR_p - lambda_f DeltaR_macs`.
    pub gain: f64,
}

/// The loss-resource tradeoff and the per-layer budget.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SelectConfig {
    /// Price of one parameter (lambda_p).
    pub lambda_params: f64,
    /// Price of one multiply-accumulate per image (lambda_f; 0 leaves MACs free).
    pub lambda_macs: f64,
    /// Largest fraction of a layer's channels changed per phase (paper: 0.3).
    pub fraction: f64,
    /// Whether prunes are candidates.
    pub prune: bool,
}

impl SelectConfig {
    /// Checks ranges: lambdas finite and non-negative, fraction in (0, 1].
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("lambda-params", self.lambda_params),
            ("lambda-macs", self.lambda_macs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "--{name} must be a finite number >= 0, got {v}"
                )));
            }
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::Config(format!(
                "--grow-fraction must be in (0, 1], got {}",
                self.fraction
            )));
        }
        Ok(())
    }
}

/// Exact resource change of adding (`+1`) or removing (`-1`) one channel of `layer`.
pub fn channel_cost(arch: &Arch, layer: usize, delta: i64) -> (i64, i64) {
    let mut other = arch.clone();
    other.widths[layer] = (other.widths[layer] as i64 + delta).max(1) as usize;
    (
        other.params() as i64 - arch.params() as i64,
        other.macs() as i64 - arch.macs() as i64,
    )
}

/// Every split and prune candidate with its gain.
pub fn candidates(arch: &Arch, state: &MorphState, cfg: &SelectConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    for l in 0..arch.layers() {
        let (sp, sm) = channel_cost(arch, l, 1);
        let (pp, pm) = channel_cost(arch, l, -1);
        for c in 0..arch.widths[l] {
            let mut push = |kind, dl: f32, dp: i64, dm: i64| {
                let gain =
                    -(dl as f64) - cfg.lambda_params * dp as f64 - cfg.lambda_macs * dm as f64;
                out.push(Candidate {
                    layer: l,
                    channel: c,
                    kind,
                    delta_loss: dl,
                    delta_params: dp,
                    delta_macs: dm,
                    gain,
                });
            };
            push(Kind::Split, state.split_ema[l][c], sp, sm);
            if cfg.prune && arch.widths[l] > 1 {
                push(Kind::Prune, state.prune_ema[l][c], pp, pm);
            }
        }
    }
    out
}

/// Per layer: the better candidate of each channel if its gain is positive,
/// best first, at most `max(1, floor(fraction * width))` of them, never
/// pruning a layer below one channel. Ties break by channel index.
pub fn select(arch: &Arch, cands: &[Candidate], cfg: &SelectConfig) -> Vec<Candidate> {
    let mut chosen = Vec::new();
    for l in 0..arch.layers() {
        let w = arch.widths[l];
        let mut best: Vec<Candidate> = Vec::new();
        for c in 0..w {
            let top = cands
                .iter()
                .filter(|k| k.layer == l && k.channel == c && k.gain > 0.0)
                .max_by(|a, b| a.gain.total_cmp(&b.gain));
            if let Some(t) = top {
                best.push(*t);
            }
        }
        best.sort_by(|a, b| b.gain.total_cmp(&a.gain).then(a.channel.cmp(&b.channel)));
        let budget = (libm::floor(cfg.fraction * w as f64) as usize).max(1);
        let mut prunes = 0;
        for k in best.into_iter().take(budget) {
            if k.kind == Kind::Prune {
                if prunes + 1 >= w {
                    continue;
                }
                prunes += 1;
            }
            chosen.push(k);
        }
    }
    chosen
}

/// The morphisms that apply `chosen`, splits with their learned theta.
pub fn to_morphisms(arch: &Arch, chosen: &[Candidate], state: &MorphState) -> Vec<ChannelMorphism> {
    let units = arch.units();
    chosen
        .iter()
        .map(|k| {
            let morphism = match k.kind {
                Kind::Split => {
                    let fan = units[k.layer].fan_in();
                    Morphism::Split {
                        theta: state.theta[k.layer][k.channel * fan..(k.channel + 1) * fan]
                            .to_vec(),
                    }
                }
                Kind::Prune => Morphism::Prune,
            };
            ChannelMorphism {
                layer: k.layer,
                channel: k.channel,
                morphism,
            }
        })
        .collect()
}
