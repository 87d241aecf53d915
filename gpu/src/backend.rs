//! [`GpuBackend`]: sprout-core's [`Backend`] with every step on the device.
//!
//! Same semantics as `CpuBackend`. Pipelines are built once per device;
//! buffers and the recorded dispatches of each step kind are built once per
//! architecture and batch size and replayed. A step uploads its images and
//! labels, submits once and reads back only `(loss, correct)`; parameters
//! cross to the host only on [`Backend::load`], [`Backend::network`] and
//! [`Backend::momentum`], morphism state on `begin_morph` and `end_morph`.

use crate::context::{AdapterSummary, Gpu};
use crate::graph::Graph;
use crate::kernel::{submit, Op, View};
use crate::kernels::optimizer::{sgd_words, MorphHyper};
use crate::kernels::Kernels;
use crate::morph::MorphBuffers;
use sprout_core::backend::{
    check_batch, check_momentum, morph_loss, training_loss, Backend, BatchStats,
};
use sprout_core::engine::{Mode, MorphBuf};
use sprout_core::error::{Error, Field, Result};
use sprout_core::layer_estimate;
use sprout_core::learn::{
    morph_step, score_step, Curvature, MorphConfig, MorphEngine, MorphMethod, MorphState,
};
use sprout_core::network::Network;
use sprout_core::optim::{Adam, Sgd};
use sprout_core::splitting::{solve_min_eigen, SolverWorkspace};
use sprout_core::walk::Walk;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// The kinds of step, each recorded once per batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Train,
    Eval,
    Calibrate,
    /// With `joint`, the step also averages the joint estimate's cross terms.
    Morph {
        joint: bool,
    },
    /// Scores every split with theta fixed.
    Score,
    /// The eval-mode forward, loss and activation backward alone.
    Gradients,
    /// One layer's splitting curvature weights, and its splitting products.
    Curvature {
        layer: usize,
    },
    Products {
        layer: usize,
    },
}

/// The wgpu backend.
#[derive(Debug)]
pub struct GpuBackend {
    gpu: Gpu,
    kernels: Kernels,
    capacity: usize,
    sgd_hyper: wgpu::Buffer,
    morph_hyper: wgpu::Buffer,
    /// The morphism settings of a scoring step: the estimates' kernel writes
    /// rather than averages.
    score_hyper: wgpu::Buffer,
    state: Option<State>,
}

#[derive(Debug)]
struct State {
    graph: Graph,
    plans: HashMap<(Step, usize), Vec<Op>>,
    morph: Option<Phase>,
}

#[derive(Debug)]
struct Phase {
    state: MorphState,
    buffers: MorphBuffers,
    /// Recorded morphism and scoring steps by kind and batch size.
    plans: HashMap<(Step, usize), Vec<Op>>,
    solver: SolverWorkspace,
}

/// Splitting steepest descent on the device: each layer's products `S V`
/// are recorded once and submitted for every step of sprout-core's
/// eigen-solver, which runs on the host on the `cout x fan_in` vectors.
/// Theta and the moving averages are the host-side `state` during the step.
struct GpuSplitting<'a> {
    gpu: &'a Gpu,
    k: &'a Kernels,
    graph: &'a Graph,
    phase: &'a mut Phase,
}

impl GpuSplitting<'_> {
    /// Records (once) step `step` on `n` images with `record`, then submits it.
    fn submit(
        &mut self,
        step: Step,
        n: usize,
        readback: Option<(&View, usize)>,
    ) -> Result<Vec<f32>> {
        let (gpu, k, g) = (self.gpu, self.k, self.graph);
        let phase = &mut *self.phase;
        if let Entry::Vacant(slot) = phase.plans.entry((step, n)) {
            let mut ops = Vec::new();
            let mut r = g.recorder(gpu, k, &g.one, &mut ops);
            r.morph = Some(&phase.buffers);
            match step {
                Step::Curvature { layer } => {
                    layer_estimate::splitting_weights(&mut r, &g.walk, layer, n)?
                }
                Step::Products { layer } => {
                    layer_estimate::splitting_products(&mut r, &g.walk, layer, n)?
                }
                _ => return Err(Error::backend("not a splitting step")),
            }
            slot.insert(ops);
        }
        submit(gpu, &phase.plans[&(step, n)], readback)
    }
}

/// What a splitting step answers to the Gauss-Newton operations.
fn no_estimates() -> Error {
    Error::backend("splitting steps make no Gauss-Newton estimates")
}

impl MorphEngine for GpuSplitting<'_> {
    type Error = Error;

    fn split_directions(
        &mut self,
        walk: &Walk,
        l: usize,
        n: usize,
        iterations: usize,
        alpha: f32,
    ) -> Result<()> {
        let u = &walk.units[l];
        let (c, d) = (u.cout, u.fan_in());
        self.submit(Step::Curvature { layer: l }, n, None)?;
        let (v, sv) = (
            self.phase.buffers.view(MorphBuf::Theta(l))?,
            self.phase.buffers.view(MorphBuf::ThetaGrad(l))?,
        );
        // Warm start from the last batch's eigenvectors.
        let start = self.phase.state.theta[l].clone();
        let mut solver = std::mem::take(&mut self.phase.solver);
        let dirs = solve_min_eigen(c, d, &start, iterations, &mut solver, &mut |x, out| {
            self.gpu.write(&v, x)?;
            let got = self.submit(Step::Products { layer: l }, n, Some((&sv, c * d)))?;
            out[..c * d].copy_from_slice(&got[..c * d]);
            Ok(())
        });
        self.phase.solver = solver;
        let dirs = dirs?;
        let state = &mut self.phase.state;
        state.theta[l].copy_from_slice(&dirs.directions);
        state.update_ema(l, &dirs.eigenvalues, &vec![0.0; c], alpha);
        Ok(())
    }

    fn estimate_layer(&mut self, _: &Walk, _: usize, _: usize, _: bool) -> Result<()> {
        Err(no_estimates())
    }
    fn keep_scores(&mut self, _: usize, _: usize) -> Result<()> {
        Err(no_estimates())
    }
    fn average_estimates(&mut self, _: usize, _: usize, _: f32) -> Result<()> {
        Err(no_estimates())
    }
    fn average_cross(&mut self, _: usize, _: f32) -> Result<()> {
        Err(no_estimates())
    }
    fn step_theta(&mut self, _: &Adam, _: Option<f32>) -> Result<()> {
        Err(no_estimates())
    }
}

impl GpuBackend {
    /// A backend for batches of at most `batch_capacity` images on the best
    /// adapter, or the first whose name contains `adapter` (case-insensitive).
    pub fn new(batch_capacity: usize, adapter: Option<&str>) -> Result<GpuBackend> {
        let gpu = Gpu::new(adapter)?;
        let kernels = Kernels::new(&gpu)?;
        Ok(GpuBackend {
            capacity: batch_capacity.max(1),
            sgd_hyper: gpu.uniform("sgd settings", 4)?,
            morph_hyper: gpu.uniform("morphism settings", MorphHyper::WORDS)?,
            score_hyper: {
                let b = gpu.uniform("scoring settings", MorphHyper::WORDS)?;
                let hyper = MorphHyper {
                    adam: Adam::paper(),
                    t: 1,
                    ema_alpha: 1.0,
                    ema_first: true,
                    theta_max: None,
                    cross_first: true,
                };
                gpu.write_uniform(&b, &hyper.words());
                b
            },
            kernels,
            gpu,
            state: None,
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> AdapterSummary {
        self.gpu.adapter()
    }

    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))
    }

    /// Uploads a batch after the same checks the CPU backend makes.
    fn upload_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<()> {
        let capacity = self.capacity;
        let gpu = &self.gpu;
        let s = self
            .state
            .as_ref()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let arch = &s.graph.arch;
        check_batch(arch, images, labels, n, capacity)?;
        let len: usize = arch.input.iter().product();
        gpu.write(&s.graph.input, &images[..n * len])?;
        gpu.write_u32(&s.graph.labels, &labels[..n])
    }

    /// A splitting step on the uploaded batch of `n` (see [`GpuSplitting`]).
    fn splitting_batch(&mut self, n: usize, cfg: &MorphConfig) -> Result<BatchStats> {
        let stats = self.run(Step::Gradients, n, None)?;
        morph_loss(stats.loss)?;
        let (gpu, k) = (&self.gpu, &self.kernels);
        let s = self
            .state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let phase = s
            .morph
            .as_mut()
            .ok_or_else(|| Error::backend("morph_batch outside a morphism phase"))?;
        // Theta and the averages as the device holds them (earlier steps may have run there).
        phase.buffers.read_into(gpu, &mut phase.state)?;
        let mut e = GpuSplitting {
            gpu,
            k,
            graph: &s.graph,
            phase: &mut *phase,
        };
        morph_step(&s.graph.walk, &mut e, n, cfg)?;
        phase.buffers.write_state(gpu, &phase.state)?;
        phase.state.steps += 1;
        Ok(stats)
    }

    /// Records (once) and submits step `step` on `n` images; returns the batch totals.
    /// `cfg`: the morphism step's settings (a morphism step only).
    fn run(&mut self, step: Step, n: usize, cfg: Option<&MorphConfig>) -> Result<BatchStats> {
        let GpuBackend {
            gpu,
            kernels: k,
            sgd_hyper,
            morph_hyper,
            score_hyper,
            state,
            ..
        } = self;
        let s = state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let g = &s.graph;
        let ops = match (step, &mut s.morph) {
            (Step::Morph { .. } | Step::Score, Some(phase)) => {
                if let Entry::Vacant(slot) = phase.plans.entry((step, n)) {
                    let mut ops = Vec::new();
                    gpu.scoped("recording a morphism step", || {
                        let mut r = g.recorder(gpu, k, &g.one, &mut ops);
                        r.morph = Some(&phase.buffers);
                        g.walk.forward(&mut r, n, Mode::Eval)?;
                        g.walk.loss(&mut r, n)?;
                        g.walk.backward(&mut r, n, Mode::Eval, false)?;
                        match step {
                            Step::Morph { joint } => {
                                let cfg = MorphConfig {
                                    joint,
                                    ..*cfg.ok_or_else(|| {
                                        Error::backend("a morphism step without settings")
                                    })?
                                };
                                r.hyper = Some(morph_hyper);
                                morph_step(&g.walk, &mut r, n, &cfg)
                            }
                            _ => {
                                r.hyper = Some(score_hyper);
                                score_step(&g.walk, &mut r, n)
                            }
                        }
                    })?;
                    slot.insert(ops);
                }
                &phase.plans[&(step, n)]
            }
            (Step::Morph { .. } | Step::Score, None) => {
                return Err(Error::backend("morph_batch outside a morphism phase"))
            }
            _ => {
                if let Entry::Vacant(slot) = s.plans.entry((step, n)) {
                    let mut ops = Vec::new();
                    gpu.scoped("recording a step", || {
                        let (w, guard) = (
                            &g.walk,
                            if step == Step::Train {
                                &g.totals
                            } else {
                                &g.one
                            },
                        );
                        let mut r = g.recorder(gpu, k, guard, &mut ops);
                        match step {
                            Step::Train => {
                                w.forward(&mut r, n, Mode::Train)?;
                                w.loss(&mut r, n)?;
                                w.backward(&mut r, n, Mode::Train, true)?;
                                w.update_running(&mut r, n)?;
                                ops.push(k.optim.sgd(
                                    gpu,
                                    sgd_hyper,
                                    &g.mask,
                                    &g.grads,
                                    &g.totals,
                                    &g.params,
                                    &g.momentum,
                                )?);
                            }
                            Step::Eval => {
                                w.forward(&mut r, n, Mode::Eval)?;
                                w.loss(&mut r, n)?;
                            }
                            Step::Calibrate => {
                                w.forward(&mut r, n, Mode::Train)?;
                                w.update_running(&mut r, n)?;
                            }
                            Step::Gradients => {
                                w.forward(&mut r, n, Mode::Eval)?;
                                w.loss(&mut r, n)?;
                                w.backward(&mut r, n, Mode::Eval, false)?;
                            }
                            Step::Morph { .. }
                            | Step::Score
                            | Step::Curvature { .. }
                            | Step::Products { .. } => {}
                        }
                        Ok(())
                    })?;
                    slot.insert(ops);
                }
                &s.plans[&(step, n)]
            }
        };
        let readback = (step != Step::Calibrate).then_some((&g.totals, 2));
        let totals = gpu.scoped("running a step", || submit(gpu, ops, readback))?;
        let (loss, correct) = match totals.as_slice() {
            [l, c, ..] => (*l, *c as usize),
            _ => (0.0, 0),
        };
        Ok(BatchStats {
            loss,
            correct,
            samples: n,
        })
    }
}

impl Backend for GpuBackend {
    fn load(&mut self, net: &Network, momentum: Option<&[Vec<f32>]>) -> Result<()> {
        let net = Network::from_tensors(net.arch.clone(), net.tensors.clone())?;
        if let Some(m) = momentum {
            check_momentum(&net, m)?;
        }
        let state = match self.state.take() {
            Some(s) if s.graph.arch == net.arch => State { morph: None, ..s },
            _ => State {
                graph: Graph::new(&self.gpu, &net.arch, self.capacity)?,
                plans: HashMap::new(),
                morph: None,
            },
        };
        let g = &state.graph;
        self.gpu.write(&g.params, &g.layout.pack(&net.tensors)?)?;
        let m = match momentum {
            Some(m) => g.layout.pack(m)?,
            None => vec![0.0; g.layout.total],
        };
        self.gpu.write(&g.momentum, &m)?;
        self.state = Some(state);
        self.gpu.check()
    }

    fn train_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        sgd: &Sgd,
    ) -> Result<BatchStats> {
        self.upload_batch(images, labels, n)?;
        self.gpu.write_uniform(&self.sgd_hyper, &sgd_words(sgd));
        let stats = self.run(Step::Train, n, None)?;
        training_loss(stats.loss)?;
        Ok(stats)
    }

    fn eval_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<BatchStats> {
        self.upload_batch(images, labels, n)?;
        self.run(Step::Eval, n, None)
    }

    fn network(&mut self) -> Result<Network> {
        let gpu = &self.gpu;
        let s = self
            .state
            .as_ref()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let g = &s.graph;
        let flat = gpu.read(&g.params, g.layout.total)?;
        Network::from_tensors(g.arch.clone(), g.layout.unpack(&flat)?)
    }

    fn momentum(&mut self) -> Result<Vec<Vec<f32>>> {
        let gpu = &self.gpu;
        let s = self
            .state
            .as_ref()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let g = &s.graph;
        g.layout.unpack(&gpu.read(&g.momentum, g.layout.total)?)
    }

    fn calibrate_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<()> {
        self.upload_batch(images, labels, n)?;
        self.run(Step::Calibrate, n, None).map(|_| ())
    }

    fn begin_morph(&mut self, state: MorphState) -> Result<()> {
        let net = self.network()?;
        state.check(&net)?;
        let gpu = &self.gpu;
        let s = self
            .state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let buffers = MorphBuffers::new(gpu, &s.graph, &state)?;
        s.morph = Some(Phase {
            state,
            buffers,
            plans: HashMap::new(),
            solver: SolverWorkspace::default(),
        });
        Ok(())
    }

    fn morph_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        cfg: &MorphConfig,
    ) -> Result<BatchStats> {
        if cfg.curvature != Curvature::RankOne {
            return Err(Error::Unsupported {
                field: Field::Curvature,
                value: "exact-logits",
                backend: "gpu",
            });
        }
        self.upload_batch(images, labels, n)?;
        if let MorphMethod::Splitting { .. } = cfg.method {
            return self.splitting_batch(n, cfg);
        }
        // The joint estimate (sprout-core's `MorphConfig::joint`): the cross
        // terms start on the phase's first batch or the first that asks for them.
        let joint = cfg.joint && cfg.method == MorphMethod::GaussNewton;
        let (steps, cross_started) = {
            let gpu = &self.gpu;
            let s = self
                .state
                .as_mut()
                .ok_or_else(|| Error::backend("no network loaded"))?;
            let phase = s
                .morph
                .as_mut()
                .ok_or_else(|| Error::backend("morph_batch outside a morphism phase"))?;
            if joint {
                phase.buffers.enable_joint(gpu, &s.graph)?;
            }
            (phase.state.steps, phase.buffers.cross_started())
        };
        let hyper = MorphHyper {
            adam: cfg.adam,
            t: steps + 1,
            ema_alpha: cfg.ema_alpha,
            ema_first: steps == 0,
            theta_max: cfg.theta_max,
            cross_first: steps == 0 || !cross_started,
        };
        self.gpu.write_uniform(&self.morph_hyper, &hyper.words());
        let stats = self.run(Step::Morph { joint }, n, Some(cfg))?;
        morph_loss(stats.loss)?;
        if let Some(phase) = self.state()?.morph.as_mut() {
            phase.state.steps += 1;
            if joint {
                phase.buffers.cross_updated();
            }
        }
        Ok(stats)
    }

    fn score_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        curvature: Curvature,
    ) -> Result<Vec<Vec<f32>>> {
        if curvature != Curvature::RankOne {
            return Err(Error::Unsupported {
                field: Field::Curvature,
                value: "exact-logits",
                backend: "gpu",
            });
        }
        if self.state()?.morph.is_none() {
            return Err(Error::backend("score_batch outside a morphism phase"));
        }
        self.upload_batch(images, labels, n)?;
        let stats = self.run(Step::Score, n, None)?;
        morph_loss(stats.loss)?;
        let gpu = &self.gpu;
        let phase = self
            .state
            .as_ref()
            .and_then(|s| s.morph.as_ref())
            .ok_or_else(|| Error::backend("score_batch outside a morphism phase"))?;
        phase.buffers.read_scores(gpu)
    }

    fn end_morph(&mut self) -> Result<MorphState> {
        let gpu = &self.gpu;
        let s = self
            .state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))?;
        let mut phase = s
            .morph
            .take()
            .ok_or_else(|| Error::backend("end_morph outside a morphism phase"))?;
        phase.buffers.read_into(gpu, &mut phase.state)?;
        Ok(phase.state)
    }
}
