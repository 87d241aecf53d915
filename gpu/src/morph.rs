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
use sprout_core::learn::{MorphEngine, MorphState};
use sprout_core::optim::Adam;
use sprout_core::walk::Walk;

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
    /// Eq. (1) of every split on the last scored batch.
    scores: View,
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
            scores: buf("split scores", channels.total)?,
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

    /// The GPU's morphism-step operations recording onto `ops`.
    pub fn recorder<'a>(
        &'a self,
        gpu: &'a Gpu,
        k: &'a Kernels,
        graph: &'a Graph,
        hyper: &'a wgpu::Buffer,
        ops: &'a mut Vec<Op>,
    ) -> MorphRecorder<'a> {
        MorphRecorder {
            gpu,
            k,
            graph,
            m: self,
            hyper,
            ops,
        }
    }

    /// Uploads `state`'s theta and moving averages (after host-side updates).
    pub fn write_state(&self, gpu: &Gpu, state: &MorphState) -> Result<()> {
        gpu.write(&self.theta, &self.weights.pack(&state.theta)?)?;
        gpu.write(&self.split_ema, &self.channels.pack(&state.split_ema)?)?;
        gpu.write(&self.prune_ema, &self.channels.pack(&state.prune_ema)?)
    }

    /// Records the splitting matrix's curvature weights of layer `l` into
    /// `dd[0]`: `g = dL/dh` at the unit's own BN + ReLU output (through what
    /// follows it: the max-pool, or the next block's frozen depthwise conv,
    /// BN and ReLU), times `sigma''(y)` (sprout-core's `splitting`).
    pub fn record_curvature(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        graph: &Graph,
        l: usize,
        n: usize,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let w = &graph.walk;
        let (u, p, b) = (&w.units[l], w.index.units[l], &graph.bufs[l]);
        let missing = || Error::backend("a depthwise unit without its buffers or parameters");
        let g: &View = match u.post {
            Post::None => &b.da,
            Post::MaxPool => {
                ops.push(
                    k.pool
                        .max_backward(gpu, n * u.cout, u.conv_hw, &b.h, &b.da, &self.gh)?,
                );
                &self.gh
            }
            Post::Depthwise { stride } => {
                let (dk, dbn) = p.depthwise.ok_or_else(missing)?;
                let (z, a) = (
                    b.z.as_ref().ok_or_else(missing)?,
                    b.a.as_ref().ok_or_else(missing)?,
                );
                ops.push(k.bn.backward(
                    gpu,
                    &u.bn_geom(n, true),
                    z,
                    a,
                    &b.da,
                    &b.dw_stats,
                    &graph.bn_block(dbn)?,
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
        ops.push(k.splitting.curvature(
            gpu,
            &u.bn_geom(n, false),
            g,
            &b.y,
            &graph.bn_block(p.bn)?,
            &self.dd[0],
        )?);
        Ok(())
    }

    /// Records `S V` of layer `l` for every channel: `V` in the layer's theta,
    /// the product into its theta gradient (`conv(x, V)` scaled by the
    /// curvature weights, then the conv's weight gradient).
    pub fn record_products(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        graph: &Graph,
        l: usize,
        n: usize,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let u = &graph.walk.units[l];
        let geom = u.conv_geom();
        let x = graph.view(graph.walk.input(l))?;
        ops.push(
            k.conv
                .forward(gpu, &geom, n, &x, &self.layer(&self.theta, l)?, &self.d)?,
        );
        ops.push(
            k.splitting
                .scale_by(gpu, n * u.conv_len(), &self.dd[0], &self.d)?,
        );
        ops.push(k.conv.backward_weight(
            gpu,
            &geom,
            n,
            &x,
            &self.d,
            &self.layer(&self.grad, l)?,
        )?);
        Ok(())
    }

    /// Layer `l`'s theta and its gradient (the products' `V` and `S V`).
    pub fn product_views(&self, l: usize) -> Result<(View, View)> {
        Ok((self.layer(&self.theta, l)?, self.layer(&self.grad, l)?))
    }

    /// Eq. (1) of every split on the last scored batch, `[layer][channel]`.
    pub fn read_scores(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let c = &self.channels;
        c.unpack(&gpu.read(&self.scores, c.total)?)
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

/// The GPU's morphism-step operations: each records its dispatches on a
/// graph's buffers and a phase's, with the step's settings in `hyper`
/// (`MorphHyper`) and the batch loss in the graph's totals.
pub struct MorphRecorder<'a> {
    gpu: &'a Gpu,
    k: &'a Kernels,
    graph: &'a Graph,
    m: &'a MorphBuffers,
    hyper: &'a wgpu::Buffer,
    ops: &'a mut Vec<Op>,
}

impl std::fmt::Debug for MorphRecorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MorphRecorder({} ops)", self.ops.len())
    }
}

impl MorphEngine for MorphRecorder<'_> {
    type Error = Error;

    /// With `d = conv(x, theta)`: both shifted branches of the frozen sigma,
    /// the split and prune u, and eq. (1)'s gradient pushed back through
    /// both branches and the theta conv.
    fn estimate_layer(&mut self, walk: &Walk, l: usize, n: usize, grad: bool) -> Result<()> {
        let (gpu, k, graph, m) = (self.gpu, self.k, self.graph, self.m);
        let ops = &mut *self.ops;
        let loss = &graph.totals;
        let u = &walk.units[l];
        let p = walk.index.units[l];
        let b = &graph.bufs[l];
        let (c, po) = (u.cout, u.out_hw.0 * u.out_hw.1);
        let (conv_len, out_len) = (n * u.conv_len(), n * u.out_len());
        let x = &graph.view(walk.input(l))?;
        let a0 = b.output();
        let geom = u.conv_geom();
        let g = u.bn_geom(n, false);
        let blk = graph.bn_block(p.bn)?;
        let theta = m.layer(&m.theta, l)?;
        let depthwise = || {
            p.depthwise
                .ok_or_else(|| Error::backend("a depthwise unit without depthwise parameters"))
        };
        ops.push(k.conv.forward(gpu, &geom, n, x, &theta, &m.d)?);
        // sigma(y + d) and sigma(y - d).
        for (i, sign) in [1.0f32, -1.0].into_iter().enumerate() {
            ops.push(
                k.estimator
                    .shifted_bn_relu(gpu, &g, &b.y, &m.d, sign, &blk, &m.h[i])?,
            );
            match u.post {
                Post::None => {}
                Post::MaxPool => {
                    ops.push(
                        k.pool
                            .max_forward(gpu, n * c, u.conv_hw, &m.h[i], &m.a[i])?,
                    )
                }
                Post::Depthwise { stride } => {
                    let (dk, dbn) = depthwise()?;
                    ops.push(k.depthwise.forward(
                        gpu,
                        &u.dw_geom(stride),
                        n,
                        &m.h[i],
                        &graph.tensor(dk)?,
                        &m.z[i],
                    )?);
                    ops.push(k.bn.forward(
                        gpu,
                        &u.bn_geom(n, true),
                        &m.z[i],
                        &graph.bn_block(dbn)?,
                        &b.dw_stats,
                        Stats::Running,
                        &m.a[i],
                    )?);
                }
            }
        }
        let branch = |i: usize| {
            if u.post == Post::None {
                &m.h[i]
            } else {
                &m.a[i]
            }
        };
        let est = &k.estimator;
        let (u_split, u_prune) = (m.u_block(l, false)?, m.u_block(l, true)?);
        ops.push(est.split_u(gpu, n, n * c, po, branch(0), branch(1), a0, &b.da, &u_split)?);
        ops.push(est.prune_u(gpu, n, n * c, po, a0, &b.da, &u_prune)?);
        if !grad {
            return Ok(());
        }
        // dDeltaL/dy through each branch of the frozen sigma.
        ops.push(est.grad_coef(gpu, out_len, po, &u_split, &b.da, loss, &m.g)?);
        for i in 0..2 {
            let gh: &View = match u.post {
                Post::None => &m.g,
                Post::MaxPool => {
                    ops.push(
                        k.pool
                            .max_backward(gpu, n * c, u.conv_hw, &m.h[i], &m.g, &m.gh)?,
                    );
                    &m.gh
                }
                Post::Depthwise { stride } => {
                    let (dk, dbn) = depthwise()?;
                    ops.push(k.bn.backward(
                        gpu,
                        &u.bn_geom(n, true),
                        &m.z[i],
                        &m.a[i],
                        &m.g,
                        &b.dw_stats,
                        &graph.bn_block(dbn)?,
                        &b.dw_stats,
                        Stats::Running,
                        &m.gz,
                    )?);
                    ops.push(k.depthwise.backward_input(
                        gpu,
                        &u.dw_geom(stride),
                        n,
                        &m.gz,
                        &graph.tensor(dk)?,
                        &m.gh,
                    )?);
                    &m.gh
                }
            };
            ops.push(k.bn.backward(
                gpu,
                &g,
                &b.y,
                &m.h[i],
                gh,
                &b.stats,
                &blk,
                &b.stats,
                Stats::Running,
                &m.dd[i],
            )?);
        }
        ops.push(k.elementwise.sub(gpu, conv_len, &m.dd[0], &m.dd[1], &m.d)?);
        ops.push(
            k.conv
                .backward_weight(gpu, &geom, n, x, &m.d, &m.layer(&m.grad, l)?)?,
        );
        Ok(())
    }

    /// With `hyper` set to initialise (`MorphHyper::ema_first`), the
    /// moving-average kernel writes this batch's estimates.
    fn keep_scores(&mut self, l: usize, n: usize) -> Result<()> {
        let m = self.m;
        let c = self.graph.walk.units[l].cout;
        let op = self.k.estimator.ema(
            self.gpu,
            self.hyper,
            n,
            c,
            &m.u_block(l, false)?,
            &self.graph.totals,
            &m.per_channel(&m.scores, l)?,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn average_estimates(&mut self, l: usize, n: usize, _alpha: f32) -> Result<()> {
        let (gpu, m) = (self.gpu, self.m);
        let c = self.graph.walk.units[l].cout;
        let loss = &self.graph.totals;
        for (prune, ema) in [(false, &m.split_ema), (true, &m.prune_ema)] {
            let op = self.k.estimator.ema(
                gpu,
                self.hyper,
                n,
                c,
                &m.u_block(l, prune)?,
                loss,
                &m.per_channel(ema, l)?,
            )?;
            self.ops.push(op);
        }
        Ok(())
    }

    fn split_directions(
        &mut self,
        _walk: &Walk,
        _l: usize,
        _n: usize,
        _iterations: usize,
        _alpha: f32,
    ) -> Result<()> {
        // The host-side eigen-solver steps between products: the backend runs
        // splitting steps as they go, not as a recorded plan.
        Err(Error::backend(
            "a splitting step cannot be recorded as one plan",
        ))
    }

    fn average_cross(&mut self, n: usize, _alpha: f32) -> Result<()> {
        let j = self.m.joint.as_ref().ok_or_else(|| {
            Error::backend("joint estimate recorded before its buffers were allocated")
        })?;
        let op = self.k.estimator.cross(
            self.gpu,
            self.hyper,
            n,
            &j.slots,
            &self.m.u,
            &self.graph.totals,
            &j.cross,
        )?;
        self.ops.push(op);
        Ok(())
    }

    /// Adam's settings come from `hyper`, written for each step.
    fn step_theta(&mut self, _adam: &Adam, _theta_max: Option<f32>) -> Result<()> {
        let (gpu, k, m, loss) = (self.gpu, self.k, self.m, &self.graph.totals);
        self.ops.push(
            k.optim
                .adam(gpu, self.hyper, &m.grad, loss, &m.theta, &m.m, &m.v)?,
        );
        for (l, u) in self.graph.walk.units.iter().enumerate() {
            let theta = m.layer(&m.theta, l)?;
            let norms = m.per_channel(&m.w_norms, l)?;
            self.ops.push(k.optim.trust_region(
                gpu,
                self.hyper,
                u.cout,
                u.fan_in(),
                &norms,
                loss,
                &theta,
            )?);
        }
        Ok(())
    }
}
