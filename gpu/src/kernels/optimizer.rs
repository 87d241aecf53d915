//! Optimizers on the GPU: SGD with Nesterov momentum and weight decay over the
//! flat parameter buffer, Adam over the flat morphism parameters, and the
//! optional trust region on theta. Their hyper-parameters live in small
//! uniform buffers rewritten before each step.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::error::Result;
use sprout_core::optim::{Adam, Sgd};

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Words of the SGD uniform (`Hyper` in `sgd.wgsl`).
pub fn sgd_words(s: &Sgd) -> [u32; 4] {
    [
        s.lr.to_bits(),
        s.momentum.to_bits(),
        s.weight_decay.to_bits(),
        u32::from(s.nesterov),
    ]
}

/// Settings of one morphism step, as the `Hyper` uniform of the Adam,
/// trust-region, EMA and joint cross-term kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MorphHyper {
    /// Adam's settings for theta.
    pub adam: Adam,
    /// 1-based Adam step.
    pub t: u32,
    /// EMA weight of the estimates.
    pub ema_alpha: f32,
    /// Whether this batch initialises the moving averages.
    pub ema_first: bool,
    /// Trust region `|theta[c]| <= theta_max * |w_in[c]|` (`None`: unbounded).
    pub theta_max: Option<f32>,
    /// Whether this batch initialises the joint cross terms: on the phase's
    /// first batch and on the first with the joint estimate on.
    pub cross_first: bool,
}

impl MorphHyper {
    /// Words of the uniform (padded to a multiple of 16 bytes).
    pub const WORDS: usize = 12;

    /// The uniform's words: bias-corrected Adam rates, then the EMA and trust-region settings and the flags.
    pub fn words(&self) -> [u32; Self::WORDS] {
        let a = &self.adam;
        let c1 = 1.0 - a.beta1.powf(self.t as f32);
        let c2 = 1.0 - a.beta2.powf(self.t as f32);
        [
            (a.lr / c1).to_bits(),
            c2.to_bits(),
            a.beta1.to_bits(),
            a.beta2.to_bits(),
            a.eps.to_bits(),
            self.ema_alpha.to_bits(),
            u32::from(self.ema_first),
            self.theta_max.unwrap_or(-1.0).to_bits(),
            u32::from(self.cross_first),
            0,
            0,
            0,
        ]
    }
}

impl Gpu {
    /// A uniform buffer of `words` u32 words.
    pub fn uniform(&self, label: &str, words: usize) -> Result<wgpu::Buffer> {
        self.scoped(&format!("allocating {label}"), || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (words.max(4) * 4) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })
    }

    /// Rewrites a uniform buffer before the next submission.
    pub fn write_uniform(&self, buf: &wgpu::Buffer, words: &[u32]) {
        self.queue.write_buffer(buf, 0, bytemuck::cast_slice(words));
    }
}

/// Pipelines of `gpu/shaders/optimizer/`.
#[derive(Debug, Clone)]
pub struct Optimizer {
    sgd: Kernel,
    adam: Kernel,
    trust_region: Kernel,
}

impl Optimizer {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Optimizer> {
        let wg = [("WG", WG as f64)];
        Ok(Optimizer {
            sgd: Kernel::new(
                gpu,
                "sgd",
                include_str!("../../shaders/optimizer/sgd.wgsl"),
                &[Uniform, Read, Read, Read, Write, Write],
                &wg,
                WG,
            )?,
            adam: Kernel::new(
                gpu,
                "adam",
                concat!(
                    include_str!("../../shaders/optimizer/morph_hyper.wgsl"),
                    include_str!("../../shaders/optimizer/adam.wgsl")
                ),
                &[Uniform, Read, Read, Write, Write, Write],
                &wg,
                WG,
            )?,
            trust_region: Kernel::new(
                gpu,
                "trust region",
                concat!(
                    include_str!("../../shaders/optimizer/morph_hyper.wgsl"),
                    include_str!("../../shaders/optimizer/trust_region.wgsl")
                ),
                &[Uniform, Uniform, Read, Read, Write],
                &wg,
                WG,
            )?,
        })
    }

    /// One SGD step on every entry of `params` whose `mask` is 1.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd(
        &self,
        gpu: &Gpu,
        hyper: &wgpu::Buffer,
        mask: &View,
        grads: &View,
        loss: &View,
        params: &View,
        momentum: &View,
    ) -> Result<Op> {
        let n = params.len;
        for (name, v) in [("mask", mask), ("gradients", grads), ("momentum", momentum)] {
            need(name, v, n)?;
        }
        need("loss", loss, 1)?;
        let k = &self.sgd;
        k.op(
            gpu,
            &[
                Res::Uniform(hyper),
                Res::View(mask),
                Res::View(grads),
                Res::View(loss),
                Res::View(params),
                Res::View(momentum),
            ],
            k.groups_for(n),
        )
    }

    /// One Adam step on all of `theta` with moments `m`, `v`.
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        &self,
        gpu: &Gpu,
        hyper: &wgpu::Buffer,
        grad: &View,
        loss: &View,
        theta: &View,
        m: &View,
        v: &View,
    ) -> Result<Op> {
        let n = theta.len;
        for (name, b) in [("theta gradient", grad), ("Adam m", m), ("Adam v", v)] {
            need(name, b, n)?;
        }
        need("loss", loss, 1)?;
        let k = &self.adam;
        k.op(
            gpu,
            &[
                Res::Uniform(hyper),
                Res::View(grad),
                Res::View(loss),
                Res::View(theta),
                Res::View(m),
                Res::View(v),
            ],
            k.groups_for(n),
        )
    }

    /// Scales each of the `channels` rows of `theta` (each `fan` long) back to
    /// at most `theta_max * w_norms[c]` (a no-op when the hyper has none).
    #[allow(clippy::too_many_arguments)]
    pub fn trust_region(
        &self,
        gpu: &Gpu,
        hyper: &wgpu::Buffer,
        channels: usize,
        fan: usize,
        w_norms: &View,
        loss: &View,
        theta: &View,
    ) -> Result<Op> {
        need("theta", theta, channels * fan)?;
        need("kernel norms", w_norms, channels)?;
        need("loss", loss, 1)?;
        let w = [channels as u32, fan as u32];
        let k = &self.trust_region;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::Uniform(hyper),
                Res::View(w_norms),
                Res::View(loss),
                Res::View(theta),
            ],
            k.groups_for(channels),
        )
    }
}
