//! Batch normalisation fused with the ReLU after it: batch statistics,
//! forward (train or eval), running-statistics update, and the backward pair
//! (parameter gradients, input gradient).
//!
//! A BN's four tensors (gamma, beta, running mean, running variance) sit
//! back to back in the parameter buffer, each [`stride`] long, and are bound
//! as one view; batch statistics are `[mean | var]` and parameter gradients
//! `[dgamma | dbeta]` with the same stride.

use crate::context::Gpu;
use crate::kernel::{aligned, need, Access, Kernel, Op, Res, View};
use sprout_core::arch::BnGeom;
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Distance between a BN's consecutive tensors for `channels` channels.
pub fn stride(channels: usize) -> usize {
    aligned(channels)
}

/// Where BN takes its statistics from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stats {
    /// The batch statistics of the last `stats` pass (train mode).
    Batch,
    /// The running statistics in the BN view (eval mode, frozen sigma).
    Running,
}

/// Pipelines of `gpu/shaders/batchnorm/`.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    stats: Kernel,
    forward: Kernel,
    running: Kernel,
    backward_params: Kernel,
    backward: Kernel,
}

fn check_params(g: &BnGeom, bn: &View, stats: &View) -> Result<()> {
    let st = stride(g.channels);
    need("BN parameters", bn, 3 * st + g.channels)?;
    need("BN statistics", stats, st + g.channels)
}

impl BatchNorm {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<BatchNorm> {
        let wg = [("WG", WG as f64)];
        Ok(BatchNorm {
            stats: Kernel::new(
                gpu,
                "bn stats",
                include_str!("../../shaders/batchnorm/stats.wgsl"),
                &[Uniform, Read, Write],
                &[],
                64,
            )?,
            forward: Kernel::new(
                gpu,
                "bn forward",
                include_str!("../../shaders/batchnorm/forward.wgsl"),
                &[Uniform, Read, Read, Read, Write],
                &wg,
                WG,
            )?,
            running: Kernel::new(
                gpu,
                "bn running",
                include_str!("../../shaders/batchnorm/running.wgsl"),
                &[Uniform, Read, Write, Read],
                &wg,
                WG,
            )?,
            backward_params: Kernel::new(
                gpu,
                "bn backward params",
                include_str!("../../shaders/batchnorm/backward_params.wgsl"),
                &[Uniform, Read, Read, Read, Read, Read, Write],
                &[],
                64,
            )?,
            backward: Kernel::new(
                gpu,
                "bn backward",
                include_str!("../../shaders/batchnorm/backward.wgsl"),
                &[Uniform, Read, Read, Read, Read, Read, Read, Write],
                &wg,
                WG,
            )?,
        })
    }

    /// Per-channel batch mean and biased variance of `y` into `stats`.
    pub fn stats(&self, gpu: &Gpu, g: &BnGeom, y: &View, stats: &View) -> Result<Op> {
        let len = g.n * g.channels * g.plane;
        need("BN input", y, len)?;
        need("BN statistics", stats, stride(g.channels) + g.channels)?;
        let w = [g.n, g.channels, g.plane, stride(g.channels)].map(|v| v as u32);
        self.stats.op(
            gpu,
            &[Res::Params(&w), Res::View(y), Res::View(stats)],
            g.channels,
        )
    }

    /// `a = relu(bn(y))` with the chosen statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        y: &View,
        bn: &View,
        stats: &View,
        from: Stats,
        a: &View,
    ) -> Result<Op> {
        let total = g.n * g.channels * g.plane;
        need("BN input", y, total)?;
        need("BN output", a, total)?;
        check_params(g, bn, stats)?;
        let w = [
            total,
            g.channels,
            g.plane,
            stride(g.channels),
            usize::from(from == Stats::Running),
        ]
        .map(|v| v as u32);
        let k = &self.forward;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(y),
                Res::View(bn),
                Res::View(stats),
                Res::View(a),
            ],
            k.groups_for(total),
        )
    }

    /// Moves the running statistics in `bn` toward `stats` (skipped on a
    /// non-finite `loss[0]`).
    pub fn update_running(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        stats: &View,
        bn: &View,
        loss: &View,
    ) -> Result<Op> {
        check_params(g, bn, stats)?;
        need("loss", loss, 1)?;
        let m = (g.n * g.plane) as f32;
        let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        let w = [
            g.channels as u32,
            stride(g.channels) as u32,
            unbias.to_bits(),
        ];
        let k = &self.running;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(stats),
                Res::View(bn),
                Res::View(loss),
            ],
            k.groups_for(g.channels),
        )
    }

    /// `[dgamma | dbeta]` into `grads` from the BN input `y`, output `a` and `da`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        y: &View,
        a: &View,
        da: &View,
        stats: &View,
        bn: &View,
        from: Stats,
        grads: &View,
    ) -> Result<Op> {
        let total = g.n * g.channels * g.plane;
        for (name, v) in [
            ("BN input", y),
            ("BN output", a),
            ("BN output gradient", da),
        ] {
            need(name, v, total)?;
        }
        check_params(g, bn, stats)?;
        need(
            "BN parameter gradients",
            grads,
            stride(g.channels) + g.channels,
        )?;
        let w = [
            g.n,
            g.channels,
            g.plane,
            stride(g.channels),
            usize::from(from == Stats::Running),
        ]
        .map(|v| v as u32);
        self.backward_params.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(y),
                Res::View(a),
                Res::View(da),
                Res::View(stats),
                Res::View(bn),
                Res::View(grads),
            ],
            g.channels,
        )
    }

    /// `dy` from `da`; with batch statistics it reads `[dgamma | dbeta]`
    /// from `grads` (written by [`BatchNorm::backward_params`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        y: &View,
        a: &View,
        da: &View,
        stats: &View,
        bn: &View,
        grads: &View,
        from: Stats,
        dy: &View,
    ) -> Result<Op> {
        let total = g.n * g.channels * g.plane;
        for (name, v) in [
            ("BN input", y),
            ("BN output", a),
            ("BN output gradient", da),
            ("BN input gradient", dy),
        ] {
            need(name, v, total)?;
        }
        check_params(g, bn, stats)?;
        need(
            "BN parameter gradients",
            grads,
            stride(g.channels) + g.channels,
        )?;
        let w = [
            total,
            g.channels,
            g.plane,
            stride(g.channels),
            usize::from(from == Stats::Running),
            g.n * g.plane,
        ]
        .map(|v| v as u32);
        let k = &self.backward;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(y),
                Res::View(a),
                Res::View(da),
                Res::View(stats),
                Res::View(bn),
                Res::View(grads),
                Res::View(dy),
            ],
            k.groups_for(total),
        )
    }
}
