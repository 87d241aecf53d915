//! A network on the device: its parameter, gradient and momentum buffers and
//! every activation buffer for the batch capacity, named by sprout-core's
//! [`Buf`]; and [`Recorder`], the GPU engine, which records sprout-core's
//! network walk (`sprout_core::walk`) as dispatches on them.

use crate::context::Gpu;
use crate::kernel::{Op, View};
use crate::kernels::batchnorm::stride;
use crate::kernels::linear::LinearGeom;
use crate::kernels::Kernels;
use crate::layout::Layout;
use crate::morph::MorphBuffers;
use sprout_core::arch::{Arch, BnGeom, ConvGeom, DwGeom, Post};
use sprout_core::engine::{Act, Buf, Engine, Mode};
use sprout_core::error::{Error, Result};
use sprout_core::walk::Walk;

/// Activation buffers of one unit, sized for the batch capacity.
#[derive(Debug)]
pub struct UnitBuffers {
    /// Conv output (pre-activation).
    pub y: View,
    /// `relu(bn(y))`.
    pub h: View,
    /// Depthwise conv output (MobileNet units).
    pub z: Option<View>,
    /// Unit output after the max-pool or depthwise block.
    pub a: Option<View>,
    /// `dL/da`.
    pub da: View,
    /// `dL/dy`.
    pub dy: View,
    /// Batch `[mean | var]` of the BN, and of the depthwise BN.
    pub stats: View,
    pub dw_stats: View,
}

/// A network's buffers on the device.
#[derive(Debug)]
pub struct Graph {
    pub arch: Arch,
    /// The shapes and parameter indices the walk follows.
    pub walk: Walk,
    pub layout: Layout,
    pub capacity: usize,
    pub params: View,
    pub grads: View,
    pub momentum: View,
    /// 1 where a parameter is learnable (not a running statistic).
    pub mask: View,
    pub input: View,
    /// u32 labels.
    pub labels: View,
    pub bufs: Vec<UnitBuffers>,
    /// Pooled features (MobileNet) and their gradient.
    pub features: View,
    pub dfeatures: View,
    pub logits: View,
    pub dlogits: View,
    /// Per-row `(loss, correct)`.
    pub rows: View,
    /// `(mean loss, correct)` of the last batch: what comes back to the host.
    pub totals: View,
    /// Always `1.0`: the loss guard of updates that must not depend on the loss.
    pub one: View,
    tmp_dh: View,
    tmp_dz: View,
}

impl Graph {
    /// Allocates every buffer of `arch` for batches of up to `capacity`.
    pub fn new(gpu: &Gpu, arch: &Arch, capacity: usize) -> Result<Graph> {
        let walk = Walk::new(arch);
        let specs = arch.param_specs();
        let layout = Layout::new(specs.iter().map(|s| s.len()));
        let cap = capacity.max(1);
        let mut mask = vec![0.0f32; layout.total];
        for (s, &o) in specs.iter().zip(&layout.offsets) {
            if s.learnable {
                mask[o..o + s.len()].fill(1.0);
            }
        }
        // The BN kernels bind a BN's four tensors as one view.
        for p in &walk.index.units {
            let mut blocks = vec![p.bn];
            if let Some((_, dbn)) = p.depthwise {
                blocks.push(dbn);
            }
            for b in blocks {
                let st = stride(layout.lens[b[0]]);
                if (0..4).any(|j| layout.offsets[b[j]] != layout.offsets[b[0]] + j * st) {
                    return Err(Error::backend(
                        "BN tensors are not consecutive in the parameter layout",
                    ));
                }
            }
        }
        let mut bufs = Vec::with_capacity(walk.units.len());
        let (mut max_conv, mut max_out) = (1, 1);
        for u in &walk.units {
            let (conv, out) = (cap * u.conv_len(), cap * u.out_len());
            max_conv = max_conv.max(conv);
            max_out = max_out.max(out);
            let dw = matches!(u.post, Post::Depthwise { .. });
            bufs.push(UnitBuffers {
                y: gpu.buffer("pre-activation", conv)?,
                h: gpu.buffer("bn-relu output", conv)?,
                z: if dw {
                    Some(gpu.buffer("depthwise output", out)?)
                } else {
                    None
                },
                a: if u.post != Post::None {
                    Some(gpu.buffer("unit output", out)?)
                } else {
                    None
                },
                da: gpu.buffer("output gradient", out)?,
                dy: gpu.buffer("pre-activation gradient", conv)?,
                stats: gpu.buffer("bn statistics", 2 * stride(u.cout))?,
                dw_stats: gpu.buffer("depthwise bn statistics", 2 * stride(u.cout))?,
            });
        }
        let in_len: usize = arch.input.iter().product();
        let head = walk.head;
        Ok(Graph {
            params: gpu.buffer("parameters", layout.total)?,
            grads: gpu.buffer("gradients", layout.total)?,
            momentum: gpu.buffer("momentum", layout.total)?,
            mask: gpu.upload("learnable mask", &mask)?,
            input: gpu.buffer("images", cap * in_len)?,
            labels: gpu.buffer("labels", cap)?,
            features: gpu.buffer("features", cap * head.features())?,
            dfeatures: gpu.buffer("feature gradient", cap * head.features())?,
            logits: gpu.buffer("logits", cap * head.classes)?,
            dlogits: gpu.buffer("logit gradient", cap * head.classes)?,
            rows: gpu.buffer("row losses", 2 * cap)?,
            totals: gpu.buffer("batch totals", 4)?,
            one: gpu.upload("one", &[1.0])?,
            tmp_dh: gpu.buffer("bn-relu output gradient", max_conv)?,
            tmp_dz: gpu.buffer("depthwise output gradient", max_out)?,
            arch: arch.clone(),
            walk,
            layout,
            capacity: cap,
            bufs,
        })
    }

    /// Parameter tensor `i`.
    pub fn tensor(&self, i: usize) -> Result<View> {
        self.params.sub(self.layout.offsets[i], self.layout.lens[i])
    }

    /// Gradient of tensor `i`.
    pub fn grad(&self, i: usize) -> Result<View> {
        self.grads.sub(self.layout.offsets[i], self.layout.lens[i])
    }

    /// The four tensors of a BN (gamma, beta, running mean, running variance) as one view.
    pub fn bn_block(&self, bn: [usize; 4]) -> Result<View> {
        let c = self.layout.lens[bn[0]];
        self.params
            .sub(self.layout.offsets[bn[0]], 3 * stride(c) + c)
    }

    /// `[dgamma | dbeta]` of a BN as one view.
    pub fn bn_grads(&self, bn: [usize; 4]) -> Result<View> {
        let c = self.layout.lens[bn[0]];
        self.grads.sub(self.layout.offsets[bn[0]], stride(c) + c)
    }

    /// The GPU engine recording onto `ops`, the running-statistics update guarded by `guard`.
    pub fn recorder<'a>(
        &'a self,
        gpu: &'a Gpu,
        k: &'a Kernels,
        guard: &'a View,
        ops: &'a mut Vec<Op>,
    ) -> Recorder<'a> {
        Recorder {
            gpu,
            k,
            graph: self,
            ops,
            guard,
            morph: None,
            hyper: None,
        }
    }

    /// The buffer `b` names.
    pub fn view(&self, b: Buf) -> Result<View> {
        let missing = || Error::backend(format!("{b:?} has no buffer in this network"));
        Ok(match b {
            Buf::Images => self.input.clone(),
            Buf::Param(i) => self.tensor(i)?,
            Buf::Grad(i) => self.grad(i)?,
            Buf::Unit(l, a) => {
                let u = self.bufs.get(l).ok_or_else(missing)?;
                match a {
                    Act::Y => u.y.clone(),
                    Act::H => u.h.clone(),
                    Act::Z => u.z.clone().ok_or_else(missing)?,
                    Act::A => u.a.clone().ok_or_else(missing)?,
                    Act::DA => u.da.clone(),
                    Act::DY => u.dy.clone(),
                    Act::Stats => u.stats.clone(),
                    Act::DwStats => u.dw_stats.clone(),
                }
            }
            Buf::Features => self.features.clone(),
            Buf::FeaturesGrad => self.dfeatures.clone(),
            Buf::Logits => self.logits.clone(),
            Buf::LogitsGrad => self.dlogits.clone(),
            Buf::ScratchH => self.tmp_dh.clone(),
            Buf::ScratchZ => self.tmp_dz.clone(),
            Buf::Morph(_) => return Err(missing()),
        })
    }
}

/// The GPU engine: records each operation of the walk as dispatches on a
/// graph's buffers.
pub struct Recorder<'a> {
    pub gpu: &'a Gpu,
    pub k: &'a Kernels,
    pub graph: &'a Graph,
    pub ops: &'a mut Vec<Op>,
    /// The running-statistics update is skipped unless `guard[0]` is a finite
    /// loss: the batch totals in a training step, [`Graph::one`] otherwise.
    pub guard: &'a View,
    /// A morphism phase's buffers, for its steps.
    pub morph: Option<&'a MorphBuffers>,
    /// The morphism step's settings (`MorphHyper`), for the steps that read them.
    pub hyper: Option<&'a wgpu::Buffer>,
}

impl Recorder<'_> {
    /// The buffer `b` names: the graph's, or the morphism phase's.
    pub fn view(&self, b: Buf) -> Result<View> {
        match b {
            Buf::Morph(m) => self
                .morph
                .ok_or_else(|| Error::backend("a morphism buffer outside a morphism phase"))?
                .view(m),
            _ => self.graph.view(b),
        }
    }
}

impl std::fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recorder({} ops)", self.ops.len())
    }
}

fn linear_geom(n: usize, features: usize, classes: usize) -> LinearGeom {
    LinearGeom {
        n,
        features,
        classes,
    }
}

impl Engine for Recorder<'_> {
    type Error = Error;

    fn conv(&mut self, g: &ConvGeom, n: usize, x: Buf, w: Buf, y: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .conv
            .forward(self.gpu, g, n, &v(x)?, &v(w)?, &v(y)?)?;
        self.ops.push(op);
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
    ) -> Result<()> {
        let (gpu, k) = (self.gpu, self.k);
        let dyv = self.view(dy)?;
        if let Some(dw) = dw {
            let op = k
                .conv
                .backward_weight(gpu, g, n, &self.view(x)?, &dyv, &self.view(dw)?)?;
            self.ops.push(op);
        }
        if let Some(dx) = dx {
            let op = k
                .conv
                .backward_input(gpu, g, n, &dyv, &self.view(w)?, &self.view(dx)?)?;
            self.ops.push(op);
        }
        Ok(())
    }

    fn batch_stats(&mut self, g: &BnGeom, y: Buf, stats: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self.k.bn.stats(self.gpu, g, &v(y)?, &v(stats)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn bn_relu(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn: [usize; 4],
        y: Buf,
        stats: Buf,
        out: Buf,
    ) -> Result<()> {
        let gr = self.graph;
        let op = self.k.bn.forward(
            self.gpu,
            g,
            &self.view(y)?,
            &gr.bn_block(bn)?,
            &self.view(stats)?,
            mode,
            &self.view(out)?,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn bn_relu_backward(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn: [usize; 4],
        y: Buf,
        out: Buf,
        dout: Buf,
        stats: Buf,
        dy: Buf,
        param_grads: bool,
    ) -> Result<()> {
        let (gpu, k, gr) = (self.gpu, self.k, self.graph);
        let (y, a, da, st) = (
            self.view(y)?,
            self.view(out)?,
            self.view(dout)?,
            self.view(stats)?,
        );
        let blk = gr.bn_block(bn)?;
        // Batch statistics couple the samples: the input gradient needs the
        // parameter-gradient sums even when the parameters' are not wanted.
        let sums = if param_grads || mode == Mode::Train {
            let sums = gr.bn_grads(bn)?;
            self.ops
                .push(k.bn.backward_params(gpu, g, &y, &a, &da, &st, &blk, mode, &sums)?);
            sums
        } else {
            st.clone()
        };
        let op =
            k.bn.backward(gpu, g, &y, &a, &da, &st, &blk, &sums, mode, &self.view(dy)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn update_running(&mut self, g: &BnGeom, bn: [usize; 4], stats: Buf) -> Result<()> {
        let gr = self.graph;
        let op = self.k.bn.update_running(
            self.gpu,
            g,
            &self.view(stats)?,
            &gr.bn_block(bn)?,
            self.guard,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn max_pool(&mut self, planes: usize, hw: (usize, usize), x: Buf, y: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .pool
            .max_forward(self.gpu, planes, hw, &v(x)?, &v(y)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn max_pool_backward(
        &mut self,
        planes: usize,
        hw: (usize, usize),
        x: Buf,
        dy: Buf,
        dx: Buf,
    ) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .pool
            .max_backward(self.gpu, planes, hw, &v(x)?, &v(dy)?, &v(dx)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn depthwise(&mut self, g: &DwGeom, n: usize, x: Buf, k: Buf, y: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .depthwise
            .forward(self.gpu, g, n, &v(x)?, &v(k)?, &v(y)?)?;
        self.ops.push(op);
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
    ) -> Result<()> {
        let (gpu, kern) = (self.gpu, self.k);
        let dyv = self.view(dy)?;
        if let Some(dk) = dk {
            let op =
                kern.depthwise
                    .backward_weight(gpu, g, n, &self.view(x)?, &dyv, &self.view(dk)?)?;
            self.ops.push(op);
        }
        let op = kern
            .depthwise
            .backward_input(gpu, g, n, &dyv, &self.view(k)?, &self.view(dx)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn average_pool(&mut self, planes: usize, plane: usize, x: Buf, y: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .pool
            .avg_forward(self.gpu, planes, plane, &v(x)?, &v(y)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn average_pool_backward(
        &mut self,
        planes: usize,
        plane: usize,
        dy: Buf,
        dx: Buf,
    ) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .pool
            .avg_backward(self.gpu, planes, plane, &v(dy)?, &v(dx)?)?;
        self.ops.push(op);
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
    ) -> Result<()> {
        let v = |b| self.view(b);
        let lg = linear_geom(n, features, classes);
        let op = self
            .k
            .linear
            .forward(self.gpu, &lg, &v(x)?, &v(w)?, &v(b)?, &v(y)?)?;
        self.ops.push(op);
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
    ) -> Result<()> {
        let (gpu, k) = (self.gpu, self.k);
        let lg = linear_geom(n, features, classes);
        let dyv = self.view(dy)?;
        if let Some((gw, gb)) = grads {
            let op = k.linear.backward_weight(
                gpu,
                &lg,
                &self.view(x)?,
                &dyv,
                &self.view(gw)?,
                &self.view(gb)?,
            )?;
            self.ops.push(op);
        }
        if let Some(dx) = dx {
            let op = k
                .linear
                .backward_input(gpu, &lg, &dyv, &self.view(w)?, &self.view(dx)?)?;
            self.ops.push(op);
        }
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        n: usize,
        classes: usize,
        logits: Buf,
        dlogits: Buf,
    ) -> Result<()> {
        let (gpu, k, gr) = (self.gpu, self.k, self.graph);
        let op = k.loss.softmax_xent(
            gpu,
            n,
            classes,
            &self.view(logits)?,
            &gr.labels,
            &self.view(dlogits)?,
            &gr.rows,
        )?;
        self.ops.push(op);
        self.ops.push(k.loss.reduce(gpu, n, &gr.rows, &gr.totals)?);
        Ok(())
    }
}
