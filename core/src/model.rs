//! Whole-network forward and backward on the CPU, with preallocated buffers.
//!
//! Per growable layer it keeps what the estimator needs (docs/conventions.md): the
//! layer input `x`, the pre-activation `y`, the unit output `a` that the next
//! layer reads, and `dL/da`.

use crate::arch::{Arch, HeadShape, Pool, Post, UnitShape};
use crate::kernels::batchnorm::{self as bn, BnGeom};
use crate::kernels::conv::{conv2d_backward, conv2d_backward_input, conv2d_forward, ConvGeom};
use crate::kernels::depthwise::{
    depthwise_backward, depthwise_backward_input, depthwise_forward, DwGeom,
};
use crate::kernels::linear::{linear_backward, linear_forward};
use crate::kernels::loss::softmax_cross_entropy;
use crate::kernels::pool::{gap_backward, gap_forward, maxpool_backward, maxpool_forward};
use crate::kernels::Scratch;
use crate::network::{Network, ParamIndex};
use alloc::vec;
use alloc::vec::Vec;

/// Whether BN uses batch statistics (and backward differentiates through them)
/// or the running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics in BN, running statistics updated.
    Train,
    /// Running statistics in BN (frozen sigma).
    Eval,
}

/// Buffers of one unit, each sized for the model's batch capacity.
#[derive(Clone, Debug, Default)]
struct UnitBuffers {
    /// Conv output (pre-activation).
    y: Vec<f32>,
    /// `relu(bn(y))`; the unit output itself when nothing follows.
    h: Vec<f32>,
    /// Depthwise conv output (MobileNet).
    z: Vec<f32>,
    /// Unit output after pooling or the depthwise block; empty when `h` is the output.
    a: Vec<f32>,
    /// `dL/da`.
    da: Vec<f32>,
    /// `dL/dy`.
    dy: Vec<f32>,
    /// Statistics BN used in the last forward: batch (train) or running (eval).
    mean: Vec<f32>,
    var: Vec<f32>,
    dw_mean: Vec<f32>,
    dw_var: Vec<f32>,
}

/// Forward/backward engine for one architecture and a maximum batch size.
#[derive(Clone, Debug)]
pub struct Model {
    arch: Arch,
    units: Vec<UnitShape>,
    head: HeadShape,
    index: ParamIndex,
    capacity: usize,
    n: usize,
    mode: Mode,
    input: Vec<f32>,
    bufs: Vec<UnitBuffers>,
    features: Vec<f32>,
    dfeatures: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    tmp_dh: Vec<f32>,
    tmp_dz: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    scratch: Scratch,
}

impl Model {
    /// Allocates every buffer for batches of up to `capacity` samples.
    pub fn new(arch: &Arch, capacity: usize) -> Model {
        let units = arch.units();
        let head = arch.head();
        let cap = capacity.max(1);
        let mut max_conv = 0;
        let mut max_out = 0;
        let mut max_c = 0;
        let bufs = units
            .iter()
            .map(|u| {
                max_conv = max_conv.max(u.conv_len());
                max_out = max_out.max(u.out_len());
                max_c = max_c.max(u.cout);
                let has_a = u.post != Post::None;
                let has_dw = matches!(u.post, Post::Depthwise { .. });
                UnitBuffers {
                    y: vec![0.0; cap * u.conv_len()],
                    h: vec![0.0; cap * u.conv_len()],
                    z: if has_dw {
                        vec![0.0; cap * u.out_len()]
                    } else {
                        Vec::new()
                    },
                    a: if has_a {
                        vec![0.0; cap * u.out_len()]
                    } else {
                        Vec::new()
                    },
                    da: vec![0.0; cap * u.out_len()],
                    dy: vec![0.0; cap * u.conv_len()],
                    mean: vec![0.0; u.cout],
                    var: vec![0.0; u.cout],
                    dw_mean: vec![0.0; if has_dw { u.cout } else { 0 }],
                    dw_var: vec![0.0; if has_dw { u.cout } else { 0 }],
                }
            })
            .collect();
        Model {
            arch: arch.clone(),
            index: ParamIndex::new(arch),
            capacity: cap,
            n: 0,
            mode: Mode::Eval,
            input: vec![0.0; cap * arch.input.iter().product::<usize>()],
            bufs,
            features: vec![0.0; cap * head.features()],
            dfeatures: vec![0.0; cap * head.features()],
            logits: vec![0.0; cap * head.classes],
            dlogits: vec![0.0; cap * head.classes],
            tmp_dh: vec![0.0; cap * max_conv],
            tmp_dz: vec![0.0; cap * max_out],
            scale: vec![0.0; max_c],
            shift: vec![0.0; max_c],
            scratch: Scratch::new(),
            units,
            head,
        }
    }

    /// The architecture the model runs.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }
    /// Largest batch the buffers hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Samples in the last forward pass.
    pub fn batch(&self) -> usize {
        self.n
    }
    /// Per-unit shapes.
    pub fn units(&self) -> &[UnitShape] {
        &self.units
    }
    /// The kernels' scratch buffers, for reuse by callers.
    pub fn scratch(&mut self) -> &mut Scratch {
        &mut self.scratch
    }

    /// Input of unit `l` (the images for `l == 0`), for the last batch.
    pub fn unit_input(&self, l: usize) -> &[f32] {
        if l == 0 {
            &self.input[..self.n * self.units[0].in_len()]
        } else {
            self.unit_output(l - 1)
        }
    }
    /// Pre-activation `y` of unit `l`.
    pub fn pre_activation(&self, l: usize) -> &[f32] {
        &self.bufs[l].y[..self.n * self.units[l].conv_len()]
    }
    /// `relu(bn(y))` of unit `l`, before any pooling or depthwise block.
    pub fn bn_relu_output(&self, l: usize) -> &[f32] {
        &self.bufs[l].h[..self.n * self.units[l].conv_len()]
    }
    /// Output `a` of unit `l`: what the next layer reads.
    pub fn unit_output(&self, l: usize) -> &[f32] {
        let b = &self.bufs[l];
        let len = self.n * self.units[l].out_len();
        if self.units[l].post == Post::None {
            &b.h[..len]
        } else {
            &b.a[..len]
        }
    }
    /// `dL/da` of unit `l` from the last backward pass.
    pub fn output_grad(&self, l: usize) -> &[f32] {
        &self.bufs[l].da[..self.n * self.units[l].out_len()]
    }
    /// `dL/dy` of unit `l`'s pre-activation from the last backward pass.
    pub fn pre_activation_grad(&self, l: usize) -> &[f32] {
        &self.bufs[l].dy[..self.n * self.units[l].conv_len()]
    }
    /// `dL/dlogits` of the last [`Model::loss`].
    pub fn logits_grad(&self) -> &[f32] {
        &self.dlogits[..self.n * self.head.classes]
    }
    /// Logits of the last forward pass.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.n * self.head.classes]
    }

    /// Forward pass on `n` images (NCHW). In train mode BN uses batch
    /// statistics; call [`Model::update_running_stats`] to fold them into the network.
    pub fn forward(&mut self, net: &Network, images: &[f32], n: usize, mode: Mode) {
        assert!(
            n <= self.capacity,
            "batch of {n} exceeds model capacity {}",
            self.capacity
        );
        assert_eq!(
            net.arch, self.arch,
            "network architecture differs from the model's"
        );
        self.n = n;
        self.mode = mode;
        let in_len = self.units[0].in_len();
        self.input[..n * in_len].copy_from_slice(&images[..n * in_len]);
        for l in 0..self.units.len() {
            self.forward_unit(net, l);
        }
        self.forward_head(net);
    }

    fn forward_unit(&mut self, net: &Network, l: usize) {
        let u = self.units[l];
        let p = self.index.units[l];
        let n = self.n;
        let (prev, rest) = self.bufs.split_at_mut(l);
        let cur = &mut rest[0];
        let x: &[f32] = if l == 0 {
            &self.input
        } else {
            let pu = &self.units[l - 1];
            let pb = &prev[l - 1];
            if pu.post == Post::None {
                &pb.h
            } else {
                &pb.a
            }
        };
        let geom = conv_geom(&u);
        conv2d_forward(
            &geom,
            n,
            x,
            &net.tensors[p.conv],
            &mut cur.y,
            &mut self.scratch,
        );
        let g = BnGeom {
            n,
            channels: u.cout,
            plane: u.conv_hw.0 * u.conv_hw.1,
        };
        bn_relu(
            self.mode,
            &g,
            net,
            p.bn,
            &cur.y,
            &mut cur.mean,
            &mut cur.var,
            &mut self.scale,
            &mut self.shift,
            &mut cur.h,
        );
        match u.post {
            Post::None => {}
            Post::MaxPool => maxpool_forward(n * u.cout, u.conv_hw, &cur.h, &mut cur.a),
            Post::Depthwise { stride } => {
                let (dk, dbn) = p
                    .depthwise
                    .expect("depthwise unit has depthwise parameters");
                let dg = DwGeom {
                    channels: u.cout,
                    stride,
                    in_hw: u.conv_hw,
                    out_hw: u.out_hw,
                };
                depthwise_forward(&dg, n, &cur.h, &net.tensors[dk], &mut cur.z);
                let g2 = BnGeom {
                    n,
                    channels: u.cout,
                    plane: u.out_hw.0 * u.out_hw.1,
                };
                bn_relu(
                    self.mode,
                    &g2,
                    net,
                    dbn,
                    &cur.z,
                    &mut cur.dw_mean,
                    &mut cur.dw_var,
                    &mut self.scale,
                    &mut self.shift,
                    &mut cur.a,
                );
            }
        }
    }

    fn forward_head(&mut self, net: &Network) {
        let n = self.n;
        let last = self.units.len() - 1;
        let u = self.units[last];
        let h = self.head;
        let out: &[f32] = if u.post == Post::None {
            &self.bufs[last].h
        } else {
            &self.bufs[last].a
        };
        let f: &[f32] = match h.pool {
            Pool::Flatten => out,
            Pool::GlobalAverage => {
                gap_forward(n * u.cout, u.out_hw.0 * u.out_hw.1, out, &mut self.features);
                &self.features
            }
        };
        let (w, b) = (
            &net.tensors[self.index.head_weight],
            &net.tensors[self.index.head_bias],
        );
        linear_forward(n, h.features(), h.classes, f, w, b, &mut self.logits);
    }

    /// Mean cross-entropy of the last forward pass against `labels`; keeps
    /// `dL/dlogits` for [`Model::backward`]. Returns `(loss, correct)`.
    pub fn loss(&mut self, labels: &[u32]) -> (f32, usize) {
        softmax_cross_entropy(
            self.n,
            self.head.classes,
            &self.logits,
            labels,
            &mut self.dlogits,
        )
    }

    /// Folds the batch statistics of the last train-mode forward into the
    /// network's running statistics.
    pub fn update_running_stats(&self, net: &mut Network) {
        assert_eq!(self.mode, Mode::Train);
        for (l, u) in self.units.iter().enumerate() {
            let p = self.index.units[l];
            let b = &self.bufs[l];
            let g = BnGeom {
                n: self.n,
                channels: u.cout,
                plane: u.conv_hw.0 * u.conv_hw.1,
            };
            let (rm, rv) = two_mut(&mut net.tensors, p.bn[2], p.bn[3]);
            bn::update_running(&g, &b.mean, &b.var, rm, rv);
            if let Some((_, dbn)) = p.depthwise {
                let g2 = BnGeom {
                    n: self.n,
                    channels: u.cout,
                    plane: u.out_hw.0 * u.out_hw.1,
                };
                let (rm, rv) = two_mut(&mut net.tensors, dbn[2], dbn[3]);
                bn::update_running(&g2, &b.dw_mean, &b.dw_var, rm, rv);
            }
        }
    }

    /// Backward pass after [`Model::loss`]: fills `grads` (shaped like the
    /// network's tensors; running-statistics entries are left untouched) and
    /// every unit's `dL/da`.
    pub fn backward(&mut self, net: &Network, grads: &mut [Vec<f32>]) {
        self.backward_impl(net, grads, true);
    }

    /// Like [`Model::backward`] but without the conv and depthwise kernel
    /// gradients (their entries in `grads` are left stale): what the estimator needs is every
    /// unit's `dL/da` and `dL/dy`, and skipping `dL/dw` saves a third of the pass.
    pub fn backward_activations(&mut self, net: &Network, grads: &mut [Vec<f32>]) {
        self.backward_impl(net, grads, false);
    }

    fn backward_impl(&mut self, net: &Network, grads: &mut [Vec<f32>], conv_weights: bool) {
        let n = self.n;
        let last = self.units.len() - 1;
        let lu = self.units[last];
        let h = self.head;
        let idx = &self.index;
        {
            let out: &[f32] = if lu.post == Post::None {
                &self.bufs[last].h
            } else {
                &self.bufs[last].a
            };
            let f: &[f32] = match h.pool {
                Pool::Flatten => out,
                Pool::GlobalAverage => &self.features,
            };
            let (gw, gb) = two_mut(grads, idx.head_weight, idx.head_bias);
            let w = &net.tensors[idx.head_weight];
            linear_backward(
                n,
                h.features(),
                h.classes,
                f,
                w,
                &self.dlogits,
                Some(&mut self.dfeatures),
                gw,
                gb,
            );
        }
        let olen = n * lu.out_len();
        match h.pool {
            Pool::Flatten => self.bufs[last].da[..olen].copy_from_slice(&self.dfeatures[..olen]),
            Pool::GlobalAverage => gap_backward(
                n * lu.cout,
                lu.out_hw.0 * lu.out_hw.1,
                &self.dfeatures,
                &mut self.bufs[last].da,
            ),
        }
        for l in (0..self.units.len()).rev() {
            self.backward_unit(net, grads, l, conv_weights);
        }
    }

    fn backward_unit(
        &mut self,
        net: &Network,
        grads: &mut [Vec<f32>],
        l: usize,
        conv_weights: bool,
    ) {
        let u = self.units[l];
        let p = self.index.units[l];
        let n = self.n;
        let (prev, rest) = self.bufs.split_at_mut(l);
        let cur = &mut rest[0];
        let conv_plane = u.conv_hw.0 * u.conv_hw.1;
        // dL/dh, the gradient at the BN + ReLU output.
        let dh: &[f32] = match u.post {
            Post::None => &cur.da,
            Post::MaxPool => {
                maxpool_backward(n * u.cout, u.conv_hw, &cur.h, &cur.da, &mut self.tmp_dh);
                &self.tmp_dh
            }
            Post::Depthwise { stride } => {
                let (dk, dbn) = p
                    .depthwise
                    .expect("depthwise unit has depthwise parameters");
                let g2 = BnGeom {
                    n,
                    channels: u.cout,
                    plane: u.out_hw.0 * u.out_hw.1,
                };
                {
                    let (gg, gb) = two_mut(grads, dbn[0], dbn[1]);
                    bn_relu_backward(
                        self.mode,
                        &g2,
                        net,
                        dbn,
                        &cur.z,
                        &cur.a,
                        &cur.da,
                        &cur.dw_mean,
                        &cur.dw_var,
                        &mut self.tmp_dz,
                        conv_weights.then_some((gg, gb)),
                    );
                }
                let dg = DwGeom {
                    channels: u.cout,
                    stride,
                    in_hw: u.conv_hw,
                    out_hw: u.out_hw,
                };
                if conv_weights {
                    depthwise_backward(
                        &dg,
                        n,
                        &cur.h,
                        &net.tensors[dk],
                        &self.tmp_dz,
                        Some(&mut self.tmp_dh),
                        &mut grads[dk],
                    );
                } else {
                    depthwise_backward_input(
                        &dg,
                        n,
                        &net.tensors[dk],
                        &self.tmp_dz,
                        &mut self.tmp_dh,
                    );
                }
                &self.tmp_dh
            }
        };
        let g = BnGeom {
            n,
            channels: u.cout,
            plane: conv_plane,
        };
        {
            let (gg, gb) = two_mut(grads, p.bn[0], p.bn[1]);
            bn_relu_backward(
                self.mode,
                &g,
                net,
                p.bn,
                &cur.y,
                &cur.h,
                dh,
                &cur.mean,
                &cur.var,
                &mut cur.dy,
                conv_weights.then_some((gg, gb)),
            );
        }
        let geom = conv_geom(&u);
        let w = &net.tensors[p.conv];
        match (l, conv_weights) {
            (0, false) => {}
            (0, true) => conv2d_backward(
                &geom,
                n,
                &self.input,
                w,
                &cur.dy,
                None,
                &mut grads[p.conv],
                &mut self.scratch,
            ),
            (_, false) => {
                conv2d_backward_input(&geom, n, w, &cur.dy, &mut prev[l - 1].da, &mut self.scratch)
            }
            (_, true) => {
                let pu = self.units[l - 1];
                let pb = &mut prev[l - 1];
                let x: &[f32] = if pu.post == Post::None { &pb.h } else { &pb.a };
                conv2d_backward(
                    &geom,
                    n,
                    x,
                    w,
                    &cur.dy,
                    Some(&mut pb.da),
                    &mut grads[p.conv],
                    &mut self.scratch,
                );
            }
        }
    }
}

/// The conv of a unit as a kernel geometry.
pub fn conv_geom(u: &UnitShape) -> ConvGeom {
    ConvGeom {
        cin: u.cin,
        cout: u.cout,
        kernel: u.kernel,
        stride: u.stride,
        pad: u.pad,
        in_hw: u.in_hw,
        out_hw: u.conv_hw,
    }
}

#[allow(clippy::too_many_arguments)]
fn bn_relu(
    mode: Mode,
    g: &BnGeom,
    net: &Network,
    bn_idx: [usize; 4],
    y: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
    scale: &mut [f32],
    shift: &mut [f32],
    out: &mut [f32],
) {
    let c = g.channels;
    match mode {
        Mode::Train => bn::batch_stats(g, y, mean, var),
        Mode::Eval => {
            mean.copy_from_slice(&net.tensors[bn_idx[2]]);
            var.copy_from_slice(&net.tensors[bn_idx[3]]);
        }
    }
    bn::fold(
        &net.tensors[bn_idx[0]],
        &net.tensors[bn_idx[1]],
        mean,
        var,
        &mut scale[..c],
        &mut shift[..c],
    );
    bn::scale_shift_relu(g, y, &scale[..c], &shift[..c], out);
}

#[allow(clippy::too_many_arguments)]
fn bn_relu_backward(
    mode: Mode,
    g: &BnGeom,
    net: &Network,
    bn_idx: [usize; 4],
    y: &[f32],
    a: &[f32],
    da: &[f32],
    mean: &[f32],
    var: &[f32],
    dy: &mut [f32],
    param_grads: Option<(&mut [f32], &mut [f32])>,
) {
    let gamma = &net.tensors[bn_idx[0]];
    match (mode, param_grads) {
        (Mode::Train, Some((dgamma, dbeta))) => {
            bn::backward_train(g, y, a, da, mean, var, gamma, dy, dgamma, dbeta)
        }
        (Mode::Train, None) => {
            // Batch statistics couple the samples: the input gradient needs the
            // parameter-gradient sums, so compute them into scratch.
            let (mut dg, mut db) = (vec![0.0; g.channels], vec![0.0; g.channels]);
            bn::backward_train(g, y, a, da, mean, var, gamma, dy, &mut dg, &mut db)
        }
        (Mode::Eval, pg) => bn::backward_eval(g, y, a, da, mean, var, gamma, dy, pg),
    }
}

/// Two distinct tensors of a list, both mutable.
pub(crate) fn two_mut(t: &mut [Vec<f32>], i: usize, j: usize) -> (&mut [f32], &mut [f32]) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = t.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = t.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Family;
    use crate::rng::Rng;

    fn loss_of(
        model: &mut Model,
        net: &Network,
        x: &[f32],
        labels: &[u32],
        n: usize,
        mode: Mode,
    ) -> f64 {
        model.forward(net, x, n, mode);
        model.loss(labels).0 as f64
    }

    /// Central differences of the loss against backward, on a few entries of every tensor.
    fn check(arch: Arch, n: usize, mode: Mode) {
        let mut net = Network::init(&arch, 5);
        let mut rng = Rng::new(9);
        // Perturb BN parameters and running statistics so every path is exercised.
        for (spec, t) in arch.param_specs().iter().zip(net.tensors.iter_mut()) {
            if let crate::arch::Role::BatchNorm { .. } = spec.role {
                for v in t.iter_mut() {
                    // A positive shift keeps most ReLUs away from their kink, where
                    // finite differences of a deep network stop being informative.
                    let shift = if spec.name.ends_with("bn.bias") {
                        2.0
                    } else {
                        0.0
                    };
                    *v += 0.2 * rng.uniform() + shift;
                }
            }
        }
        let in_len: usize = arch.input.iter().product();
        let x: Vec<f32> = (0..n * in_len).map(|_| rng.normal()).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % arch.classes) as u32).collect();
        let mut model = Model::new(&arch, n);
        loss_of(&mut model, &net, &x, &labels, n, mode);
        let mut grads = net.zeros_like();
        model.backward(&net, &mut grads);
        let specs = arch.param_specs();
        let mut worst = 0.0f64;
        for (ti, spec) in specs.iter().enumerate() {
            if !spec.learnable {
                continue;
            }
            for k in 0..3 {
                let i = (k * 7919 + ti) % spec.len();
                let eps = 2.5e-4f32;
                let orig = net.tensors[ti][i];
                net.tensors[ti][i] = orig + eps;
                let lp = loss_of(&mut model, &net, &x, &labels, n, mode);
                net.tensors[ti][i] = orig - eps;
                let lm = loss_of(&mut model, &net, &x, &labels, n, mode);
                net.tensors[ti][i] = orig;
                let fd = (lp - lm) / (2.0 * eps as f64);

                let an = grads[ti][i] as f64;
                // f32 rounding of the loss bounds how well a difference can resolve.
                let noise = 2e-6 * (lp.abs() + 1.0) / eps as f64;
                let err = ((fd - an).abs() - noise).max(0.0) / (fd.abs().max(an.abs()) + 1e-12);
                worst = worst.max(err);
                // Max-pool windows whose two largest entries are within the step flip;
                // the per-kernel tests check tightly, this one checks the wiring.
                assert!(
                    err < 0.1,
                    "{} [{i}]: finite difference {fd} vs backward {an}",
                    spec.name
                );
            }
        }
        assert!(worst < 0.05, "worst {worst}");
    }

    #[test]
    fn vgg_eval_backward() {
        let arch = Arch::new(Family::Vgg19, [2, 64, 64], 3, alloc::vec![3; 16]).unwrap();
        check(arch, 2, Mode::Eval);
    }

    #[test]
    fn mobilenet_eval_backward() {
        let arch = Arch::new(Family::MobilenetV1, [2, 17, 17], 3, alloc::vec![3; 14]).unwrap();
        check(arch, 2, Mode::Eval);
    }

    #[test]
    fn vgg_backward_matches_finite_differences() {
        let arch = Arch::new(Family::Vgg19, [2, 64, 64], 3, alloc::vec![3; 16]).unwrap();
        check(arch.clone(), 8, Mode::Train);
        check(arch, 2, Mode::Eval);
    }

    #[test]
    fn mobilenet_backward_matches_finite_differences() {
        let arch = Arch::new(Family::MobilenetV1, [2, 17, 17], 3, alloc::vec![3; 14]).unwrap();
        check(arch.clone(), 8, Mode::Train);
        check(arch, 2, Mode::Eval);
    }
}
