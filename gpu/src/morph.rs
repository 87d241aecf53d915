//! A morphism-learning phase on the device: theta, its Adam moments and the
//! moving averages of every candidate's estimate, the estimator's workspace
//! (named by sprout-core's `MorphBuf`), and the GPU engine's morphism-step
//! operations: sprout-core's `layer_estimate` over the estimator kernels,
//! the averages, the cross terms and Adam (docs/conventions.md, "The estimator").
//!
//! Every layer's per-sample `u` of splits and prunes stays on the device for
//! the whole batch, so that with the joint estimate on, one more kernel folds
//! `U^T U / (4 L_hat S)` (`U` the `S x K` matrix of every candidate's `u`,
//! slots as `MorphState::joint_slot`) into the moving average of the cross
//! terms, as sprout-core's `MorphState::update_cross` does.

use crate::context::Gpu;
use crate::graph::{Graph, Recorder};
use crate::kernel::View;
use crate::kernels::estimator::Slots;
use crate::layout::Layout;
use sprout_core::arch::BnGeom;
use sprout_core::engine::{Act, Buf, EstimatorOps, MorphBuf};
use sprout_core::error::{Error, Result};
use sprout_core::layer_estimate;
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

    /// Uploads `state`'s theta and moving averages (after host-side updates).
    pub fn write_state(&self, gpu: &Gpu, state: &MorphState) -> Result<()> {
        gpu.write(&self.theta, &self.weights.pack(&state.theta)?)?;
        gpu.write(&self.split_ema, &self.channels.pack(&state.split_ema)?)?;
        gpu.write(&self.prune_ema, &self.channels.pack(&state.prune_ema)?)
    }

    /// The buffer `b` names.
    pub fn view(&self, b: MorphBuf) -> Result<View> {
        Ok(match b {
            MorphBuf::Theta(l) => self.layer(&self.theta, l)?,
            MorphBuf::ThetaGrad(l) => self.layer(&self.grad, l)?,
            MorphBuf::U { layer, prune } => self.u_block(layer, prune)?,
            MorphBuf::D => self.d.clone(),
            MorphBuf::Shifted(i, a) => {
                let pair = match a {
                    Act::H => &self.h,
                    Act::Z => &self.z,
                    Act::A => &self.a,
                    _ => return Err(Error::backend(format!("no shifted {a:?} buffer"))),
                };
                pair.get(i)
                    .cloned()
                    .ok_or_else(|| Error::backend(format!("no shifted branch {i}")))?
            }
            MorphBuf::G => self.g.clone(),
            MorphBuf::GH => self.gh.clone(),
            MorphBuf::GZ => self.gz.clone(),
            MorphBuf::GY(i) => self
                .dd
                .get(i)
                .cloned()
                .ok_or_else(|| Error::backend(format!("no gradient branch {i}")))?,
            // Not used in the same step as the estimate's gradient at y.
            MorphBuf::Curvature => self.dd[0].clone(),
        })
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

/// The GPU's morphism-step operations, recorded by the GPU engine with a
/// phase's buffers: the estimates from sprout-core's `layer_estimate`, the
/// averages, the cross terms and Adam on the device state, with the step's
/// settings in the phase's `MorphHyper` uniform and the batch loss in the
/// graph's totals.
impl MorphEngine for Recorder<'_> {
    type Error = Error;

    fn estimate_layer(&mut self, walk: &Walk, l: usize, n: usize, grad: bool) -> Result<()> {
        layer_estimate::estimate_layer(self, walk, l, n, grad)
    }

    /// With the settings set to initialise (`MorphHyper::ema_first`), the
    /// moving-average kernel writes this batch's estimates.
    fn keep_scores(&mut self, l: usize, n: usize) -> Result<()> {
        let (m, hyper) = self.phase()?;
        let c = self.graph.walk.units[l].cout;
        let op = self.k.estimator.ema(
            self.gpu,
            hyper,
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
        let (m, hyper) = self.phase()?;
        let c = self.graph.walk.units[l].cout;
        for (prune, ema) in [(false, &m.split_ema), (true, &m.prune_ema)] {
            let op = self.k.estimator.ema(
                self.gpu,
                hyper,
                n,
                c,
                &m.u_block(l, prune)?,
                &self.graph.totals,
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
        let (m, hyper) = self.phase()?;
        let j = m.joint.as_ref().ok_or_else(|| {
            Error::backend("joint estimate recorded before its buffers were allocated")
        })?;
        let op = self.k.estimator.cross(
            self.gpu,
            hyper,
            n,
            &j.slots,
            &m.u,
            &self.graph.totals,
            &j.cross,
        )?;
        self.ops.push(op);
        Ok(())
    }

    /// Adam's settings come from the phase's uniform, written for each step.
    fn step_theta(&mut self, _adam: &Adam, _theta_max: Option<f32>) -> Result<()> {
        let (m, hyper) = self.phase()?;
        let (gpu, k, loss) = (self.gpu, self.k, &self.graph.totals);
        self.ops.push(
            k.optim
                .adam(gpu, hyper, &m.grad, loss, &m.theta, &m.m, &m.v)?,
        );
        for (l, u) in self.graph.walk.units.iter().enumerate() {
            let theta = m.layer(&m.theta, l)?;
            let norms = m.per_channel(&m.w_norms, l)?;
            self.ops.push(k.optim.trust_region(
                gpu,
                hyper,
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

impl<'a> Recorder<'a> {
    fn phase(&self) -> Result<(&'a MorphBuffers, &'a wgpu::Buffer)> {
        self.morph
            .zip(self.hyper)
            .ok_or_else(|| Error::backend("a morphism step outside a morphism phase"))
    }
}

impl EstimatorOps for Recorder<'_> {
    fn shifted_bn_relu(
        &mut self,
        g: &BnGeom,
        bn: [usize; 4],
        y: Buf,
        d: Buf,
        sign: f32,
        out: Buf,
    ) -> Result<()> {
        let blk = self.graph.bn_block(bn)?;
        let op = self.k.estimator.shifted_bn_relu(
            self.gpu,
            g,
            &self.view(y)?,
            &self.view(d)?,
            sign,
            &blk,
            &self.view(out)?,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn split_u(
        &mut self,
        n: usize,
        planes: usize,
        plane: usize,
        a_plus: Buf,
        a_minus: Buf,
        a: Buf,
        grad_a: Buf,
        u: Buf,
    ) -> Result<()> {
        let v = |b| self.view(b);
        let op = self.k.estimator.split_u(
            self.gpu,
            n,
            planes,
            plane,
            &v(a_plus)?,
            &v(a_minus)?,
            &v(a)?,
            &v(grad_a)?,
            &v(u)?,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn prune_u(
        &mut self,
        n: usize,
        planes: usize,
        plane: usize,
        a: Buf,
        grad_a: Buf,
        u: Buf,
    ) -> Result<()> {
        let v = |b| self.view(b);
        let op =
            self.k
                .estimator
                .prune_u(self.gpu, n, planes, plane, &v(a)?, &v(grad_a)?, &v(u)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn estimate_grad(
        &mut self,
        len: usize,
        plane: usize,
        u: Buf,
        grad_a: Buf,
        g: Buf,
    ) -> Result<()> {
        let v = |b| self.view(b);
        let op = self.k.estimator.grad_coef(
            self.gpu,
            len,
            plane,
            &v(u)?,
            &v(grad_a)?,
            &self.graph.totals,
            &v(g)?,
        )?;
        self.ops.push(op);
        Ok(())
    }

    fn sub(&mut self, len: usize, a: Buf, b: Buf, out: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self
            .k
            .elementwise
            .sub(self.gpu, len, &v(a)?, &v(b)?, &v(out)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn splitting_curvature(
        &mut self,
        g: &BnGeom,
        bn: [usize; 4],
        grad: Buf,
        y: Buf,
        m: Buf,
    ) -> Result<()> {
        let blk = self.graph.bn_block(bn)?;
        let v = |b| self.view(b);
        let op = self
            .k
            .splitting
            .curvature(self.gpu, g, &v(grad)?, &v(y)?, &blk, &v(m)?)?;
        self.ops.push(op);
        Ok(())
    }

    fn scale_by(&mut self, len: usize, m: Buf, t: Buf) -> Result<()> {
        let v = |b| self.view(b);
        let op = self.k.splitting.scale_by(self.gpu, len, &v(m)?, &v(t)?)?;
        self.ops.push(op);
        Ok(())
    }
}
