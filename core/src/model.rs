//! The CPU engine: the network walk's operations ([`crate::walk`]) run as
//! they are called, on sprout-core's kernels and preallocated buffers.
//!
//! Per growable layer it keeps what the estimator needs (docs/conventions.md): the
//! layer input `x`, the pre-activation `y`, the unit output `a` that the next
//! layer reads, and `dL/da`.

use crate::arch::{Arch, BnGeom, ConvGeom, DwGeom, Post, UnitShape};
use crate::engine::{Act, Buf, Engine, Mode};
use crate::kernels::batchnorm as bn;
use crate::kernels::conv::{conv2d_backward, conv2d_backward_input, conv2d_forward};
use crate::kernels::depthwise::{depthwise_backward, depthwise_backward_input, depthwise_forward};
use crate::kernels::linear::{linear_backward, linear_backward_input, linear_forward};
use crate::kernels::loss::softmax_cross_entropy;
use crate::kernels::pool::{gap_backward, gap_forward, maxpool_backward, maxpool_forward};
use crate::kernels::Scratch;
use crate::network::Network;
use crate::walk::Walk;
use alloc::vec;
use alloc::vec::Vec;
use core::convert::Infallible;
use core::mem;

/// Buffers of one unit, each sized for the model's batch capacity (empty
/// where the unit has no such stage).
#[derive(Clone, Debug, Default)]
struct UnitBuffers {
    y: Vec<f32>,
    h: Vec<f32>,
    z: Vec<f32>,
    a: Vec<f32>,
    da: Vec<f32>,
    dy: Vec<f32>,
    stats: Vec<f32>,
    dw_stats: Vec<f32>,
}

/// Every activation buffer, by [`Buf`] name.
#[derive(Clone, Debug)]
struct Store {
    images: Vec<f32>,
    units: Vec<UnitBuffers>,
    features: Vec<f32>,
    features_grad: Vec<f32>,
    logits: Vec<f32>,
    logits_grad: Vec<f32>,
    scratch_h: Vec<f32>,
    scratch_z: Vec<f32>,
}

impl Store {
    fn slot(&mut self, b: Buf) -> &mut Vec<f32> {
        match b {
            Buf::Images => &mut self.images,
            Buf::Unit(l, a) => {
                let u = &mut self.units[l];
                match a {
                    Act::Y => &mut u.y,
                    Act::H => &mut u.h,
                    Act::Z => &mut u.z,
                    Act::A => &mut u.a,
                    Act::DA => &mut u.da,
                    Act::DY => &mut u.dy,
                    Act::Stats => &mut u.stats,
                    Act::DwStats => &mut u.dw_stats,
                }
            }
            Buf::Features => &mut self.features,
            Buf::FeaturesGrad => &mut self.features_grad,
            Buf::Logits => &mut self.logits,
            Buf::LogitsGrad => &mut self.logits_grad,
            Buf::ScratchH => &mut self.scratch_h,
            Buf::ScratchZ => &mut self.scratch_z,
            Buf::Param(_) | Buf::Grad(_) => unreachable!("tensors are not activations"),
            Buf::Morph(_) => unreachable!("the CPU's morphism phase keeps its own buffers"),
        }
    }

    fn get(&self, b: Buf) -> &[f32] {
        let u = |l: usize| &self.units[l];
        match b {
            Buf::Images => &self.images,
            Buf::Unit(l, a) => match a {
                Act::Y => &u(l).y,
                Act::H => &u(l).h,
                Act::Z => &u(l).z,
                Act::A => &u(l).a,
                Act::DA => &u(l).da,
                Act::DY => &u(l).dy,
                Act::Stats => &u(l).stats,
                Act::DwStats => &u(l).dw_stats,
            },
            Buf::Features => &self.features,
            Buf::FeaturesGrad => &self.features_grad,
            Buf::Logits => &self.logits,
            Buf::LogitsGrad => &self.logits_grad,
            Buf::ScratchH => &self.scratch_h,
            Buf::ScratchZ => &self.scratch_z,
            Buf::Param(_) | Buf::Grad(_) => unreachable!("tensors are not activations"),
            Buf::Morph(_) => unreachable!("the CPU's morphism phase keeps its own buffers"),
        }
    }
}

/// The network's tensors, writable where the running statistics are updated.
enum Params<'a> {
    /// A pass that reads no tensor (the loss).
    None,
    Read(&'a Network),
    Write(&'a mut Network),
}

/// What the CPU engine's operations read and write, by [`Buf`] name.
struct Memory<'a> {
    store: &'a mut Store,
    params: Params<'a>,
    grads: Option<&'a mut [Vec<f32>]>,
}

impl Memory<'_> {
    fn read(&self, b: Buf) -> &[f32] {
        match b {
            Buf::Param(i) => match &self.params {
                Params::Read(net) => &net.tensors[i],
                Params::Write(net) => &net.tensors[i],
                Params::None => unreachable!("the loss reads no tensor"),
            },
            Buf::Grad(i) => &self.grads.as_ref().expect("a gradient pass has gradients")[i],
            _ => self.store.get(b),
        }
    }

    /// Moves buffer `b` out, so that an operation can write it while reading
    /// others; [`Memory::put`] returns it.
    fn take(&mut self, b: Buf) -> Vec<f32> {
        mem::take(self.slot(b))
    }

    fn put(&mut self, b: Buf, v: Vec<f32>) {
        *self.slot(b) = v;
    }

    /// Runs `f` on buffer `out`, moved out meanwhile so that `f` may read
    /// every other buffer.
    fn write(&mut self, out: Buf, f: impl FnOnce(&Memory<'_>, &mut [f32])) {
        let mut v = self.take(out);
        f(self, &mut v);
        self.put(out, v);
    }

    fn slot(&mut self, b: Buf) -> &mut Vec<f32> {
        match b {
            Buf::Param(i) => match &mut self.params {
                Params::Write(net) => &mut net.tensors[i],
                _ => unreachable!("only the running statistics are written"),
            },
            Buf::Grad(i) => &mut self.grads.as_mut().expect("a gradient pass has gradients")[i],
            _ => self.store.slot(b),
        }
    }
}

/// `(mean, var)` a BN normalises with: the batch's from `stats` in train
/// mode, the running statistics in eval mode.
fn statistics<'m>(
    m: &'m Memory<'_>,
    mode: Mode,
    bn_idx: [usize; 4],
    stats: Buf,
    c: usize,
) -> (&'m [f32], &'m [f32]) {
    match mode {
        Mode::Train => {
            let st = m.read(stats);
            (&st[..c], &st[c..2 * c])
        }
        Mode::Eval => (m.read(Buf::Param(bn_idx[2])), m.read(Buf::Param(bn_idx[3]))),
    }
}

/// The CPU engine over a model's buffers for one pass.
struct Cpu<'a> {
    mem: Memory<'a>,
    scratch: &'a mut Scratch,
    /// BN scale and shift folded from the statistics, per channel.
    fold: &'a mut (Vec<f32>, Vec<f32>),
    labels: &'a [u32],
    loss: &'a mut (f32, usize),
}

impl Engine for Cpu<'_> {
    type Error = Infallible;

    fn conv(&mut self, g: &ConvGeom, n: usize, x: Buf, w: Buf, y: Buf) -> Result<(), Infallible> {
        let scratch = &mut *self.scratch;
        self.mem.write(y, |m, out| {
            conv2d_forward(g, n, m.read(x), m.read(w), out, scratch)
        });
        Ok(())
    }

    fn conv_backward(
        &mut self,
        g: &ConvGeom,
        n: usize,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        dw: Option<Buf>,
    ) -> Result<(), Infallible> {
        let mut gx = dx.map(|b| self.mem.take(b));
        match dw {
            None => {
                if let Some(gx) = gx.as_mut() {
                    let m = &self.mem;
                    conv2d_backward_input(g, n, m.read(w), m.read(dy), gx, self.scratch);
                }
            }
            Some(dw) => {
                let mut gw = self.mem.take(dw);
                let m = &self.mem;
                conv2d_backward(
                    g,
                    n,
                    m.read(x),
                    m.read(w),
                    m.read(dy),
                    gx.as_deref_mut(),
                    &mut gw,
                    self.scratch,
                );
                self.mem.put(dw, gw);
            }
        }
        if let (Some(b), Some(v)) = (dx, gx) {
            self.mem.put(b, v);
        }
        Ok(())
    }

    fn batch_stats(&mut self, g: &BnGeom, y: Buf, stats: Buf) -> Result<(), Infallible> {
        self.mem.write(stats, |m, st| {
            let (mean, var) = st.split_at_mut(g.channels);
            bn::batch_stats(g, m.read(y), mean, var);
        });
        Ok(())
    }

    fn bn_relu(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn_idx: [usize; 4],
        y: Buf,
        stats: Buf,
        out: Buf,
    ) -> Result<(), Infallible> {
        let c = g.channels;
        let (scale, shift) = (&mut self.fold.0[..c], &mut self.fold.1[..c]);
        self.mem.write(out, |m, o| {
            let (mean, var) = statistics(m, mode, bn_idx, stats, c);
            bn::fold(
                m.read(Buf::Param(bn_idx[0])),
                m.read(Buf::Param(bn_idx[1])),
                mean,
                var,
                scale,
                shift,
            );
            bn::scale_shift_relu(g, m.read(y), scale, shift, o);
        });
        Ok(())
    }

    fn bn_relu_backward(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn_idx: [usize; 4],
        y: Buf,
        out: Buf,
        dout: Buf,
        stats: Buf,
        dy: Buf,
        param_grads: bool,
    ) -> Result<(), Infallible> {
        let c = g.channels;
        let mut d = self.mem.take(dy);
        let mut pg = param_grads.then(|| {
            (
                self.mem.take(Buf::Grad(bn_idx[0])),
                self.mem.take(Buf::Grad(bn_idx[1])),
            )
        });
        let m = &self.mem;
        let (mean, var) = statistics(m, mode, bn_idx, stats, c);
        let (y, a, da) = (m.read(y), m.read(out), m.read(dout));
        let gamma = m.read(Buf::Param(bn_idx[0]));
        match (mode, pg.as_mut()) {
            (Mode::Train, Some((dg, db))) => {
                bn::backward_train(g, y, a, da, mean, var, gamma, &mut d, dg, db)
            }
            (Mode::Train, None) => {
                // Batch statistics couple the samples: the input gradient needs the
                // parameter-gradient sums, so compute them into scratch.
                let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
                bn::backward_train(g, y, a, da, mean, var, gamma, &mut d, &mut dg, &mut db)
            }
            (Mode::Eval, pg) => bn::backward_eval(
                g,
                y,
                a,
                da,
                mean,
                var,
                gamma,
                &mut d,
                pg.map(|(dg, db)| (&mut dg[..], &mut db[..])),
            ),
        }
        if let Some((dg, db)) = pg {
            self.mem.put(Buf::Grad(bn_idx[0]), dg);
            self.mem.put(Buf::Grad(bn_idx[1]), db);
        }
        self.mem.put(dy, d);
        Ok(())
    }

    fn update_running(
        &mut self,
        g: &BnGeom,
        bn_idx: [usize; 4],
        stats: Buf,
    ) -> Result<(), Infallible> {
        let c = g.channels;
        let (mut rm, mut rv) = (
            self.mem.take(Buf::Param(bn_idx[2])),
            self.mem.take(Buf::Param(bn_idx[3])),
        );
        let st = self.mem.read(stats);
        bn::update_running(g, &st[..c], &st[c..2 * c], &mut rm, &mut rv);
        self.mem.put(Buf::Param(bn_idx[2]), rm);
        self.mem.put(Buf::Param(bn_idx[3]), rv);
        Ok(())
    }

    fn max_pool(
        &mut self,
        planes: usize,
        hw: (usize, usize),
        x: Buf,
        y: Buf,
    ) -> Result<(), Infallible> {
        self.mem
            .write(y, |m, o| maxpool_forward(planes, hw, m.read(x), o));
        Ok(())
    }

    fn max_pool_backward(
        &mut self,
        planes: usize,
        hw: (usize, usize),
        x: Buf,
        dy: Buf,
        dx: Buf,
    ) -> Result<(), Infallible> {
        self.mem.write(dx, |m, o| {
            maxpool_backward(planes, hw, m.read(x), m.read(dy), o)
        });
        Ok(())
    }

    fn depthwise(
        &mut self,
        g: &DwGeom,
        n: usize,
        x: Buf,
        k: Buf,
        y: Buf,
    ) -> Result<(), Infallible> {
        self.mem
            .write(y, |m, o| depthwise_forward(g, n, m.read(x), m.read(k), o));
        Ok(())
    }

    fn depthwise_backward(
        &mut self,
        g: &DwGeom,
        n: usize,
        x: Buf,
        k: Buf,
        dy: Buf,
        dx: Buf,
        dk: Option<Buf>,
    ) -> Result<(), Infallible> {
        let mut gx = self.mem.take(dx);
        match dk {
            Some(dk) => {
                let mut gk = self.mem.take(dk);
                let m = &self.mem;
                depthwise_backward(
                    g,
                    n,
                    m.read(x),
                    m.read(k),
                    m.read(dy),
                    Some(&mut gx),
                    &mut gk,
                );
                self.mem.put(dk, gk);
            }
            None => depthwise_backward_input(g, n, self.mem.read(k), self.mem.read(dy), &mut gx),
        }
        self.mem.put(dx, gx);
        Ok(())
    }

    fn average_pool(
        &mut self,
        planes: usize,
        plane: usize,
        x: Buf,
        y: Buf,
    ) -> Result<(), Infallible> {
        self.mem
            .write(y, |m, o| gap_forward(planes, plane, m.read(x), o));
        Ok(())
    }

    fn average_pool_backward(
        &mut self,
        planes: usize,
        plane: usize,
        dy: Buf,
        dx: Buf,
    ) -> Result<(), Infallible> {
        self.mem
            .write(dx, |m, o| gap_backward(planes, plane, m.read(dy), o));
        Ok(())
    }

    fn linear(
        &mut self,
        n: usize,
        features: usize,
        classes: usize,
        x: Buf,
        w: Buf,
        b: Buf,
        y: Buf,
    ) -> Result<(), Infallible> {
        self.mem.write(y, |m, o| {
            linear_forward(n, features, classes, m.read(x), m.read(w), m.read(b), o)
        });
        Ok(())
    }

    fn linear_backward(
        &mut self,
        n: usize,
        features: usize,
        classes: usize,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        grads: Option<(Buf, Buf)>,
    ) -> Result<(), Infallible> {
        let mut gx = dx.map(|b| self.mem.take(b));
        match grads {
            Some((gw, gb)) => {
                let (mut dw, mut db) = (self.mem.take(gw), self.mem.take(gb));
                let m = &self.mem;
                linear_backward(
                    n,
                    features,
                    classes,
                    m.read(x),
                    m.read(w),
                    m.read(dy),
                    gx.as_deref_mut(),
                    &mut dw,
                    &mut db,
                );
                self.mem.put(gw, dw);
                self.mem.put(gb, db);
            }
            None => {
                if let Some(gx) = gx.as_mut() {
                    let m = &self.mem;
                    linear_backward_input(n, features, classes, m.read(w), m.read(dy), gx);
                }
            }
        }
        if let (Some(b), Some(v)) = (dx, gx) {
            self.mem.put(b, v);
        }
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        n: usize,
        classes: usize,
        logits: Buf,
        dlogits: Buf,
    ) -> Result<(), Infallible> {
        let (labels, loss) = (self.labels, &mut *self.loss);
        self.mem.write(dlogits, |m, d| {
            *loss = softmax_cross_entropy(n, classes, m.read(logits), labels, d)
        });
        Ok(())
    }
}

/// The result of a pass that cannot fail.
fn done(r: Result<(), Infallible>) {
    match r {
        Ok(()) => {}
        Err(never) => match never {},
    }
}

/// Forward/backward engine for one architecture and a maximum batch size.
#[derive(Clone, Debug)]
pub struct Model {
    arch: Arch,
    walk: Walk,
    capacity: usize,
    n: usize,
    mode: Mode,
    store: Store,
    fold: (Vec<f32>, Vec<f32>),
    scratch: Scratch,
    /// `(mean loss, correct)` of the last [`Model::loss`].
    loss: (f32, usize),
}

impl Model {
    /// Allocates every buffer for batches of up to `capacity` samples.
    pub fn new(arch: &Arch, capacity: usize) -> Model {
        let walk = Walk::new(arch);
        let head = walk.head;
        let cap = capacity.max(1);
        let sized = |on: bool, len: usize| if on { vec![0.0; cap * len] } else { Vec::new() };
        let units: Vec<UnitBuffers> = walk
            .units
            .iter()
            .map(|u| {
                let dw = matches!(u.post, Post::Depthwise { .. });
                UnitBuffers {
                    y: sized(true, u.conv_len()),
                    h: sized(true, u.conv_len()),
                    z: sized(dw, u.out_len()),
                    a: sized(u.post != Post::None, u.out_len()),
                    da: sized(true, u.out_len()),
                    dy: sized(true, u.conv_len()),
                    stats: vec![0.0; 2 * u.cout],
                    dw_stats: vec![0.0; if dw { 2 * u.cout } else { 0 }],
                }
            })
            .collect();
        let max = |f: fn(&UnitShape) -> usize| walk.units.iter().map(f).max().unwrap_or(0);
        let (max_conv, max_out, max_c) =
            (max(|u| u.conv_len()), max(|u| u.out_len()), max(|u| u.cout));
        let store = Store {
            images: vec![0.0; cap * arch.input.iter().product::<usize>()],
            units,
            features: vec![0.0; cap * head.features()],
            features_grad: vec![0.0; cap * head.features()],
            logits: vec![0.0; cap * head.classes],
            logits_grad: vec![0.0; cap * head.classes],
            scratch_h: vec![0.0; cap * max_conv],
            scratch_z: vec![0.0; cap * max_out],
        };
        Model {
            arch: arch.clone(),
            walk,
            capacity: cap,
            n: 0,
            mode: Mode::Eval,
            store,
            fold: (vec![0.0; max_c], vec![0.0; max_c]),
            scratch: Scratch::new(),
            loss: (0.0, 0),
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
        &self.walk.units
    }
    /// The walk the model runs.
    pub fn walk(&self) -> &Walk {
        &self.walk
    }
    /// The kernels' scratch buffers, for reuse by callers.
    pub fn scratch(&mut self) -> &mut Scratch {
        &mut self.scratch
    }

    fn view(&self, b: Buf, len: usize) -> &[f32] {
        &self.store.get(b)[..self.n * len]
    }

    /// Input of unit `l` (the images for `l == 0`), for the last batch.
    pub fn unit_input(&self, l: usize) -> &[f32] {
        self.view(self.walk.input(l), self.walk.units[l].in_len())
    }
    /// Pre-activation `y` of unit `l`.
    pub fn pre_activation(&self, l: usize) -> &[f32] {
        self.view(Buf::Unit(l, Act::Y), self.walk.units[l].conv_len())
    }
    /// `relu(bn(y))` of unit `l`, before any pooling or depthwise block.
    pub fn bn_relu_output(&self, l: usize) -> &[f32] {
        self.view(Buf::Unit(l, Act::H), self.walk.units[l].conv_len())
    }
    /// Output `a` of unit `l`: what the next layer reads.
    pub fn unit_output(&self, l: usize) -> &[f32] {
        self.view(self.walk.output(l), self.walk.units[l].out_len())
    }
    /// `dL/da` of unit `l` from the last backward pass.
    pub fn output_grad(&self, l: usize) -> &[f32] {
        self.view(Buf::Unit(l, Act::DA), self.walk.units[l].out_len())
    }
    /// `dL/dy` of unit `l`'s pre-activation from the last backward pass.
    pub fn pre_activation_grad(&self, l: usize) -> &[f32] {
        self.view(Buf::Unit(l, Act::DY), self.walk.units[l].conv_len())
    }
    /// `dL/dlogits` of the last [`Model::loss`].
    pub fn logits_grad(&self) -> &[f32] {
        self.view(Buf::LogitsGrad, self.walk.head.classes)
    }
    /// Logits of the last forward pass.
    pub fn logits(&self) -> &[f32] {
        self.view(Buf::Logits, self.walk.head.classes)
    }

    /// Runs `pass` of the walk on this model's buffers.
    fn run(
        &mut self,
        params: Params<'_>,
        grads: Option<&mut [Vec<f32>]>,
        labels: &[u32],
        pass: impl FnOnce(&Walk, &mut Cpu<'_>) -> Result<(), Infallible>,
    ) {
        let mut cpu = Cpu {
            mem: Memory {
                store: &mut self.store,
                params,
                grads,
            },
            scratch: &mut self.scratch,
            fold: &mut self.fold,
            labels,
            loss: &mut self.loss,
        };
        done(pass(&self.walk, &mut cpu));
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
        let len = n * self.walk.units[0].in_len();
        self.store.images[..len].copy_from_slice(&images[..len]);
        self.run(Params::Read(net), None, &[], |w, e| w.forward(e, n, mode));
    }

    /// Mean cross-entropy of the last forward pass against `labels`; keeps
    /// `dL/dlogits` for [`Model::backward`]. Returns `(loss, correct)`.
    pub fn loss(&mut self, labels: &[u32]) -> (f32, usize) {
        let n = self.n;
        self.run(Params::None, None, labels, |w, e| w.loss(e, n));
        self.loss
    }

    /// Folds the batch statistics of the last train-mode forward into the
    /// network's running statistics.
    pub fn update_running_stats(&mut self, net: &mut Network) {
        assert_eq!(self.mode, Mode::Train);
        let n = self.n;
        self.run(Params::Write(net), None, &[], |w, e| w.update_running(e, n));
    }

    /// Backward pass after [`Model::loss`]: fills `grads` (shaped like the
    /// network's tensors; running-statistics entries are left untouched) and
    /// every unit's `dL/da`.
    pub fn backward(&mut self, net: &Network, grads: &mut [Vec<f32>]) {
        let (n, mode) = (self.n, self.mode);
        self.run(Params::Read(net), Some(grads), &[], |w, e| {
            w.backward(e, n, mode, true)
        });
    }

    /// Every unit's `dL/da` and `dL/dy` without any parameter gradient: what
    /// the estimator needs, and skipping `dL/dw` saves a third of the pass.
    pub fn backward_activations(&mut self, net: &Network) {
        let (n, mode) = (self.n, self.mode);
        self.run(Params::Read(net), None, &[], |w, e| {
            w.backward(e, n, mode, false)
        });
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
