//! The network walk: forward, loss, backward and the running-statistics
//! update of a whole network as [`Engine`] operations, written once for
//! every engine.
//!
//! Per unit: `y = conv(x)`, `h = relu(bn(y))`, then the unit's post (nothing,
//! a 2x2 max-pool, or MobileNet's depthwise conv with its own BN + ReLU) to
//! the unit output `a`; the head pools (or flattens) and applies the linear
//! layer (docs/conventions.md, "The estimator").

use crate::arch::{Arch, HeadShape, Pool, Post, UnitShape};
use crate::engine::{Act, Buf, Engine, Mode};
use crate::network::{ParamIndex, UnitParams};
use alloc::vec::Vec;

/// The shapes and parameter indices the walk follows, for one architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct Walk {
    /// Per-unit shapes.
    pub units: Vec<UnitShape>,
    /// The head.
    pub head: HeadShape,
    /// Where each unit's tensors lie in the network.
    pub index: ParamIndex,
}

impl Walk {
    /// The walk of `arch`.
    pub fn new(arch: &Arch) -> Walk {
        Walk {
            units: arch.units(),
            head: arch.head(),
            index: ParamIndex::new(arch),
        }
    }

    /// The buffer unit `l`'s output lies in: what the next layer reads.
    pub fn output(&self, l: usize) -> Buf {
        match self.units[l].post {
            Post::None => Buf::Unit(l, Act::H),
            _ => Buf::Unit(l, Act::A),
        }
    }

    /// The buffer unit `l` reads: the images for the first unit.
    pub fn input(&self, l: usize) -> Buf {
        match l {
            0 => Buf::Images,
            _ => self.output(l - 1),
        }
    }

    /// What the linear layer reads.
    pub fn head_input(&self) -> Buf {
        match self.head.pool {
            Pool::Flatten => self.output(self.units.len() - 1),
            Pool::GlobalAverage => Buf::Features,
        }
    }

    fn depthwise(p: &UnitParams) -> (usize, [usize; 4]) {
        p.depthwise
            .expect("a depthwise unit has depthwise parameters (ParamIndex)")
    }

    /// The forward pass on `n` images into the logits; in train mode every
    /// BN first takes its batch statistics.
    pub fn forward<E: Engine + ?Sized>(
        &self,
        e: &mut E,
        n: usize,
        mode: Mode,
    ) -> Result<(), E::Error> {
        for (l, u) in self.units.iter().enumerate() {
            let p = self.index.units[l];
            let at = |a: Act| Buf::Unit(l, a);
            e.conv(
                &u.conv_geom(),
                n,
                self.input(l),
                Buf::Param(p.conv),
                at(Act::Y),
            )?;
            let g = u.bn_geom(n, false);
            if mode == Mode::Train {
                e.batch_stats(&g, at(Act::Y), at(Act::Stats))?;
            }
            e.bn_relu(&g, mode, p.bn, at(Act::Y), at(Act::Stats), at(Act::H))?;
            match u.post {
                Post::None => {}
                Post::MaxPool => e.max_pool(n * u.cout, u.conv_hw, at(Act::H), at(Act::A))?,
                Post::Depthwise { stride } => {
                    let (dk, dbn) = Self::depthwise(&p);
                    e.depthwise(
                        &u.dw_geom(stride),
                        n,
                        at(Act::H),
                        Buf::Param(dk),
                        at(Act::Z),
                    )?;
                    let g2 = u.bn_geom(n, true);
                    if mode == Mode::Train {
                        e.batch_stats(&g2, at(Act::Z), at(Act::DwStats))?;
                    }
                    e.bn_relu(&g2, mode, dbn, at(Act::Z), at(Act::DwStats), at(Act::A))?;
                }
            }
        }
        let last = self.units.len() - 1;
        let lu = &self.units[last];
        if self.head.pool == Pool::GlobalAverage {
            let plane = lu.out_hw.0 * lu.out_hw.1;
            e.average_pool(n * lu.cout, plane, self.output(last), Buf::Features)?;
        }
        e.linear(
            n,
            self.head.features(),
            self.head.classes,
            self.head_input(),
            Buf::Param(self.index.head_weight),
            Buf::Param(self.index.head_bias),
            Buf::Logits,
        )
    }

    /// Softmax cross-entropy of the logits against the engine's labels.
    pub fn loss<E: Engine + ?Sized>(&self, e: &mut E, n: usize) -> Result<(), E::Error> {
        e.softmax_cross_entropy(n, self.head.classes, Buf::Logits, Buf::LogitsGrad)
    }

    /// The backward pass after [`Walk::loss`]: every unit's `dL/da` and
    /// `dL/dy`, and with `weights` every parameter gradient (without, the
    /// gradients are left as they were).
    pub fn backward<E: Engine + ?Sized>(
        &self,
        e: &mut E,
        n: usize,
        mode: Mode,
        weights: bool,
    ) -> Result<(), E::Error> {
        let last = self.units.len() - 1;
        let lu = &self.units[last];
        let da = Buf::Unit(last, Act::DA);
        let (h, idx) = (&self.head, &self.index);
        let dx = match h.pool {
            Pool::Flatten => da,
            Pool::GlobalAverage => Buf::FeaturesGrad,
        };
        e.linear_backward(
            n,
            h.features(),
            h.classes,
            self.head_input(),
            Buf::Param(idx.head_weight),
            Buf::LogitsGrad,
            Some(dx),
            weights.then_some((Buf::Grad(idx.head_weight), Buf::Grad(idx.head_bias))),
        )?;
        if h.pool == Pool::GlobalAverage {
            let plane = lu.out_hw.0 * lu.out_hw.1;
            e.average_pool_backward(n * lu.cout, plane, Buf::FeaturesGrad, da)?;
        }
        for l in (0..self.units.len()).rev() {
            self.backward_unit(e, n, l, mode, weights)?;
        }
        Ok(())
    }

    fn backward_unit<E: Engine + ?Sized>(
        &self,
        e: &mut E,
        n: usize,
        l: usize,
        mode: Mode,
        weights: bool,
    ) -> Result<(), E::Error> {
        let u = &self.units[l];
        let p = self.index.units[l];
        let at = |a: Act| Buf::Unit(l, a);
        // dL/dh, the gradient at the BN + ReLU output.
        let dh = match u.post {
            Post::None => at(Act::DA),
            Post::MaxPool => {
                e.max_pool_backward(
                    n * u.cout,
                    u.conv_hw,
                    at(Act::H),
                    at(Act::DA),
                    Buf::ScratchH,
                )?;
                Buf::ScratchH
            }
            Post::Depthwise { stride } => {
                let (dk, dbn) = Self::depthwise(&p);
                e.bn_relu_backward(
                    &u.bn_geom(n, true),
                    mode,
                    dbn,
                    at(Act::Z),
                    at(Act::A),
                    at(Act::DA),
                    at(Act::DwStats),
                    Buf::ScratchZ,
                    weights,
                )?;
                e.depthwise_backward(
                    &u.dw_geom(stride),
                    n,
                    at(Act::H),
                    Buf::Param(dk),
                    Buf::ScratchZ,
                    Buf::ScratchH,
                    weights.then_some(Buf::Grad(dk)),
                )?;
                Buf::ScratchH
            }
        };
        e.bn_relu_backward(
            &u.bn_geom(n, false),
            mode,
            p.bn,
            at(Act::Y),
            at(Act::H),
            dh,
            at(Act::Stats),
            at(Act::DY),
            weights,
        )?;
        e.conv_backward(
            &u.conv_geom(),
            n,
            self.input(l),
            Buf::Param(p.conv),
            at(Act::DY),
            (l > 0).then(|| Buf::Unit(l - 1, Act::DA)),
            weights.then_some(Buf::Grad(p.conv)),
        )
    }

    /// Folds the last train-mode forward's batch statistics into the running statistics.
    pub fn update_running<E: Engine + ?Sized>(&self, e: &mut E, n: usize) -> Result<(), E::Error> {
        for (l, u) in self.units.iter().enumerate() {
            let p = self.index.units[l];
            e.update_running(&u.bn_geom(n, false), p.bn, Buf::Unit(l, Act::Stats))?;
            if let Some((_, dbn)) = p.depthwise {
                e.update_running(&u.bn_geom(n, true), dbn, Buf::Unit(l, Act::DwStats))?;
            }
        }
        Ok(())
    }
}
