//! A network on the device: its parameter, gradient and momentum buffers,
//! every activation buffer for the batch capacity, and the recording of the
//! forward pass, the loss, the backward pass and the updates as dispatches.
//! Mirrors sprout-core's `Model` unit by unit (docs/conventions.md, "The estimator").

use crate::context::Gpu;
use crate::kernel::{Op, View};
use crate::kernels::batchnorm::{stride, Stats};
use crate::kernels::linear::LinearGeom;
use crate::kernels::Kernels;
use crate::layout::Layout;
use sprout_core::arch::{Arch, HeadShape, Pool, Post, UnitShape};
use sprout_core::error::{Error, Result};
use sprout_core::kernels::batchnorm::BnGeom;
use sprout_core::kernels::depthwise::DwGeom;
use sprout_core::model::conv_geom;
use sprout_core::network::{ParamIndex, UnitParams};

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

impl UnitBuffers {
    /// What the next layer (or the head) reads.
    pub fn output(&self) -> &View {
        self.a.as_ref().unwrap_or(&self.h)
    }
}

/// A network's buffers on the device.
#[derive(Debug)]
pub struct Graph {
    pub arch: Arch,
    pub units: Vec<UnitShape>,
    pub head: HeadShape,
    pub index: ParamIndex,
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
        let units = arch.units();
        let head = arch.head();
        let specs = arch.param_specs();
        let layout = Layout::new(specs.iter().map(|s| s.len()));
        let cap = capacity.max(1);
        let mut mask = vec![0.0f32; layout.total];
        for (s, &o) in specs.iter().zip(&layout.offsets) {
            if s.learnable {
                mask[o..o + s.len()].fill(1.0);
            }
        }
        let index = ParamIndex::new(arch);
        // The BN kernels bind a BN's four tensors as one view.
        for p in &index.units {
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
        let mut bufs = Vec::with_capacity(units.len());
        let (mut max_conv, mut max_out) = (1, 1);
        for u in &units {
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
            units,
            head,
            index,
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

    /// Input of unit `l` (the images for `l == 0`).
    pub fn unit_input(&self, l: usize) -> &View {
        if l == 0 {
            &self.input
        } else {
            self.bufs[l - 1].output()
        }
    }

    fn unit_params(&self, l: usize) -> UnitParams {
        self.index.units[l]
    }

    /// What the linear layer reads.
    pub fn head_input(&self) -> &View {
        match self.head.pool {
            Pool::Flatten => self.bufs[self.units.len() - 1].output(),
            Pool::GlobalAverage => &self.features,
        }
    }

    /// The forward pass on `n` images into the logits.
    pub fn forward(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        n: usize,
        from: Stats,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        for (l, u) in self.units.iter().enumerate() {
            let p = self.unit_params(l);
            let b = &self.bufs[l];
            ops.push(k.conv.forward(
                gpu,
                &conv_geom(u),
                n,
                self.unit_input(l),
                &self.tensor(p.conv)?,
                &b.y,
            )?);
            let g = bn_geom(u, n, false);
            if from == Stats::Batch {
                ops.push(k.bn.stats(gpu, &g, &b.y, &b.stats)?);
            }
            ops.push(k.bn.forward(gpu, &g, &b.y, &self.bn_block(p.bn)?, &b.stats, from, &b.h)?);
            match (u.post, &b.a) {
                (Post::None, _) => {}
                (Post::MaxPool, Some(a)) => {
                    ops.push(k.pool.max_forward(gpu, n * u.cout, u.conv_hw, &b.h, a)?)
                }
                (Post::Depthwise { stride }, Some(a)) => {
                    let (dk, dbn) = depthwise_params(&p)?;
                    let z = b.z.as_ref().ok_or_else(missing)?;
                    ops.push(k.depthwise.forward(
                        gpu,
                        &dw_geom(u, stride),
                        n,
                        &b.h,
                        &self.tensor(dk)?,
                        z,
                    )?);
                    let g2 = bn_geom(u, n, true);
                    if from == Stats::Batch {
                        ops.push(k.bn.stats(gpu, &g2, z, &b.dw_stats)?);
                    }
                    ops.push(k.bn.forward(
                        gpu,
                        &g2,
                        z,
                        &self.bn_block(dbn)?,
                        &b.dw_stats,
                        from,
                        a,
                    )?);
                }
                _ => return Err(missing()),
            }
        }
        let last = &self.units[self.units.len() - 1];
        if self.head.pool == Pool::GlobalAverage {
            let out = self.bufs[self.units.len() - 1].output();
            ops.push(k.pool.avg_forward(
                gpu,
                n * last.cout,
                last.out_hw.0 * last.out_hw.1,
                out,
                &self.features,
            )?);
        }
        let lg = self.linear_geom(n);
        let (hw, hb) = (
            self.tensor(self.index.head_weight)?,
            self.tensor(self.index.head_bias)?,
        );
        ops.push(
            k.linear
                .forward(gpu, &lg, self.head_input(), &hw, &hb, &self.logits)?,
        );
        Ok(())
    }

    fn linear_geom(&self, n: usize) -> LinearGeom {
        LinearGeom {
            n,
            features: self.head.features(),
            classes: self.head.classes,
        }
    }

    /// Softmax cross-entropy against the uploaded labels into `totals`.
    pub fn loss(&self, gpu: &Gpu, k: &Kernels, n: usize, ops: &mut Vec<Op>) -> Result<()> {
        let c = self.head.classes;
        ops.push(k.loss.softmax_xent(
            gpu,
            n,
            c,
            &self.logits,
            &self.labels,
            &self.dlogits,
            &self.rows,
        )?);
        ops.push(k.loss.reduce(gpu, n, &self.rows, &self.totals)?);
        Ok(())
    }

    /// The backward pass after [`Graph::loss`]: every unit's `dL/da` and
    /// `dL/dy`, and with `weights` every parameter gradient.
    pub fn backward(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        n: usize,
        from: Stats,
        weights: bool,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let last = self.units.len() - 1;
        let lu = &self.units[last];
        let lg = self.linear_geom(n);
        let hw = self.tensor(self.index.head_weight)?;
        if weights {
            let (gw, gb) = (
                self.grad(self.index.head_weight)?,
                self.grad(self.index.head_bias)?,
            );
            ops.push(k.linear.backward_weight(
                gpu,
                &lg,
                self.head_input(),
                &self.dlogits,
                &gw,
                &gb,
            )?);
        }
        match self.head.pool {
            Pool::Flatten => ops.push(k.linear.backward_input(
                gpu,
                &lg,
                &self.dlogits,
                &hw,
                &self.bufs[last].da,
            )?),
            Pool::GlobalAverage => {
                ops.push(
                    k.linear
                        .backward_input(gpu, &lg, &self.dlogits, &hw, &self.dfeatures)?,
                );
                let plane = lu.out_hw.0 * lu.out_hw.1;
                ops.push(k.pool.avg_backward(
                    gpu,
                    n * lu.cout,
                    plane,
                    &self.dfeatures,
                    &self.bufs[last].da,
                )?);
            }
        }
        for l in (0..self.units.len()).rev() {
            self.backward_unit(gpu, k, n, l, from, weights, ops)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_unit(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        n: usize,
        l: usize,
        from: Stats,
        weights: bool,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let u = &self.units[l];
        let p = self.unit_params(l);
        let b = &self.bufs[l];
        // Batch statistics couple the samples: the input gradient needs the
        // parameter-gradient sums even when the weights are not wanted.
        let param_sums = weights || from == Stats::Batch;
        let dh: &View = match (u.post, &b.a) {
            (Post::None, _) => &b.da,
            (Post::MaxPool, _) => {
                ops.push(k.pool.max_backward(
                    gpu,
                    n * u.cout,
                    u.conv_hw,
                    &b.h,
                    &b.da,
                    &self.tmp_dh,
                )?);
                &self.tmp_dh
            }
            (Post::Depthwise { stride }, Some(a)) => {
                let (dk, dbn) = depthwise_params(&p)?;
                let z = b.z.as_ref().ok_or_else(missing)?;
                let g2 = bn_geom(u, n, true);
                let blk = self.bn_block(dbn)?;
                let sums = if param_sums {
                    self.bn_grads(dbn)?
                } else {
                    b.dw_stats.clone()
                };
                if param_sums {
                    ops.push(k.bn.backward_params(
                        gpu,
                        &g2,
                        z,
                        a,
                        &b.da,
                        &b.dw_stats,
                        &blk,
                        from,
                        &sums,
                    )?);
                }
                ops.push(k.bn.backward(
                    gpu,
                    &g2,
                    z,
                    a,
                    &b.da,
                    &b.dw_stats,
                    &blk,
                    &sums,
                    from,
                    &self.tmp_dz,
                )?);
                let dg = dw_geom(u, stride);
                if weights {
                    ops.push(k.depthwise.backward_weight(
                        gpu,
                        &dg,
                        n,
                        &b.h,
                        &self.tmp_dz,
                        &self.grad(dk)?,
                    )?);
                }
                ops.push(k.depthwise.backward_input(
                    gpu,
                    &dg,
                    n,
                    &self.tmp_dz,
                    &self.tensor(dk)?,
                    &self.tmp_dh,
                )?);
                &self.tmp_dh
            }
            _ => return Err(missing()),
        };
        let g = bn_geom(u, n, false);
        let blk = self.bn_block(p.bn)?;
        let sums = if param_sums {
            self.bn_grads(p.bn)?
        } else {
            b.stats.clone()
        };
        if param_sums {
            ops.push(k.bn.backward_params(gpu, &g, &b.y, &b.h, dh, &b.stats, &blk, from, &sums)?);
        }
        ops.push(k.bn.backward(gpu, &g, &b.y, &b.h, dh, &b.stats, &blk, &sums, from, &b.dy)?);
        let geom = conv_geom(u);
        if weights {
            ops.push(k.conv.backward_weight(
                gpu,
                &geom,
                n,
                self.unit_input(l),
                &b.dy,
                &self.grad(p.conv)?,
            )?);
        }
        if l > 0 {
            let w = self.tensor(p.conv)?;
            ops.push(
                k.conv
                    .backward_input(gpu, &geom, n, &b.dy, &w, &self.bufs[l - 1].da)?,
            );
        }
        Ok(())
    }

    /// Folds the last train-mode forward's batch statistics into the running
    /// statistics, unless `guard[0]` is not a finite loss.
    pub fn update_running(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        n: usize,
        guard: &View,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        for (l, u) in self.units.iter().enumerate() {
            let p = self.unit_params(l);
            let b = &self.bufs[l];
            ops.push(k.bn.update_running(
                gpu,
                &bn_geom(u, n, false),
                &b.stats,
                &self.bn_block(p.bn)?,
                guard,
            )?);
            if let Some((_, dbn)) = p.depthwise {
                ops.push(k.bn.update_running(
                    gpu,
                    &bn_geom(u, n, true),
                    &b.dw_stats,
                    &self.bn_block(dbn)?,
                    guard,
                )?);
            }
        }
        Ok(())
    }
}

/// BN geometry of a unit's conv output, or (`depthwise`) of its depthwise output.
pub fn bn_geom(u: &UnitShape, n: usize, depthwise: bool) -> BnGeom {
    let hw = if depthwise { u.out_hw } else { u.conv_hw };
    BnGeom {
        n,
        channels: u.cout,
        plane: hw.0 * hw.1,
    }
}

/// The next-block depthwise conv a unit carries.
pub fn dw_geom(u: &UnitShape, stride: usize) -> DwGeom {
    DwGeom {
        channels: u.cout,
        stride,
        in_hw: u.conv_hw,
        out_hw: u.out_hw,
    }
}

pub fn depthwise_params(p: &UnitParams) -> Result<(usize, [usize; 4])> {
    p.depthwise.ok_or_else(missing)
}

fn missing() -> Error {
    Error::backend("a depthwise or pooled unit is missing its buffers or parameters")
}
