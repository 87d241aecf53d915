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
use sprout_core::engine::Mode;
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

/// Workgroup size of the elementwise kernels (forward, backward).
const WG: u32 = 256;

/// Preludes of the one- and four-values-per-invocation variants.
const PRELUDES: [&str; 2] = [
    include_str!("../../shaders/scalar.wgsl"),
    include_str!("../../shaders/vec4.wgsl"),
];

/// Which variant serves `g`: four values per invocation where planes are
/// multiples of 4 (so a vec4 never spans two channels).
fn vec(g: &BnGeom) -> usize {
    usize::from(g.plane.is_multiple_of(4))
}

/// Workgroups for `total` values at `per` values per invocation.
fn groups(total: usize, per: usize) -> usize {
    total.div_ceil(per).div_ceil(WG as usize)
}

/// Distance between a BN's consecutive tensors for `channels` channels.
pub fn stride(channels: usize) -> usize {
    aligned(channels)
}

/// Pipelines of `gpu/shaders/batchnorm/`.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    stats: [Kernel; 2],
    forward: [Kernel; 2],
    running: Kernel,
    backward_params: [Kernel; 2],
    backward: [Kernel; 2],
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
        let both = |name: &'static str, src: &str, access: &[Access], wg: &[(&str, f64)], size| {
            let k = |pre: &str| Kernel::new(gpu, name, &format!("{pre}\n{src}"), access, wg, size);
            Ok::<_, sprout_core::Error>([k(PRELUDES[0])?, k(PRELUDES[1])?])
        };
        Ok(BatchNorm {
            stats: both(
                "bn stats",
                include_str!("../../shaders/batchnorm/stats.wgsl"),
                &[Uniform, Read, Write],
                &[],
                64,
            )?,
            forward: both(
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
            backward_params: both(
                "bn backward params",
                include_str!("../../shaders/batchnorm/backward_params.wgsl"),
                &[Uniform, Read, Read, Read, Read, Read, Write],
                &[],
                64,
            )?,
            backward: both(
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
        self.stats[vec(g)].op(
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
        mode: Mode,
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
            usize::from(mode == Mode::Eval),
        ]
        .map(|v| v as u32);
        let v = vec(g);
        self.forward[v].op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(y),
                Res::View(bn),
                Res::View(stats),
                Res::View(a),
            ],
            groups(total, 1 + 3 * v),
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
        mode: Mode,
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
            usize::from(mode == Mode::Eval),
        ]
        .map(|v| v as u32);
        self.backward_params[vec(g)].op(
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
        mode: Mode,
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
            usize::from(mode == Mode::Eval),
            g.n * g.plane,
        ]
        .map(|v| v as u32);
        let v = vec(g);
        self.backward[v].op(
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
            groups(total, 1 + 3 * v),
        )
    }
}
