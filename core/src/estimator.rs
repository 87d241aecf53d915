//! The Gauss-Newton estimate of the loss change of channel morphisms (paper
//! section 3.2, docs/conventions.md, "The estimator"), for every channel of a layer at once.
//!
//! For a split of channel `c` with parameters `theta` (shaped like `w_in[c]`),
//! `d = conv(x, theta)` and, with `sigma` the frozen channelwise map,
//!
//! ```text
//! Delta_a = sigma(y + d) + sigma(y - d) - 2 sigma(y)
//! u_s     = 1/2 * sum(Delta_a_s * G_s)                 (G_s = S * dL/da_s)
//! DeltaL  = 1/S * sum_s [u_s + u_s^2 / (4 L_hat)]       (eq. 1)
//! ```
//!
//! For a prune `Delta_a = -a` and `u_s = -sum(a_s * G_s)`. The next layer is
//! linear in `a`, so `Delta_z . g = Delta_a . W^T g = Delta_a . G`: the
//! expanded network is never built and the next conv never runs again.
//!
//! Conventions (docs/conventions.md): sigma is frozen — BN uses the running statistics
//! of the original channel, shared by both halves — and per-sample gradients
//! are the batch-mean gradients times `S`.
//!
//! Embedding: the buffers can come from any framework. Everything below is
//! `no_std` + `alloc` (with the `ndarray` feature, `LayerBatch::from_views`
//! takes the same buffers as `ArrayView4`s):
//!
//! ```
//! use sprout_core::arch::{Post, UnitShape};
//! use sprout_core::estimator::{split_estimates, FrozenSigma, LayerBatch, Workspace};
//!
//! // A 3x3 conv (pad 1) from 2 to 4 channels on 8x8 inputs, then BN + ReLU.
//! let (n, cin, cout) = (2, 2, 4);
//! let unit = UnitShape::new(cin, cout, 3, 1, 1, (8, 8), Post::None);
//! // From the other framework, NCHW row-major f32: the layer input x, the
//! // pre-activation y, the unit output a = relu(bn(y)) in eval mode, the
//! // gradient of the mean mini-batch loss with respect to a, and that loss.
//! let x = vec![0.5f32; n * unit.in_len()];
//! let y: Vec<f32> = (0..n * unit.conv_len()).map(|i| (i % 7) as f32 - 3.0).collect();
//! let a: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect(); // BN below is the identity
//! let grad_a = vec![0.01f32; n * unit.out_len()];
//! let loss = 0.7;
//! // The BN's gamma, beta, running mean and running variance, folded.
//! let (gamma, beta) = (vec![1.0; cout], vec![0.0; cout]);
//! let (mean, var) = (vec![0.0; cout], vec![1.0 - 1e-5; cout]);
//! let sigma = FrozenSigma::from_batch_norm(&gamma, &beta, &mean, &var).unwrap();
//! let batch = LayerBatch::new(unit, n, &x, &y, &a, &grad_a, sigma.view(), loss).unwrap();
//!
//! // One split direction per channel, stacked like the kernel [cout, cin, 3, 3].
//! let theta = vec![0.05f32; unit.weight_len()];
//! let (mut delta_l, mut grad_theta) = (vec![0.0; cout], vec![0.0; theta.len()]);
//! let mut ws = Workspace::default();
//! split_estimates(&batch, &theta, &mut ws, &mut delta_l, Some(&mut grad_theta));
//! // Eq. (1) per channel, and the first-order terms u[s * cout + c].
//! assert!(delta_l.iter().all(|d| d.is_finite() && *d >= -loss));
//! assert_eq!(ws.last_u(n, cout).len(), n * cout);
//! ```
//!
//! From a sprout [`Model`]:
//!
//! ```
//! use sprout_core::arch::Arch;
//! use sprout_core::estimator::{split_estimates, FrozenSigma, LayerBatch, Workspace};
//! use sprout_core::engine::Mode;
//! use sprout_core::model::Model;
//! use sprout_core::Network;
//!
//! let arch = Arch::vgg19(4, [1, 32, 32], 10).unwrap();
//! let net = Network::init(&arch, 0);
//! let (n, layer) = (2, 3);
//! let images = vec![0.5f32; n * 32 * 32];
//! let mut model = Model::new(&arch, n);
//! model.forward(&net, &images, n, Mode::Eval);
//! let (loss, _) = model.loss(&[1, 7]);
//! let mut grads = net.zeros_like();
//! model.backward(&net, &mut grads);
//!
//! let sigma = FrozenSigma::of(&net, layer);
//! let batch = LayerBatch::from_model(&model, layer, sigma.view(), loss);
//! let theta = vec![0.01f32; arch.units()[layer].weight_len()];
//! let mut delta_l = vec![0.0; 4];
//! let mut grad_theta = vec![0.0; theta.len()];
//! split_estimates(&batch, &theta, &mut Workspace::default(), &mut delta_l, Some(&mut grad_theta));
//! assert!(delta_l.iter().all(|d| d.is_finite() && *d >= -loss));
//! ```

use crate::arch::DwGeom;
use crate::arch::{Pool, Post, UnitShape};
use crate::kernels::batchnorm::fold;
use crate::kernels::conv::{conv2d_backward, conv2d_forward};
use crate::kernels::depthwise::DwPlanes;
use crate::kernels::lanes;
use crate::kernels::pool::{maxpool_backward_plane, maxpool_plane};
use crate::kernels::simd::{self, load};
use crate::kernels::Scratch;
use crate::model::Model;
use crate::network::Network;
use crate::par::{self, SharedMut};
use alloc::vec;
use alloc::vec::Vec;
use wide::f32x8;

/// What follows BN + ReLU in the frozen sigma.
#[derive(Clone, Copy, Debug)]
pub enum SigmaPost<'a> {
    /// Nothing after BN + ReLU.
    None,
    /// A 2x2 max-pool, stride 2 (floor).
    MaxPool,
    /// Next block's depthwise conv (kernel `[c, 1, 3, 3]`) and its frozen BN, then ReLU.
    Depthwise {
        /// Stride of the depthwise 3x3 conv (pad 1).
        stride: usize,
        /// Depthwise kernel `[c, 1, 3, 3]`.
        kernel: &'a [f32],
        /// Its BN's folded scale per channel.
        scale: &'a [f32],
        /// Its BN's folded shift per channel.
        shift: &'a [f32],
    },
}

/// The frozen channelwise map of a unit: `relu(scale * y + shift)`, then `post`.
#[derive(Clone, Copy, Debug)]
pub struct Sigma<'a> {
    /// Per-channel BN scale `gamma / sqrt(running_var + eps)`.
    pub scale: &'a [f32],
    /// Per-channel BN shift `beta - running_mean * scale`.
    pub shift: &'a [f32],
    /// What follows BN + ReLU.
    pub post: SigmaPost<'a>,
}

/// A depthwise conv and its BN folded to `scale`/`shift` at running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct FrozenDepthwise {
    /// Stride of the depthwise 3x3 conv (pad 1).
    pub stride: usize,
    /// Depthwise kernel `[c, 1, 3, 3]`.
    pub kernel: Vec<f32>,
    /// Its BN's folded scale per channel.
    pub scale: Vec<f32>,
    /// Its BN's folded shift per channel.
    pub shift: Vec<f32>,
}

/// Owned frozen-sigma parameters of one unit, folded from BN running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct FrozenSigma {
    /// Per-channel BN scale `gamma / sqrt(running_var + eps)`.
    pub scale: Vec<f32>,
    /// Per-channel BN shift `beta - running_mean * scale`.
    pub shift: Vec<f32>,
    /// The next block's depthwise conv and its frozen BN (MobileNet units).
    pub depthwise: Option<FrozenDepthwise>,
    /// A 2x2 max-pool after BN + ReLU (VGG units before a pool).
    pub maxpool: bool,
}

/// BN at its running statistics as `scale`/`shift`, with the same arithmetic
/// as the model's eval-mode forward, so that at theta = 0 sigma(y) is the
/// model's `a` bit for bit and every estimate is exactly zero.
fn fold_running(net: &Network, bn: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
    let t = &net.tensors;
    let c = t[bn[0]].len();
    let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
    fold(
        &t[bn[0]], &t[bn[1]], &t[bn[2]], &t[bn[3]], &mut scale, &mut shift,
    );
    (scale, shift)
}

impl FrozenSigma {
    /// Sigma of unit `layer` with BN at its running statistics.
    pub fn of(net: &Network, layer: usize) -> FrozenSigma {
        let idx = net.index().units[layer];
        let u = net.arch.units()[layer];
        let (scale, shift) = fold_running(net, idx.bn);
        let depthwise = match (u.post, idx.depthwise) {
            (Post::Depthwise { stride }, Some((k, dbn))) => {
                let (scale, shift) = fold_running(net, dbn);
                Some(FrozenDepthwise {
                    stride,
                    kernel: net.tensors[k].clone(),
                    scale,
                    shift,
                })
            }
            _ => None,
        };
        FrozenSigma {
            scale,
            shift,
            depthwise,
            maxpool: u.post == Post::MaxPool,
        }
    }

    /// The borrowed [`Sigma`] the estimator reads.
    pub fn view(&self) -> Sigma<'_> {
        let post = match &self.depthwise {
            Some(d) => SigmaPost::Depthwise {
                stride: d.stride,
                kernel: &d.kernel,
                scale: &d.scale,
                shift: &d.shift,
            },
            None if self.maxpool => SigmaPost::MaxPool,
            None => SigmaPost::None,
        };
        Sigma {
            scale: &self.scale,
            shift: &self.shift,
            post,
        }
    }
}

/// One layer's view of a mini-batch: what the estimator reads.
#[derive(Clone, Copy, Debug)]
pub struct LayerBatch<'a> {
    /// Shape of the layer: conv geometry, channels and what follows BN + ReLU.
    pub unit: UnitShape,
    /// Samples `S`.
    pub n: usize,
    /// Layer input `[n, cin, H, W]`.
    pub x: &'a [f32],
    /// Pre-activation `[n, cout, Hc, Wc]`.
    pub y: &'a [f32],
    /// Unit output `sigma(y)` under the frozen convention (eval mode).
    pub a: &'a [f32],
    /// Gradient of the mean mini-batch loss with respect to `a`.
    pub grad_a: &'a [f32],
    /// The frozen channelwise map from `y` to `a`.
    pub sigma: Sigma<'a>,
    /// Current training loss `L_hat` (the mini-batch loss).
    pub loss: f32,
    /// For the unit that feeds the head: the exact cross-entropy Hessian at
    /// the logits instead of eq. (1)'s rank-1 term ([`Curvature::ExactLogits`]).
    pub head: Option<HeadCurvature<'a>>,
}

/// Which quadratic term the estimate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Curvature {
    /// Eq. (1) in every layer: `u_s^2 / (4 L_hat)`, a rank-1 Hessian (the paper).
    #[default]
    RankOne,
    /// For the unit that feeds the logits, `1/2 Delta_z_s^T H_s Delta_z_s`
    /// with the exact cross-entropy Hessian `H_s = diag(p_s) - p_s p_s^T`
    /// (a `K x K` matrix per sample); eq. (1) in the other layers. A departure
    /// from the paper (docs/conventions.md, "Exact curvature at the logits").
    ExactLogits,
}

/// The head as the exact-curvature term of the last unit reads it: the
/// linear layer's weight `[classes, features]`, how it pools the unit's
/// output, and every sample's softmax probabilities `[n, classes]`.
#[derive(Clone, Copy, Debug)]
pub struct HeadCurvature<'a> {
    /// The linear head's weight `[classes, features]`, row-major.
    pub weight: &'a [f32],
    /// Softmax probabilities of the logits `[n, classes]`.
    pub probs: &'a [f32],
    /// Classes `K`.
    pub classes: usize,
    /// How the head reduces the unit's output to its features.
    pub pool: Pool,
}

impl<'a> HeadCurvature<'a> {
    /// The head of `net` with the probabilities of `model`'s last forward pass,
    /// computed into `probs`.
    pub fn from_model(model: &Model, net: &'a Network, probs: &'a mut Vec<f32>) -> Self {
        let head = net.arch.head();
        let k = head.classes;
        let logits = model.logits();
        probs.resize(logits.len(), 0.0);
        for (z, p) in logits.chunks_exact(k).zip(probs.chunks_exact_mut(k)) {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (pi, &v) in p.iter_mut().zip(z) {
                *pi = libm::expf(v - max);
                sum += *pi;
            }
            p.iter_mut().for_each(|pi| *pi /= sum);
        }
        HeadCurvature {
            weight: &net.tensors[net.index().head_weight],
            probs,
            classes: k,
            pool: head.pool,
        }
    }

    /// `dz = f * W[:, block of channel ch] . delta` for one channel plane
    /// `delta` of sample features (`channels` per sample): the change of the
    /// logits when that plane of the unit output moves by `delta`.
    fn logit_change(&self, ch: usize, channels: usize, delta: &[f32], f: f32, dz: &mut [f32]) {
        let po = delta.len();
        let (feat, block) = match self.pool {
            Pool::Flatten => (channels * po, ch * po),
            Pool::GlobalAverage => (channels, ch),
        };
        for (k, out) in dz.iter_mut().enumerate() {
            let row = &self.weight[k * feat..(k + 1) * feat];
            *out = f * match self.pool {
                Pool::Flatten => row[block..block + po]
                    .iter()
                    .zip(delta)
                    .map(|(w, d)| w * d)
                    .sum::<f32>(),
                Pool::GlobalAverage => row[block] * delta.iter().sum::<f32>() / po as f32,
            };
        }
    }

    /// `q = H_s dz` for sample `s` (`H_s = diag(p) - p p^T`); returns
    /// `1/2 dz . q`, the exact quadratic term.
    fn hessian_times(&self, s: usize, dz: &[f32], q: &mut [f32]) -> f32 {
        let p = &self.probs[s * self.classes..(s + 1) * self.classes];
        let pdz: f32 = p.iter().zip(dz).map(|(a, b)| a * b).sum();
        for ((qk, &pk), &dk) in q.iter_mut().zip(p).zip(dz) {
            *qk = pk * (dk - pdz);
        }
        0.5 * dz.iter().zip(q.iter()).map(|(a, b)| a * b).sum::<f32>()
    }

    /// `out[p] += f * (W^T q)[feature of (ch, p)]` over one channel plane.
    fn add_transposed(&self, ch: usize, channels: usize, q: &[f32], f: f32, out: &mut [f32]) {
        let po = out.len();
        match self.pool {
            Pool::Flatten => {
                let feat = channels * po;
                for (k, &qk) in q.iter().enumerate() {
                    let row = &self.weight[k * feat + ch * po..][..po];
                    for (o, w) in out.iter_mut().zip(row) {
                        *o += f * qk * w;
                    }
                }
            }
            Pool::GlobalAverage => {
                let feat = channels;
                let v: f32 = q
                    .iter()
                    .enumerate()
                    .map(|(k, &qk)| qk * self.weight[k * feat + ch])
                    .sum();
                let add = f * v / po as f32;
                out.iter_mut().for_each(|o| *o += add);
            }
        }
    }
}

impl<'a> LayerBatch<'a> {
    /// The layer's buffers from a model after an eval-mode forward and backward.
    pub fn from_model(
        model: &'a Model,
        layer: usize,
        sigma: Sigma<'a>,
        loss: f32,
    ) -> LayerBatch<'a> {
        LayerBatch {
            unit: model.units()[layer],
            n: model.batch(),
            x: model.unit_input(layer),
            y: model.pre_activation(layer),
            a: model.unit_output(layer),
            grad_a: model.output_grad(layer),
            sigma,
            loss,
            head: None,
        }
    }

    /// The same batch with the exact curvature at the logits (only for the
    /// unit that feeds the head; `None` keeps eq. (1)).
    pub fn with_head(self, head: Option<HeadCurvature<'a>>) -> Self {
        LayerBatch { head, ..self }
    }
}

/// Eq. (1) for one sample: `u + u^2 / (4 L_hat)`.
#[inline]
pub fn gauss_newton(u: f32, loss: f32) -> f32 {
    u + u * u / (4.0 * loss)
}

/// Reusable buffers of the estimator.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    d: Vec<f32>,
    dd: Vec<f32>,
    u: Vec<f32>,
    /// Per sample and channel: the exact quadratic term (with a head only).
    second: Vec<f32>,
    scratch: Option<Scratch>,
}

impl Workspace {
    /// `u[s * cout + c]` of the last [`split_estimates`] call: the first-order
    /// term `Delta_z_s . g_s` of each sample and channel.
    pub fn last_u(&self, n: usize, channels: usize) -> &[f32] {
        &self.u[..n * channels]
    }
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Runs `f(plane, channel, out_plane)` over the `n * c` planes of `out`
/// (each `plane` long), in parallel.
fn planes_mut(
    out: &mut [f32],
    c: usize,
    plane: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    let count = out.len() / plane.max(1);
    let op = SharedMut::new(out);
    par::for_each(count, |p| {
        // SAFETY: plane p is written only here.
        let o = unsafe { op.slice(p * plane, plane) };
        f(p, p % c, o)
    });
}

/// One plane of a frozen BN + ReLU on a shifted input: `out = relu(scale * (y + sign * d) + shift)`.
#[inline]
fn shifted_bn_relu_plane(y: &[f32], d: &[f32], sign: f32, scale: f32, shift: f32, out: &mut [f32]) {
    let (sc, sh, sg) = (f32x8::splat(scale), f32x8::splat(shift), f32x8::splat(sign));
    simd::map(
        out,
        |i| (sc * (load(y, i) + sg * load(d, i)) + sh).max(f32x8::ZERO),
        |i| (scale * (y[i] + sign * d[i]) + shift).max(0.0),
    );
}

/// One plane's `sum (a_plus + a_minus - 2 a0) * g`: the split's `Delta_a . G`.
#[inline]
fn second_difference_dot(ap: &[f32], am: &[f32], a0: &[f32], g: &[f32]) -> f32 {
    let two = f32x8::splat(2.0);
    simd::sum(
        g.len(),
        |i| (load(ap, i) + load(am, i) - two * load(a0, i)) * load(g, i),
        |i| (ap[i] + am[i] - 2.0 * a0[i]) * g[i],
    )
}

/// One plane of `dd = [h+ > 0] g+ * scale - [h- > 0] g- * scale`: the
/// gradients through the first BN + ReLU of sigma(y + d) and sigma(y - d),
/// subtracted.
#[inline]
fn masked_difference(hp: &[f32], gp: &[f32], hm: &[f32], gm: &[f32], scale: f32, out: &mut [f32]) {
    let sc = f32x8::splat(scale);
    simd::map(
        out,
        |i| {
            simd::relu_mask(load(hp, i), load(gp, i)) * sc
                - simd::relu_mask(load(hm, i), load(gm, i)) * sc
        },
        |i| {
            let masked = |h: f32, g: f32| if h > 0.0 { g * scale } else { 0.0 };
            masked(hp[i], gp[i]) - masked(hm[i], gm[i])
        },
    );
}

/// One plane of `out = [a > 0] * f * g`: the backward of a frozen BN + ReLU
/// (`f` its scale, times any factor on the incoming gradient `g`).
#[inline]
fn masked_scale_plane(a: &[f32], g: &[f32], f: f32, out: &mut [f32]) {
    let fv = f32x8::splat(f);
    simd::map(
        out,
        |i| simd::relu_mask(load(a, i), load(g, i)) * fv,
        |i| if a[i] > 0.0 { g[i] * f } else { 0.0 },
    );
}

/// A frozen sigma that ends in the next block's depthwise conv (MobileNet):
/// `relu(dw_scale * depthwise(relu(scale * y + shift)) + dw_shift)`.
struct DepthwiseSigma<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    stride: usize,
    kernel: &'a [f32],
    dw_scale: &'a [f32],
    dw_shift: &'a [f32],
}

impl DepthwiseSigma<'_> {
    fn geom(&self, u: &UnitShape) -> DwGeom {
        DwGeom {
            channels: u.cout,
            stride: self.stride,
            in_hw: u.conv_hw,
            out_hw: u.out_hw,
        }
    }
}

/// Split estimates for every channel of the layer: `delta_l[c]` gets eq. (1)
/// for the split of channel `c` with `theta[c]` (`theta` is `[cout, cin, k, k]`,
/// stacked like the layer's kernel), and `grad_theta`, when given, gets
/// `dDeltaL[c] / dtheta[c]` for every channel.
pub fn split_estimates(
    b: &LayerBatch,
    theta: &[f32],
    ws: &mut Workspace,
    delta_l: &mut [f32],
    grad_theta: Option<&mut [f32]>,
) {
    let u = b.unit;
    let (n, c) = (b.n, u.cout);
    let conv_len = n * u.conv_len();
    let geom = u.conv_geom();
    let scratch = ws.scratch.get_or_insert_with(Scratch::new);
    let d = sized(&mut ws.d, conv_len);
    conv2d_forward(&geom, n, b.x, theta, d, scratch);
    let us = sized(&mut ws.u, n * c);
    let dd = grad_theta.is_some().then(|| sized(&mut ws.dd, conv_len));
    let d = &ws.d[..conv_len];
    match b.sigma.post {
        SigmaPost::Depthwise {
            stride,
            kernel,
            scale: dw_scale,
            shift: dw_shift,
        } => {
            let dw = DepthwiseSigma {
                scale: b.sigma.scale,
                shift: b.sigma.shift,
                stride,
                kernel,
                dw_scale,
                dw_shift,
            };
            fused_depthwise_split(b, &dw, d, us, dd);
        }
        // BN + ReLU (+ max-pool): everything after the conv is local to a
        // plane, so one fused pass per plane does it all.
        _ => {
            let second = b.head.is_some().then(|| sized(&mut ws.second, n * c));
            fused_pointwise_split(b, d, us, second, dd)
        }
    }
    let second = (b.head.is_some() && !matches!(b.sigma.post, SigmaPost::Depthwise { .. }))
        .then(|| &ws.second[..n * c]);
    write_estimates(&ws.u[..n * c], second, n, c, b.loss, delta_l);
    if let Some(grad_theta) = grad_theta {
        let scratch = ws.scratch.get_or_insert_with(Scratch::new);
        conv2d_backward(
            &geom,
            n,
            b.x,
            theta,
            &ws.dd[..conv_len],
            None,
            grad_theta,
            scratch,
        );
    }
}

/// [`split_estimates`] after the conv for a depthwise sigma (BN + ReLU, the
/// next block's depthwise conv, its BN + ReLU), a group of one channel's
/// planes at a time while they are in cache: every step of sigma is local to
/// a sample's channel plane, and the depthwise conv stacks the group's planes
/// in one grid. `us` and `dd` as in [`fused_pointwise_split`].
fn fused_depthwise_split(
    b: &LayerBatch,
    dw: &DepthwiseSigma,
    d: &[f32],
    us: &mut [f32],
    dd: Option<&mut [f32]>,
) {
    let u = b.unit;
    let (n, c) = (b.n, u.cout);
    let (pc, po) = (u.conv_hw.0 * u.conv_hw.1, u.out_hw.0 * u.out_hw.1);
    let half_s = 0.5 * n as f32;
    let loss = b.loss;
    let geom = dw.geom(&u);
    let mut bufs: Vec<DepthwiseBufs> = (0..par::threads())
        .map(|_| DepthwiseBufs::new(&geom, n, pc, po))
        .collect();
    let group = bufs[0].conv.group();
    let chunks = n.div_ceil(group);
    let up = SharedMut::new(us);
    let ddp = dd.map(SharedMut::new);
    par::for_each_part(c * chunks, &mut bufs, |items, w| {
        for item in items {
            let (ch, s0) = (item / chunks, (item % chunks) * group);
            let m = group.min(n - s0);
            // Sample s0 + j's plane of channel ch.
            let plane = |j: usize| (s0 + j) * c + ch;
            let k = &dw.kernel[ch * 9..(ch + 1) * 9];
            let (sc, sh) = (dw.scale[ch], dw.shift[ch]);
            let (dsc, dsh) = (dw.dw_scale[ch], dw.dw_shift[ch]);
            let (cl, ol) = (m * pc, m * po);
            // sigma(y + d) and sigma(y - d).
            for j in 0..m {
                let r = plane(j) * pc..(plane(j) + 1) * pc;
                let (y, dp) = (&b.y[r.clone()], &d[r]);
                let h = j * pc..(j + 1) * pc;
                shifted_bn_relu_plane(y, dp, 1.0, sc, sh, &mut w.hp[h.clone()]);
                shifted_bn_relu_plane(y, dp, -1.0, sc, sh, &mut w.hm[h]);
            }
            w.conv.forward(m, &w.hp[..cl], k, &mut w.zp[..ol]);
            w.conv.forward(m, &w.hm[..cl], k, &mut w.zm[..ol]);
            shifted_bn_relu_plane(&w.zp[..ol], &w.zp[..ol], 0.0, dsc, dsh, &mut w.ap[..ol]);
            shifted_bn_relu_plane(&w.zm[..ol], &w.zm[..ol], 0.0, dsc, dsh, &mut w.am[..ol]);
            // u = (S / 2) * sum (sigma(y + d) + sigma(y - d) - 2 sigma(y)) * G;
            // dDeltaL/dDelta_a = (1 + u / (2 L_hat)) / S * (S / 2) * G, back
            // through the depthwise conv of sigma(y + d) and of sigma(y - d).
            for j in 0..m {
                let (p, o) = (plane(j), j * po..(j + 1) * po);
                let (a0, g) = (&b.a[p * po..(p + 1) * po], &b.grad_a[p * po..(p + 1) * po]);
                let u_s = half_s * second_difference_dot(&w.ap[o.clone()], &w.am[o.clone()], a0, g);
                // SAFETY: element p has one writer.
                unsafe { up.write(p, u_s) };
                w.coef[j] = 0.5 * (1.0 + u_s / (2.0 * loss)) * dsc;
            }
            let Some(ddp) = ddp else { continue };
            for j in 0..m {
                let (p, o) = (plane(j), j * po..(j + 1) * po);
                let (g, f) = (&b.grad_a[p * po..(p + 1) * po], w.coef[j]);
                masked_scale_plane(&w.ap[o.clone()], g, f, &mut w.gzp[o.clone()]);
                masked_scale_plane(&w.am[o.clone()], g, f, &mut w.gzm[o]);
            }
            w.conv.backward_input(m, k, &w.gzp[..ol], &mut w.ghp[..cl]);
            w.conv.backward_input(m, k, &w.gzm[..ol], &mut w.ghm[..cl]);
            for j in 0..m {
                let h = j * pc..(j + 1) * pc;
                // SAFETY: plane p has one writer.
                let out = unsafe { ddp.slice(plane(j) * pc, pc) };
                let (hp, hm) = (&w.hp[h.clone()], &w.hm[h.clone()]);
                masked_difference(hp, &w.ghp[h.clone()], hm, &w.ghm[h], sc, out);
            }
        }
    });
}

/// One worker's buffers for [`fused_depthwise_split`]: a group of planes each.
struct DepthwiseBufs {
    conv: DwPlanes,
    hp: Vec<f32>,
    hm: Vec<f32>,
    ghp: Vec<f32>,
    ghm: Vec<f32>,
    zp: Vec<f32>,
    zm: Vec<f32>,
    ap: Vec<f32>,
    am: Vec<f32>,
    gzp: Vec<f32>,
    gzm: Vec<f32>,
    /// Per plane: the factor on G of the way back.
    coef: Vec<f32>,
}

impl DepthwiseBufs {
    fn new(geom: &DwGeom, most: usize, conv_plane: usize, out_plane: usize) -> Self {
        let conv = DwPlanes::new(geom, most);
        let (cl, ol) = (conv.group() * conv_plane, conv.group() * out_plane);
        DepthwiseBufs {
            coef: vec![0.0; conv.group()],
            conv,
            hp: vec![0.0; cl],
            hm: vec![0.0; cl],
            ghp: vec![0.0; cl],
            ghm: vec![0.0; cl],
            zp: vec![0.0; ol],
            zm: vec![0.0; ol],
            ap: vec![0.0; ol],
            am: vec![0.0; ol],
            gzp: vec![0.0; ol],
            gzm: vec![0.0; ol],
        }
    }
}

/// Eq. (1) averaged over the samples: `delta_l[c] = 1/S sum_s (u + u^2 / (4 L_hat))`,
/// or with `second` (the exact quadratic terms) `1/S sum_s (u + second)`.
fn write_estimates(
    us: &[f32],
    second: Option<&[f32]>,
    n: usize,
    c: usize,
    loss: f32,
    delta_l: &mut [f32],
) {
    let inv_s = 1.0 / n as f32;
    for ch in 0..c {
        let sample = |s: usize| match second {
            Some(q) => us[s * c + ch] + q[s * c + ch],
            None => gauss_newton(us[s * c + ch], loss),
        };
        delta_l[ch] = (0..n).map(sample).sum::<f32>() * inv_s;
    }
}

/// [`split_estimates`] after the conv for a sigma of BN + ReLU and an optional
/// 2x2 max-pool, one plane at a time while it is in cache: `us` gets every
/// sample's and channel's `u`, and `dd`, when given, `dDeltaL / dd` (what the
/// weight-gradient conv turns into the theta gradient).
///
/// With a head ([`Curvature::ExactLogits`]) `second` gets every sample's
/// and channel's exact quadratic term, and the way back adds its gradient.
fn fused_pointwise_split(
    b: &LayerBatch,
    d: &[f32],
    us: &mut [f32],
    second: Option<&mut [f32]>,
    dd: Option<&mut [f32]>,
) {
    let u = b.unit;
    let c = u.cout;
    let (pc, po) = (u.conv_hw.0 * u.conv_hw.1, u.out_hw.0 * u.out_hw.1);
    let pool = matches!(b.sigma.post, SigmaPost::MaxPool);
    let half_s = 0.5 * b.n as f32;
    let loss = b.loss;
    let (scale, shift) = (b.sigma.scale, b.sigma.shift);
    let isa = lanes::isa();
    let up = SharedMut::new(us);
    let qp = second.map(SharedMut::new);
    let ddp = dd.map(SharedMut::new);
    let classes = b.head.map_or(0, |h| h.classes);
    let mut bufs: Vec<PlaneBufs> = (0..par::threads()).map(|_| PlaneBufs::default()).collect();
    par::for_each_part(b.n * c, &mut bufs, |planes, w| {
        w.resize(pc, po, classes);
        for p in planes {
            let ch = p % c;
            let (sc, sh) = (scale[ch], shift[ch]);
            let y = &b.y[p * pc..(p + 1) * pc];
            let dp = &d[p * pc..(p + 1) * pc];
            let a0 = &b.a[p * po..(p + 1) * po];
            let g = &b.grad_a[p * po..(p + 1) * po];
            shifted_bn_relu_plane(y, dp, 1.0, sc, sh, &mut w.hp);
            shifted_bn_relu_plane(y, dp, -1.0, sc, sh, &mut w.hm);
            let (ap, am): (&[f32], &[f32]) = if pool {
                maxpool_plane(isa, u.conv_hw, &w.hp, &mut w.ap);
                maxpool_plane(isa, u.conv_hw, &w.hm, &mut w.am);
                (&w.ap, &w.am)
            } else {
                (&w.hp, &w.hm)
            };
            // u = (S / 2) * sum (sigma(y + d) + sigma(y - d) - 2 sigma(y)) * G.
            let u_s = half_s * second_difference_dot(ap, am, a0, g);
            // SAFETY: element p has one writer.
            unsafe { up.write(p, u_s) };
            // Exact curvature: Delta_z = 1/2 W_c Delta_a, second = 1/2 Delta_z^T H Delta_z.
            if let (Some(h), Some(qp)) = (&b.head, &qp) {
                for ((o, (&x, &y)), &z) in w.delta.iter_mut().zip(ap.iter().zip(am)).zip(a0) {
                    *o = x + y - 2.0 * z;
                }
                h.logit_change(ch, c, &w.delta, 0.5, &mut w.dz);
                let q2 = h.hessian_times(p / c, &w.dz, &mut w.q);
                // SAFETY: element p has one writer.
                unsafe { qp.write(p, q2) };
            }
            let Some(ddp) = ddp else { continue };
            // dDeltaL/dDelta_a = (1 + u / (2 L_hat)) / S * (S / 2) * G, then back
            // through sigma(y + d) minus back through sigma(y - d). Exact
            // curvature: 1/2 G + 1/(2 S) W_c^T H Delta_z instead.
            let coef = if b.head.is_some() {
                0.5
            } else {
                0.5 * (1.0 + u_s / (2.0 * loss))
            };
            let cv = f32x8::splat(coef);
            simd::map(&mut w.g, |i| cv * load(g, i), |i| coef * g[i]);
            if let Some(h) = &b.head {
                h.add_transposed(ch, c, &w.q, 0.5 / b.n as f32, &mut w.g);
            }
            let (rp, rm): (&[f32], &[f32]) = if pool {
                maxpool_backward_plane(isa, u.conv_hw, &w.hp, &w.g, &mut w.rp);
                maxpool_backward_plane(isa, u.conv_hw, &w.hm, &w.g, &mut w.rm);
                (&w.rp, &w.rm)
            } else {
                (&w.g, &w.g)
            };
            // SAFETY: plane p has one writer.
            let out = unsafe { ddp.slice(p * pc, pc) };
            masked_difference(&w.hp, rp, &w.hm, rm, sc, out);
        }
    });
}

/// One worker's plane-sized buffers for [`fused_pointwise_split`].
#[derive(Default)]
struct PlaneBufs {
    hp: Vec<f32>,
    hm: Vec<f32>,
    ap: Vec<f32>,
    am: Vec<f32>,
    g: Vec<f32>,
    rp: Vec<f32>,
    rm: Vec<f32>,
    /// Exact curvature: the plane's `Delta_a`, `Delta_z` and `H Delta_z`.
    delta: Vec<f32>,
    dz: Vec<f32>,
    q: Vec<f32>,
}

impl PlaneBufs {
    fn resize(&mut self, conv_plane: usize, out_plane: usize, classes: usize) {
        for v in [&mut self.hp, &mut self.hm, &mut self.rp, &mut self.rm] {
            v.resize(conv_plane, 0.0);
        }
        for v in [&mut self.ap, &mut self.am, &mut self.g, &mut self.delta] {
            v.resize(out_plane, 0.0);
        }
        for v in [&mut self.dz, &mut self.q] {
            v.resize(classes, 0.0);
        }
    }
}

/// Per-sample first-order terms of pruning every channel: `Delta_a = -a`,
/// `u[s * cout + c] = -S * sum(a_s * G_s)` (no 1/2: the channel goes away).
pub fn prune_samples(b: &LayerBatch, u: &mut [f32]) {
    let unit = b.unit;
    let (n, c) = (b.n, unit.cout);
    let po = unit.out_hw.0 * unit.out_hw.1;
    let s = n as f32;
    planes_mut(&mut u[..n * c], 1, 1, |p, _, out| {
        let (a, g) = (&b.a[p * po..(p + 1) * po], &b.grad_a[p * po..(p + 1) * po]);
        out[0] = -s * simd::sum(po, |i| load(a, i) * load(g, i), |i| a[i] * g[i]);
    });
}

/// Prune estimates for every channel from [`prune_samples`]' `u` (`n x cout`):
/// eq. (1), or with the batch's head the exact quadratic term of
/// `Delta_z = -W_c a` ([`Curvature::ExactLogits`]).
pub fn prune_estimates_from(b: &LayerBatch, u: &[f32], delta_l: &mut [f32]) {
    let (n, c) = (b.n, b.unit.cout);
    let second = b.head.map(|h| {
        let po = b.unit.out_hw.0 * b.unit.out_hw.1;
        let (mut dz, mut q) = (vec![0.0; h.classes], vec![0.0; h.classes]);
        let mut second = vec![0.0; n * c];
        for (p, out) in second.iter_mut().enumerate() {
            h.logit_change(p % c, c, &b.a[p * po..(p + 1) * po], -1.0, &mut dz);
            *out = h.hessian_times(p / c, &dz, &mut q);
        }
        second
    });
    write_estimates(u, second.as_deref(), n, c, b.loss, delta_l);
}

/// Prune estimates for every channel: `Delta_a = -a`, `u_s = -sum(a_s * G_s)`.
pub fn prune_estimates(b: &LayerBatch, delta_l: &mut [f32]) {
    let mut u = vec![0.0; b.n * b.unit.cout];
    prune_samples(b, &mut u);
    prune_estimates_from(b, &u, delta_l);
}
