//! The engine the training and growth loops drive, and its CPU implementation.

use crate::arch::Arch;
use crate::engine::Mode;
use crate::error::{Error, Result};
use crate::estimator::{
    prune_estimates_from, prune_samples, split_estimates, Curvature, FrozenSigma, HeadCurvature,
    LayerBatch, Workspace,
};
use crate::learn::{morph_step, score_step, MorphConfig, MorphEngine, MorphMethod, MorphState};
use crate::model::Model;
use crate::network::Network;
use crate::optim::{Adam, Sgd};
use crate::splitting::{min_eigen_from, SplitWorkspace};
use crate::walk::Walk;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::mem;

/// Loss and accuracy counts of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Samples whose highest logit is their label.
    pub correct: usize,
    /// Samples in the batch.
    pub samples: usize,
}

/// What the training and growth loops need from an engine: load a network,
/// train and evaluate batches, read the network back. Implemented by
/// [`CpuBackend`] here and by the wgpu backend in sprout-gpu.
pub trait Backend {
    /// Loads `net` and its SGD momentum (zero when `None`), replacing what was loaded.
    fn load(&mut self, net: &Network, momentum: Option<&[Vec<f32>]>) -> Result<()>;
    /// One SGD step on `n` images (NCHW, normalised) with BN in train mode.
    fn train_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        sgd: &Sgd,
    ) -> Result<BatchStats>;
    /// Loss and accuracy on `n` images with BN in eval mode.
    fn eval_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<BatchStats>;
    /// The current network (weights and running statistics).
    fn network(&mut self) -> Result<Network>;
    /// The current SGD momentum buffers, shaped like the network's tensors.
    fn momentum(&mut self) -> Result<Vec<Vec<f32>>>;
    /// Refreshes BN running statistics with one train-mode forward pass on `n`
    /// images, without changing any weight.
    fn calibrate_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<()>;
    /// Starts a morphism-learning phase with `state` (the model stays fixed).
    fn begin_morph(&mut self, state: MorphState) -> Result<()>;
    /// One morphism-learning step on `n` images: BN in eval mode (frozen
    /// sigma), the Gauss-Newton estimates of every split and prune, one Adam
    /// step on theta and the EMA update. Returns the batch loss `L_hat`.
    fn morph_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        cfg: &MorphConfig,
    ) -> Result<BatchStats>;
    /// Scores every split candidate on `n` images with the phase's theta
    /// held fixed: eq. (1) per layer and channel (`[layer][channel]`), with no
    /// moving average or Adam step; `curvature` as in [`MorphConfig`].
    fn score_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        curvature: Curvature,
    ) -> Result<Vec<Vec<f32>>>;
    /// Ends the phase and hands back theta and the estimates.
    fn end_morph(&mut self) -> Result<MorphState>;
}

/// The reference backend: sprout-core's kernels on the CPU, on all cores with `std`.
#[derive(Debug)]
pub struct CpuBackend {
    capacity: usize,
    state: Option<CpuState>,
}

#[derive(Debug)]
struct CpuState {
    net: Network,
    model: Model,
    grads: Vec<Vec<f32>>,
    momentum: Vec<Vec<f32>>,
    learnable: Vec<bool>,
    morph: Option<MorphPhase>,
}

/// A running morphism-learning phase: the state, each layer's frozen sigma
/// (fixed while the model is) and estimator buffers.
#[derive(Debug)]
struct MorphPhase {
    state: MorphState,
    sigmas: Vec<FrozenSigma>,
    workspace: Workspace,
    split_workspace: SplitWorkspace,
    split: Vec<f32>,
    prune: Vec<f32>,
    /// Per layer, the gradient of its split estimates with respect to theta.
    grads: Vec<Vec<f32>>,
    /// Per layer, the split estimates of the last scored batch.
    scores: Vec<Vec<f32>>,
    /// Per-sample first-order terms: one layer's prunes, and (`n x K`) every
    /// candidate's for the joint estimate.
    prune_u: Vec<f32>,
    joint_u: Vec<f32>,
    cross_batch: Vec<f32>,
    /// Softmax probabilities of the batch (exact curvature at the logits).
    probs: Vec<f32>,
}

impl CpuBackend {
    /// A backend for batches of at most `batch_capacity` images.
    pub fn new(batch_capacity: usize) -> CpuBackend {
        CpuBackend {
            capacity: batch_capacity.max(1),
            state: None,
        }
    }

    fn state(&mut self) -> Result<&mut CpuState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::backend("no network loaded"))
    }

    /// The loaded network without copying it (CPU only).
    pub fn network_ref(&self) -> Option<&Network> {
        self.state.as_ref().map(|s| &s.net)
    }

    /// Runs `step` on the CPU's morphism engine after the eval-mode forward,
    /// loss and activation backward of the batch; `joint`: collect every
    /// candidate's per-sample u for the cross terms.
    #[allow(clippy::too_many_arguments)]
    fn on_morph_engine(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        curvature: Curvature,
        joint: bool,
        step: impl FnOnce(&Walk, &mut CpuMorph<'_>) -> Result<()>,
    ) -> Result<BatchStats> {
        let capacity = self.capacity;
        let s = self.state()?;
        check_batch(&s.net.arch, images, labels, n, capacity)?;
        let phase = s
            .morph
            .as_mut()
            .ok_or_else(|| Error::backend("a morphism step outside a morphism phase"))?;
        s.model.forward(&s.net, images, n, Mode::Eval);
        let (loss, correct) = s.model.loss(labels);
        morph_loss(loss)?;
        s.model.backward_activations(&s.net);
        if joint {
            phase.joint_u.resize(n * phase.state.joint_len(), 0.0);
        } else {
            phase.joint_u.clear();
        }
        // Moved out for the step, so that the estimator's inputs can borrow them.
        let (mut probs, sigmas) = (mem::take(&mut phase.probs), mem::take(&mut phase.sigmas));
        let head = (curvature == Curvature::ExactLogits)
            .then(|| HeadCurvature::from_model(&s.model, &s.net, &mut probs));
        let mut engine = CpuMorph {
            model: &s.model,
            sigmas: &sigmas,
            phase: &mut *phase,
            loss,
            head,
        };
        let stepped = step(s.model.walk(), &mut engine);
        (phase.probs, phase.sigmas) = (probs, sigmas);
        stepped?;
        Ok(BatchStats {
            loss,
            correct,
            samples: n,
        })
    }

    /// The forward/backward engine of the loaded network (CPU only), for the estimator.
    pub fn parts_mut(&mut self) -> Option<(&Network, &mut Model)> {
        self.state.as_mut().map(|s| (&s.net, &mut s.model))
    }
}

/// Checks every backend makes of a batch of `n` images for `arch` and a
/// capacity of `capacity`: the counts, and every label in range.
pub fn check_batch(
    arch: &Arch,
    images: &[f32],
    labels: &[u32],
    n: usize,
    capacity: usize,
) -> Result<()> {
    let len: usize = arch.input.iter().product();
    if n == 0 || n > capacity || images.len() < n * len || labels.len() < n {
        return Err(Error::Mismatch(format!(
            "batch of {n} images (capacity {capacity}) with {} values and {} labels; each image needs {len}",
            images.len(),
            labels.len()
        )));
    }
    if let Some(&bad) = labels[..n].iter().find(|&&l| l as usize >= arch.classes) {
        return Err(Error::Mismatch(format!(
            "label {bad} out of range for {} classes",
            arch.classes
        )));
    }
    Ok(())
}

/// Checks that SGD momentum buffers are shaped like `net`'s tensors.
pub fn check_momentum(net: &Network, momentum: &[Vec<f32>]) -> Result<()> {
    if momentum.len() != net.tensors.len()
        || momentum
            .iter()
            .zip(&net.tensors)
            .any(|(a, b)| a.len() != b.len())
    {
        return Err(Error::Mismatch(
            "momentum buffers do not match the network's tensors".into(),
        ));
    }
    Ok(())
}

/// A training step's loss, or the error when it is not finite.
pub fn training_loss(loss: f32) -> Result<f32> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(Error::NonFinite(format!("training loss is {loss}")))
    }
}

/// A morphism step's batch loss `L_hat`, or the error when eq. (1) cannot
/// use it (not finite, or not positive).
pub fn morph_loss(loss: f32) -> Result<f32> {
    if loss.is_finite() && loss > 0.0 {
        Ok(loss)
    } else {
        Err(Error::NonFinite(format!("morphism-phase loss is {loss}")))
    }
}

/// The CPU's morphism-step operations: the estimator's fused per-layer
/// kernels on the model's last batch, the moving averages and Adam on the
/// host-side [`MorphState`].
struct CpuMorph<'a> {
    model: &'a Model,
    sigmas: &'a [FrozenSigma],
    phase: &'a mut MorphPhase,
    loss: f32,
    /// The exact curvature at the logits, for the unit that feeds them.
    head: Option<HeadCurvature<'a>>,
}

impl<'a> CpuMorph<'a> {
    fn batch(&self, l: usize) -> LayerBatch<'a> {
        let last = self.model.units().len() - 1;
        LayerBatch::from_model(self.model, l, self.sigmas[l].view(), self.loss)
            .with_head(self.head.filter(|_| l == last))
    }
}

impl MorphEngine for CpuMorph<'_> {
    type Error = Error;

    fn estimate_layer(&mut self, walk: &Walk, l: usize, n: usize, grad: bool) -> Result<()> {
        let u = walk.units[l];
        let batch = self.batch(l);
        let p = &mut *self.phase;
        p.split.resize(u.cout, 0.0);
        p.prune.resize(u.cout, 0.0);
        p.grads[l].resize(u.weight_len(), 0.0);
        split_estimates(
            &batch,
            &p.state.theta[l],
            &mut p.workspace,
            &mut p.split,
            grad.then_some(&mut p.grads[l][..]),
        );
        p.prune_u.resize(n * u.cout, 0.0);
        prune_samples(&batch, &mut p.prune_u);
        prune_estimates_from(&batch, &p.prune_u, &mut p.prune);
        if !p.joint_u.is_empty() {
            let k_all = p.state.joint_len();
            let splits = p.workspace.last_u(n, u.cout);
            let first = p.state.joint_slot(l, 0, false);
            for smp in 0..n {
                let row = &mut p.joint_u[smp * k_all + first..][..2 * u.cout];
                row[..u.cout].copy_from_slice(&splits[smp * u.cout..][..u.cout]);
                row[u.cout..].copy_from_slice(&p.prune_u[smp * u.cout..][..u.cout]);
            }
        }
        Ok(())
    }

    fn keep_scores(&mut self, l: usize, _n: usize) -> Result<()> {
        let p = &mut *self.phase;
        p.scores[l].clear();
        p.scores[l].extend_from_slice(&p.split);
        Ok(())
    }

    fn average_estimates(&mut self, l: usize, _n: usize, alpha: f32) -> Result<()> {
        let p = &mut *self.phase;
        p.state.update_ema(l, &p.split, &p.prune, alpha);
        Ok(())
    }

    fn split_directions(
        &mut self,
        _walk: &Walk,
        l: usize,
        _n: usize,
        iterations: usize,
        alpha: f32,
    ) -> Result<()> {
        let batch = self.batch(l);
        let p = &mut *self.phase;
        // Warm start from the last batch's eigenvectors; theta holds the
        // unit directions, the EMA the eigenvalues.
        let dirs = min_eigen_from(
            &batch,
            &p.state.theta[l],
            iterations,
            &mut p.split_workspace,
        );
        p.state.theta[l].copy_from_slice(&dirs.directions);
        p.prune.clear();
        p.prune.resize(dirs.eigenvalues.len(), 0.0);
        p.state.update_ema(l, &dirs.eigenvalues, &p.prune, alpha);
        Ok(())
    }

    fn average_cross(&mut self, n: usize, alpha: f32) -> Result<()> {
        let p = &mut *self.phase;
        p.state
            .update_cross(&p.joint_u, n, self.loss, alpha, &mut p.cross_batch);
        Ok(())
    }

    fn step_theta(&mut self, adam: &Adam, theta_max: Option<f32>) -> Result<()> {
        let p = &mut *self.phase;
        for (l, g) in p.grads.iter().enumerate() {
            p.state.adam_step(l, g, adam, theta_max);
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn load(&mut self, net: &Network, momentum: Option<&[Vec<f32>]>) -> Result<()> {
        let net = Network::from_tensors(net.arch.clone(), net.tensors.clone())?;
        let momentum = match momentum {
            Some(m) => {
                check_momentum(&net, m)?;
                m.to_vec()
            }
            None => net.zeros_like(),
        };
        let model = match self.state.take() {
            Some(s) if s.model.arch() == &net.arch => s.model,
            _ => Model::new(&net.arch, self.capacity),
        };
        let learnable = net.specs().iter().map(|s| s.learnable).collect();
        self.state = Some(CpuState {
            grads: net.zeros_like(),
            net,
            model,
            momentum,
            learnable,
            morph: None,
        });
        Ok(())
    }

    fn train_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        n: usize,
        sgd: &Sgd,
    ) -> Result<BatchStats> {
        let capacity = self.capacity;
        let s = self.state()?;
        check_batch(&s.net.arch, images, labels, n, capacity)?;
        s.model.forward(&s.net, images, n, Mode::Train);
        let (loss, correct) = s.model.loss(labels);
        training_loss(loss)?;
        s.model.backward(&s.net, &mut s.grads);
        s.model.update_running_stats(&mut s.net);
        sgd.step_all(&mut s.net.tensors, &s.grads, &mut s.momentum, &s.learnable);
        Ok(BatchStats {
            loss,
            correct,
            samples: n,
        })
    }

    fn eval_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<BatchStats> {
        let capacity = self.capacity;
        let s = self.state()?;
        check_batch(&s.net.arch, images, labels, n, capacity)?;
        s.model.forward(&s.net, images, n, Mode::Eval);
        let (loss, correct) = s.model.loss(labels);
        Ok(BatchStats {
            loss,
            correct,
            samples: n,
        })
    }

    fn network(&mut self) -> Result<Network> {
        Ok(self.state()?.net.clone())
    }

    fn momentum(&mut self) -> Result<Vec<Vec<f32>>> {
        Ok(self.state()?.momentum.clone())
    }

    fn calibrate_batch(&mut self, images: &[f32], labels: &[u32], n: usize) -> Result<()> {
        let capacity = self.capacity;
        let s = self.state()?;
        check_batch(&s.net.arch, images, labels, n, capacity)?;
        s.model.forward(&s.net, images, n, Mode::Train);
        s.model.update_running_stats(&mut s.net);
        Ok(())
    }

    fn begin_morph(&mut self, state: MorphState) -> Result<()> {
        let s = self.state()?;
        state.check(&s.net)?;
        let sigmas = (0..s.net.arch.layers())
            .map(|l| FrozenSigma::of(&s.net, l))
            .collect();
        s.morph = Some(MorphPhase {
            state,
            sigmas,
            workspace: Workspace::default(),
            split_workspace: SplitWorkspace::default(),
            split: Vec::new(),
            prune: Vec::new(),
            grads: vec![Vec::new(); s.net.arch.layers()],
            scores: vec![Vec::new(); s.net.arch.layers()],
            prune_u: Vec::new(),
            joint_u: Vec::new(),
            cross_batch: Vec::new(),
            probs: Vec::new(),
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
        let joint = cfg.joint && cfg.method == MorphMethod::GaussNewton;
        let stats = self.on_morph_engine(images, labels, n, cfg.curvature, joint, |w, e| {
            morph_step(w, e, n, cfg)
        })?;
        if let Some(phase) = self.state()?.morph.as_mut() {
            phase.state.steps += 1;
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
        self.on_morph_engine(images, labels, n, curvature, false, |w, e| {
            score_step(w, e, n)
        })?;
        let phase = self
            .state()?
            .morph
            .as_ref()
            .ok_or_else(|| Error::backend("score_batch outside a morphism phase"))?;
        Ok(phase.scores.clone())
    }

    fn end_morph(&mut self) -> Result<MorphState> {
        let s = self.state()?;
        let phase = s
            .morph
            .take()
            .ok_or_else(|| Error::backend("end_morph outside a morphism phase"))?;
        Ok(phase.state)
    }
}
