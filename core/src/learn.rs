//! Morphism parameters being learned (theta per layer, Adam moments) and the
//! exponential moving averages of their estimated loss changes (paper 3.3, 4.1).

use crate::error::{Error, Result};
pub use crate::estimator::Curvature;
use crate::network::Network;
use crate::optim::Adam;
use crate::rng::Rng;
use crate::walk::Walk;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// How the morphism phase scores split candidates.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MorphMethod {
    /// Adam on theta against the Gauss-Newton estimate (the paper).
    #[default]
    GaussNewton,
    /// Splitting steepest descent: per batch, `iterations` warm-started steps
    /// toward each channel's minimum splitting eigenpair; `theta` holds the
    /// unit eigenvectors and `split_ema` the eigenvalues.
    Splitting {
        /// Warm-started eigen-iteration steps per batch.
        iterations: usize,
    },
}

/// Settings of the morphism-learning phase.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MorphConfig {
    /// Optimizer of theta (the paper: Adam, learning rate 1e-2).
    pub adam: Adam,
    /// EMA weight of each new mini-batch estimate; the paper's default is
    /// `(S / N) / 2`, about the last two epochs.
    pub ema_alpha: f32,
    /// How split candidates are scored.
    pub method: MorphMethod,
    /// Trust region: after every step each channel's theta is scaled back to
    /// at most this multiple of its incoming kernel's norm (`None`: unbounded,
    /// as in the paper).
    pub theta_max: Option<f32>,
    /// Also average the products of every pair of candidates' per-sample
    /// first-order terms, for the joint estimate of a set of morphisms
    /// ([`crate::select::select_joint`]).
    #[cfg_attr(feature = "serde", serde(default))]
    pub joint: bool,
    /// The quadratic term of the estimate in the unit that feeds the logits.
    #[cfg_attr(feature = "serde", serde(default))]
    pub curvature: Curvature,
}

impl MorphConfig {
    /// Paper settings for batches of `batch` out of `dataset` samples.
    pub fn paper(batch: usize, dataset: usize) -> MorphConfig {
        MorphConfig {
            adam: Adam::paper(),
            ema_alpha: (batch as f32 / dataset.max(1) as f32) / 2.0,
            method: MorphMethod::GaussNewton,
            theta_max: None,
            joint: false,
            curvature: Curvature::RankOne,
        }
    }
}

/// Theta, its Adam state and the running estimates of every candidate.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MorphState {
    /// Per layer, `[cout, cin, k, k]`: channel `c`'s split parameters.
    pub theta: Vec<Vec<f32>>,
    /// Per layer: Adam's first moment of theta.
    pub adam_m: Vec<Vec<f32>>,
    /// Per layer: Adam's second moment of theta.
    pub adam_v: Vec<Vec<f32>>,
    /// Adam steps taken.
    pub steps: u32,
    /// Per layer and channel: EMA of the estimated Delta L of splitting it.
    pub split_ema: Vec<Vec<f32>>,
    /// Per layer and channel: EMA of the estimated Delta L of pruning it.
    pub prune_ema: Vec<Vec<f32>>,
    /// Per layer and channel: norm of the incoming kernel `|w_in[c]|`.
    pub w_norms: Vec<Vec<f32>>,
    /// With [`MorphConfig::joint`]: the `K x K` moving average of
    /// `mean_s(u_s,i * u_s,j) / (4 L_hat)` over every pair of candidates
    /// (slots from [`MorphState::joint_slot`]); empty otherwise.
    #[cfg_attr(feature = "serde", serde(default))]
    pub cross: Vec<f32>,
}

impl MorphState {
    /// Fresh theta for every channel of `net`: Gaussian noise with norm
    /// `init_scale * |w_in[c]|` (theta = 0 has zero gradient since Delta_a is
    /// even in d, so the search starts from a small random point).
    pub fn new(net: &Network, init_scale: f32, rng: &mut Rng) -> MorphState {
        let idx = net.index();
        let units = net.arch.units();
        let mut theta = Vec::with_capacity(units.len());
        let mut w_norms = Vec::with_capacity(units.len());
        for (l, u) in units.iter().enumerate() {
            let w = &net.tensors[idx.units[l].conv];
            let fan = u.fan_in();
            let mut t = vec![0.0f32; w.len()];
            let mut norms = vec![0.0f32; u.cout];
            for c in 0..u.cout {
                let wc = &w[c * fan..(c + 1) * fan];
                let norm = libm::sqrtf(wc.iter().map(|v| v * v).sum::<f32>()).max(1e-12);
                norms[c] = norm;
                let noise: Vec<f32> = (0..fan).map(|_| rng.normal()).collect();
                let nn = libm::sqrtf(noise.iter().map(|v| v * v).sum::<f32>()).max(1e-12);
                for (o, z) in t[c * fan..(c + 1) * fan].iter_mut().zip(&noise) {
                    *o = init_scale * norm * z / nn;
                }
            }
            theta.push(t);
            w_norms.push(norms);
        }
        let zeros = |v: &Vec<Vec<f32>>| v.iter().map(|t| vec![0.0; t.len()]).collect::<Vec<_>>();
        MorphState {
            adam_m: zeros(&theta),
            adam_v: zeros(&theta),
            steps: 0,
            split_ema: units.iter().map(|u| vec![0.0; u.cout]).collect(),
            prune_ema: units.iter().map(|u| vec![0.0; u.cout]).collect(),
            theta,
            w_norms,
            cross: Vec::new(),
        }
    }

    /// Number of candidates `K` (a split and a prune per channel).
    pub fn joint_len(&self) -> usize {
        2 * self.split_ema.iter().map(Vec::len).sum::<usize>()
    }

    /// Index of a candidate in [`MorphState::cross`]: per layer, its splits
    /// then its prunes.
    pub fn joint_slot(&self, layer: usize, channel: usize, prune: bool) -> usize {
        let before: usize = self.split_ema[..layer].iter().map(|e| 2 * e.len()).sum();
        let width = self.split_ema[layer].len();
        before + if prune { width } else { 0 } + channel
    }

    /// Folds one mini-batch into [`MorphState::cross`]: `u` is `n x K`
    /// (per sample, every candidate's first-order term `u_s`), `loss` the
    /// batch's `L_hat`. With `mean_s u_s,i` implied by the candidate's own
    /// estimate, this gives eq. (1) for any set of candidates whose `u` add.
    pub fn update_cross(
        &mut self,
        u: &[f32],
        n: usize,
        loss: f32,
        alpha: f32,
        batch: &mut Vec<f32>,
    ) {
        let k = self.joint_len();
        batch.resize(k * k, 0.0);
        crate::kernels::gemm::gram(k, n, 1.0 / (4.0 * loss * n as f32), u, batch);
        if self.cross.len() != k * k || self.steps == 0 {
            self.cross.clear();
            self.cross.extend_from_slice(batch);
        } else {
            for (e, v) in self.cross.iter_mut().zip(batch.iter()) {
                *e = (1.0 - alpha) * *e + alpha * v;
            }
        }
    }

    /// Checks that the state belongs to `net`'s architecture.
    pub fn check(&self, net: &Network) -> Result<()> {
        let units = net.arch.units();
        let ok = self.theta.len() == units.len()
            && units.iter().enumerate().all(|(l, u)| {
                self.theta[l].len() == u.weight_len()
                    && self.adam_m[l].len() == u.weight_len()
                    && self.adam_v[l].len() == u.weight_len()
                    && self.split_ema[l].len() == u.cout
                    && self.prune_ema[l].len() == u.cout
            })
            && (self.cross.is_empty() || self.cross.len() == self.joint_len().pow(2));
        if ok {
            Ok(())
        } else {
            Err(Error::Mismatch(format!(
                "morphism state does not match the architecture (widths {:?})",
                net.arch.widths
            )))
        }
    }

    /// Folds one mini-batch's estimates into the moving averages; the first
    /// batch initialises them (so early averages are not biased toward zero).
    pub fn update_ema(&mut self, layer: usize, split: &[f32], prune: &[f32], alpha: f32) {
        let first = self.steps == 0;
        for (e, v) in self.split_ema[layer].iter_mut().zip(split) {
            *e = if first {
                *v
            } else {
                (1.0 - alpha) * *e + alpha * v
            };
        }
        for (e, v) in self.prune_ema[layer].iter_mut().zip(prune) {
            *e = if first {
                *v
            } else {
                (1.0 - alpha) * *e + alpha * v
            };
        }
    }

    /// One Adam step on layer `layer`'s theta, descending the estimated Delta
    /// L, then the optional trust region `|theta[c]| <= theta_max * |w_in[c]|`.
    pub fn adam_step(&mut self, layer: usize, grad: &[f32], adam: &Adam, theta_max: Option<f32>) {
        adam.step(
            self.steps + 1,
            &mut self.theta[layer],
            grad,
            &mut self.adam_m[layer],
            &mut self.adam_v[layer],
        );
        if let Some(r) = theta_max {
            let c = self.split_ema[layer].len();
            let fan = self.theta[layer].len() / c;
            for ch in 0..c {
                let t = &mut self.theta[layer][ch * fan..(ch + 1) * fan];
                let norm = libm::sqrtf(t.iter().map(|v| v * v).sum::<f32>());
                let cap = r * self.w_norms[layer][ch];
                if norm > cap {
                    t.iter_mut().for_each(|v| *v *= cap / norm);
                }
            }
        }
    }

    /// Norm of channel `c`'s theta in layer `layer`.
    pub fn theta_norm(&self, layer: usize, c: usize) -> f32 {
        let n = self.split_ema[layer].len();
        let fan = self.theta[layer].len() / n;
        libm::sqrtf(
            self.theta[layer][c * fan..(c + 1) * fan]
                .iter()
                .map(|v| v * v)
                .sum(),
        )
    }
}

/// The morphism step's operations on one engine, at layer granularity, after
/// the walk's eval-mode forward, loss and activation backward of the batch.
/// The engine holds theta, the Adam moments, the moving averages and the
/// per-sample first-order terms `u` of every candidate.
pub trait MorphEngine {
    /// What an operation can fail with.
    type Error;
    /// Layer `l`'s per-sample `u` of every split (along its theta) and every
    /// prune, and with `grad` the gradient of eq. (1)'s split estimates with
    /// respect to theta.
    fn estimate_layer(
        &mut self,
        walk: &Walk,
        l: usize,
        n: usize,
        grad: bool,
    ) -> core::result::Result<(), Self::Error>;
    /// Keeps layer `l`'s eq. (1) split estimates of this batch (after
    /// [`MorphEngine::estimate_layer`]) as the engine's scores.
    fn keep_scores(&mut self, l: usize, n: usize) -> core::result::Result<(), Self::Error>;
    /// Folds layer `l`'s eq. (1) estimates of this batch into the moving
    /// averages with weight `alpha` (the first batch of a phase initialises them).
    fn average_estimates(
        &mut self,
        l: usize,
        n: usize,
        alpha: f32,
    ) -> core::result::Result<(), Self::Error>;
    /// Splitting steepest descent on layer `l`: `iterations` warm-started
    /// steps toward each channel's minimum splitting eigenpair; theta takes
    /// the directions and the split average the eigenvalues.
    fn split_directions(
        &mut self,
        walk: &Walk,
        l: usize,
        n: usize,
        iterations: usize,
        alpha: f32,
    ) -> core::result::Result<(), Self::Error>;
    /// Folds `U^T U / (4 L_hat S)` of every layer's `u` (slots as
    /// [`MorphState::joint_slot`]) into the moving average of the cross terms.
    fn average_cross(&mut self, n: usize, alpha: f32) -> core::result::Result<(), Self::Error>;
    /// One Adam step on every layer's theta, then the trust region.
    fn step_theta(
        &mut self,
        adam: &Adam,
        theta_max: Option<f32>,
    ) -> core::result::Result<(), Self::Error>;
}

/// One morphism-learning step on `n` samples, written once for every engine
/// (paper 3.3): every layer's estimates into the moving averages, the cross
/// terms with the joint estimate, then Adam on theta. The caller has run the
/// walk's eval-mode forward, loss and activation backward on the batch.
pub fn morph_step<E: MorphEngine + ?Sized>(
    walk: &Walk,
    e: &mut E,
    n: usize,
    cfg: &MorphConfig,
) -> core::result::Result<(), E::Error> {
    for l in 0..walk.units.len() {
        match cfg.method {
            MorphMethod::GaussNewton => {
                e.estimate_layer(walk, l, n, true)?;
                e.average_estimates(l, n, cfg.ema_alpha)?;
            }
            MorphMethod::Splitting { iterations } => {
                e.split_directions(walk, l, n, iterations, cfg.ema_alpha)?
            }
        }
    }
    if cfg.method == MorphMethod::GaussNewton {
        if cfg.joint {
            e.average_cross(n, cfg.ema_alpha)?;
        }
        e.step_theta(&cfg.adam, cfg.theta_max)?;
    }
    Ok(())
}

/// Eq. (1) for every split candidate of every layer on one batch with theta
/// held fixed: no moving average, no Adam step. The caller has run the walk's
/// eval-mode forward, loss and activation backward on the batch.
pub fn score_step<E: MorphEngine + ?Sized>(
    walk: &Walk,
    e: &mut E,
    n: usize,
) -> core::result::Result<(), E::Error> {
    for l in 0..walk.units.len() {
        e.estimate_layer(walk, l, n, false)?;
        e.keep_scores(l, n)?;
    }
    Ok(())
}
