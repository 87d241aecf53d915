//! A morphism-learning phase on the device: theta, its Adam moments and the
//! moving averages of every candidate's estimate, the estimator's workspace,
//! and the recording of one Gauss-Newton step for every layer (docs/conventions.md,
//! "The estimator"; sprout-core's `estimator::split_estimates`).
//!
//! Per layer, with `d = conv(x, theta)` and the frozen sigma (BN at its
//! running statistics, shared by both split halves):
//! `Delta_a = sigma(y + d) + sigma(y - d) - 2 sigma(y)`,
//! `u = (S / 2) * sum(Delta_a * dL/da)` per sample and channel, eq. (1) into
//! the moving average, and eq. (1)'s gradient pushed back through both
//! branches of sigma and the theta conv.
//!
//! Every layer's per-sample `u` of splits and prunes stays on the device for
//! the whole batch, so that with the joint estimate on, one more kernel folds
//! `U^T U / (4 L_hat S)` (`U` the `S x K` matrix of every candidate's `u`,
//! slots as `MorphState::joint_slot`) into the moving average of the cross
//! terms, as sprout-core's `MorphState::update_cross` does.

use crate::context::Gpu;
use crate::graph::Graph;
use crate::kernel::{Op, View};
use crate::kernels::batchnorm::Stats;
use crate::kernels::estimator::Slots;
use crate::kernels::Kernels;
use crate::layout::Layout;
use sprout_core::arch::Post;
use sprout_core::error::{Error, Result};
use sprout_core::learn::MorphState;

/// Device buffers of one morphism phase.
#[derive(Debug)]
pub struct MorphBuffers {
    /// One tensor per layer, shaped like its conv kernel.
    weights: Layout,
    /// One tensor per layer, one value per channel.
    channels: Layout,
    theta: View,
    grad: View,
    m: View,
    v: View,
    split_ema: View,
    prune_ema: View,
    w_norms: View,
    d: View,
    h: [View; 2],
    z: [View; 2],
    a: [View; 2],
    /// Per layer two blocks of `capacity * cout` values, `[n, cout]` each:
    /// the split u, then the prune u.
    u_blocks: Layout,
    u: View,
    /// The joint estimate's state, once a step asks for it.
    joint: Option<Joint>,
    g: View,
    gh: View,
    gz: View,
    dd: [View; 2],
}

/// The joint estimate on the device: the `K x K` moving average of the cross
/// terms (row-major, slots as `MorphState::joint_slot`) and the slot table
/// that finds each candidate's u in [`MorphBuffers`]'s u blocks.
#[derive(Debug)]
struct Joint {
    cross: View,
    slots: Slots,
    /// Whether `cross` holds an average (uploaded or computed this phase).
    started: bool,
}

impl MorphBuffers {
    /// Uploads `state` and allocates the workspace for `graph`'s batch capacity.
    pub fn new(gpu: &Gpu, graph: &Graph, state: &MorphState) -> Result<MorphBuffers> {
        let weights = Layout::new(graph.walk.units.iter().map(|u| u.weight_len()));
        let channels = Layout::new(graph.walk.units.iter().map(|u| u.cout));
        let cap = graph.capacity;
        let conv = graph
            .walk
            .units
            .iter()
            .map(|u| cap * u.conv_len())
            .max()
            .unwrap_or(1);
        let out = graph
            .walk
            .units
            .iter()
            .map(|u| cap * u.out_len())
            .max()
            .unwrap_or(1);
        let u_blocks = Layout::new(graph.walk.units.iter().flat_map(|u| [cap * u.cout; 2]));
        let buf = |label: &str, len: usize| gpu.buffer(label, len);
        let pair = |label: &str, len: usize| -> Result<[View; 2]> {
            Ok([buf(label, len)?, buf(label, len)?])
        };
        let mut buffers = MorphBuffers {
            theta: gpu.upload("theta", &weights.pack(&state.theta)?)?,
            grad: buf("theta gradient", weights.total)?,
            m: gpu.upload("adam m", &weights.pack(&state.adam_m)?)?,
            v: gpu.upload("adam v", &weights.pack(&state.adam_v)?)?,
            split_ema: gpu.upload("split estimates", &channels.pack(&state.split_ema)?)?,
            prune_ema: gpu.upload("prune estimates", &channels.pack(&state.prune_ema)?)?,
            w_norms: gpu.upload("kernel norms", &channels.pack(&state.w_norms)?)?,
            d: buf("theta conv", conv)?,
            h: pair("shifted bn-relu", conv)?,
            z: pair("shifted depthwise", out)?,
            a: pair("shifted output", out)?,
            u: buf("split and prune u", u_blocks.total)?,
            u_blocks,
            joint: None,
            g: buf("estimate gradient", out)?,
            gh: buf("estimate gradient at h", conv)?,
            gz: buf("estimate gradient at z", out)?,
            dd: pair("estimate gradient at y", conv)?,
            weights,
            channels,
        };
        if !state.cross.is_empty() {
            // A phase continued: the cross terms go on from where they were.
            buffers.enable_joint(gpu, graph)?;
            if let Some(j) = buffers.joint.as_mut() {
                gpu.write(&j.cross, &state.cross)?;
                j.started = true;
            }
        }
        Ok(buffers)
    }

    /// Allocates the joint estimate's buffers (once per phase): the `K x K`
    /// cross terms and the slot table, candidate `joint_slot(l, c, prune)` at
    /// `u_blocks[2l + prune] + c` with stride `cout` of layer `l`.
    pub fn enable_joint(&mut self, gpu: &Gpu, graph: &Graph) -> Result<()> {
        if self.joint.is_some() {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (l, u) in graph.walk.units.iter().enumerate() {
            for block in [2 * l, 2 * l + 1] {
                let at = self.u_blocks.offsets[block];
                entries.extend((0..u.cout).map(|c| (at + c, u.cout)));
            }
        }
        let k = entries.len();
        let kk = k
            .checked_mul(k)
            .ok_or_else(|| Error::Mismatch(format!("{k} x {k} cross terms are too many")))?;
        self.joint = Some(Joint {
            cross: gpu.buffer("joint cross terms", kk)?,
            slots: Slots::new(gpu, &entries)?,
            started: false,
        });
        Ok(())
    }

    /// Whether the cross terms hold a moving average to continue.
    pub fn cross_started(&self) -> bool {
        self.joint.as_ref().is_some_and(|j| j.started)
    }

    /// Notes that a submitted step updated the cross terms.
    pub fn cross_updated(&mut self) {
        if let Some(j) = self.joint.as_mut() {
            j.started = true;
        }
    }

    /// Layer `l`'s per-sample split u (`prune`: prune u), `[capacity, cout]`.
    fn u_block(&self, l: usize, prune: bool) -> Result<View> {
        let b = 2 * l + usize::from(prune);
        self.u.sub(self.u_blocks.offsets[b], self.u_blocks.lens[b])
    }

    fn layer(&self, v: &View, l: usize) -> Result<View> {
        v.sub(self.weights.offsets[l], self.weights.lens[l])
    }

    fn per_channel(&self, v: &View, l: usize) -> Result<View> {
        v.sub(self.channels.offsets[l], self.channels.lens[l])
    }

    /// One morphism step after the graph's eval-mode forward, loss and
    /// activation backward: every layer's estimates into the moving
    /// averages, with `joint` the cross terms of every pair of candidates
    /// (after [`MorphBuffers::enable_joint`]), then one Adam step on all of
    /// theta and the trust region.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        graph: &Graph,
        n: usize,
        joint: bool,
        hyper: &wgpu::Buffer,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let loss = &graph.totals;
        for (l, u) in graph.walk.units.iter().enumerate() {
            let p = graph.walk.index.units[l];
            let b = &graph.bufs[l];
            let (c, po) = (u.cout, u.out_hw.0 * u.out_hw.1);
            let (conv_len, out_len) = (n * u.conv_len(), n * u.out_len());
            let x = &graph.view(graph.walk.input(l))?;
            let a0 = b.output();
            let geom = u.conv_geom();
            let g = u.bn_geom(n, false);
            let blk = graph.bn_block(p.bn)?;
            let theta = self.layer(&self.theta, l)?;
            ops.push(k.conv.forward(gpu, &geom, n, x, &theta, &self.d)?);
            // sigma(y + d) and sigma(y - d).
            for (i, sign) in [1.0f32, -1.0].into_iter().enumerate() {
                ops.push(
                    k.estimator
                        .shifted_bn_relu(gpu, &g, &b.y, &self.d, sign, &blk, &self.h[i])?,
                );
                match u.post {
                    Post::None => {}
                    Post::MaxPool => ops.push(k.pool.max_forward(
                        gpu,
                        n * c,
                        u.conv_hw,
                        &self.h[i],
                        &self.a[i],
                    )?),
                    Post::Depthwise { stride } => {
                        let (dk, dbn) = p.depthwise.ok_or_else(|| {
                            Error::backend("a depthwise unit without depthwise parameters")
                        })?;
                        ops.push(k.depthwise.forward(
                            gpu,
                            &u.dw_geom(stride),
                            n,
                            &self.h[i],
                            &graph.tensor(dk)?,
                            &self.z[i],
                        )?);
                        let g2 = u.bn_geom(n, true);
                        ops.push(k.bn.forward(
                            gpu,
                            &g2,
                            &self.z[i],
                            &graph.bn_block(dbn)?,
                            &b.dw_stats,
                            Stats::Running,
                            &self.a[i],
                        )?);
                    }
                }
            }
            let branch = |i: usize| {
                if u.post == Post::None {
                    &self.h[i]
                } else {
                    &self.a[i]
                }
            };
            let est = &k.estimator;
            let (u_split, u_prune) = (self.u_block(l, false)?, self.u_block(l, true)?);
            ops.push(est.split_u(gpu, n, n * c, po, branch(0), branch(1), a0, &b.da, &u_split)?);
            ops.push(est.ema(
                gpu,
                hyper,
                n,
                c,
                &u_split,
                loss,
                &self.per_channel(&self.split_ema, l)?,
            )?);
            ops.push(est.prune_u(gpu, n, n * c, po, a0, &b.da, &u_prune)?);
            ops.push(est.ema(
                gpu,
                hyper,
                n,
                c,
                &u_prune,
                loss,
                &self.per_channel(&self.prune_ema, l)?,
            )?);
            // dDeltaL/dy through each branch of the frozen sigma.
            ops.push(est.grad_coef(gpu, out_len, po, &u_split, &b.da, loss, &self.g)?);
            for i in 0..2 {
                let gh: &View = match u.post {
                    Post::None => &self.g,
                    Post::MaxPool => {
                        ops.push(k.pool.max_backward(
                            gpu,
                            n * c,
                            u.conv_hw,
                            &self.h[i],
                            &self.g,
                            &self.gh,
                        )?);
                        &self.gh
                    }
                    Post::Depthwise { stride } => {
                        let (dk, dbn) = p.depthwise.ok_or_else(|| {
                            Error::backend("a depthwise unit without depthwise parameters")
                        })?;
                        let g2 = u.bn_geom(n, true);
                        let dblk = graph.bn_block(dbn)?;
                        ops.push(k.bn.backward(
                            gpu,
                            &g2,
                            &self.z[i],
                            &self.a[i],
                            &self.g,
                            &b.dw_stats,
                            &dblk,
                            &b.dw_stats,
                            Stats::Running,
                            &self.gz,
                        )?);
                        ops.push(k.depthwise.backward_input(
                            gpu,
                            &u.dw_geom(stride),
                            n,
                            &self.gz,
                            &graph.tensor(dk)?,
                            &self.gh,
                        )?);
                        &self.gh
                    }
                };
                ops.push(k.bn.backward(
                    gpu,
                    &g,
                    &b.y,
                    &self.h[i],
                    gh,
                    &b.stats,
                    &blk,
                    &b.stats,
                    Stats::Running,
                    &self.dd[i],
                )?);
            }
            ops.push(
                k.elementwise
                    .sub(gpu, conv_len, &self.dd[0], &self.dd[1], &self.d)?,
            );
            ops.push(k.conv.backward_weight(
                gpu,
                &geom,
                n,
                x,
                &self.d,
                &self.layer(&self.grad, l)?,
            )?);
        }
        if joint {
            let j = self.joint.as_ref().ok_or_else(|| {
                Error::backend("joint estimate recorded before its buffers were allocated")
            })?;
            ops.push(
                k.estimator
                    .cross(gpu, hyper, n, &j.slots, &self.u, loss, &j.cross)?,
            );
        }
        ops.push(
            k.optim
                .adam(gpu, hyper, &self.grad, loss, &self.theta, &self.m, &self.v)?,
        );
        for (l, u) in graph.walk.units.iter().enumerate() {
            let theta = self.layer(&self.theta, l)?;
            let norms = self.per_channel(&self.w_norms, l)?;
            ops.push(
                k.optim
                    .trust_region(gpu, hyper, u.cout, u.fan_in(), &norms, loss, &theta)?,
            );
        }
        Ok(())
    }

    /// Copies theta, the moments and the moving averages (with the joint
    /// estimate, the cross terms too) back into `state`.
    pub fn read_into(&self, gpu: &Gpu, state: &mut MorphState) -> Result<()> {
        let w = &self.weights;
        let c = &self.channels;
        state.theta = w.unpack(&gpu.read(&self.theta, w.total)?)?;
        state.adam_m = w.unpack(&gpu.read(&self.m, w.total)?)?;
        state.adam_v = w.unpack(&gpu.read(&self.v, w.total)?)?;
        state.split_ema = c.unpack(&gpu.read(&self.split_ema, c.total)?)?;
        state.prune_ema = c.unpack(&gpu.read(&self.prune_ema, c.total)?)?;
        if state.theta.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "theta became NaN or infinite on the GPU".into(),
            ));
        }
        if let Some(j) = self.joint.as_ref().filter(|j| j.started) {
            state.cross = gpu.read(&j.cross, j.slots.len().pow(2))?;
            if state.cross.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite(
                    "joint cross terms became NaN or infinite on the GPU".into(),
                ));
            }
        }
        Ok(())
    }
}
