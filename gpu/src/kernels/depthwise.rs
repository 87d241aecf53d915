//! Depthwise 3x3 convolution (pad 1): forward, input gradient and kernel gradient.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::arch::DwGeom;
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Pipelines of `gpu/shaders/depthwise/`.
#[derive(Debug, Clone)]
pub struct Depthwise {
    forward: Kernel,
    backward_input: Kernel,
    backward_weight: Kernel,
}

fn words(g: &DwGeom, n: usize) -> [u32; 7] {
    [
        n, g.channels, g.stride, g.in_hw.0, g.in_hw.1, g.out_hw.0, g.out_hw.1,
    ]
    .map(|v| v as u32)
}

fn planes(g: &DwGeom) -> (usize, usize) {
    (g.in_hw.0 * g.in_hw.1, g.out_hw.0 * g.out_hw.1)
}

fn check(g: &DwGeom, n: usize, x: &View, k: &View, y: &View) -> Result<()> {
    let (ip, op) = planes(g);
    need("depthwise input", x, n * g.channels * ip)?;
    need("depthwise kernel", k, g.channels * 9)?;
    need("depthwise output", y, n * g.channels * op)
}

impl Depthwise {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Depthwise> {
        let wg = [("WG", WG as f64)];
        let acc = [Uniform, Read, Read, Write];
        Ok(Depthwise {
            forward: Kernel::new(
                gpu,
                "depthwise forward",
                include_str!("../../shaders/depthwise/forward.wgsl"),
                &acc,
                &wg,
                WG,
            )?,
            backward_input: Kernel::new(
                gpu,
                "depthwise backward input",
                include_str!("../../shaders/depthwise/backward_input.wgsl"),
                &acc,
                &wg,
                WG,
            )?,
            backward_weight: Kernel::new(
                gpu,
                "depthwise backward weight",
                include_str!("../../shaders/depthwise/backward_weight.wgsl"),
                &acc,
                &[],
                64,
            )?,
        })
    }

    /// `y = depthwise(x, k)`.
    pub fn forward(
        &self,
        gpu: &Gpu,
        g: &DwGeom,
        n: usize,
        x: &View,
        k: &View,
        y: &View,
    ) -> Result<Op> {
        check(g, n, x, k, y)?;
        let kern = &self.forward;
        kern.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(x),
                Res::View(k),
                Res::View(y),
            ],
            kern.groups_for(n * g.channels * planes(g).1),
        )
    }

    /// `dx` (overwritten) from `dy`.
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        g: &DwGeom,
        n: usize,
        dy: &View,
        k: &View,
        dx: &View,
    ) -> Result<Op> {
        check(g, n, dx, k, dy)?;
        let kern = &self.backward_input;
        kern.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(dy),
                Res::View(k),
                Res::View(dx),
            ],
            kern.groups_for(n * g.channels * planes(g).0),
        )
    }

    /// `dk` (overwritten, summed over the batch).
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        g: &DwGeom,
        n: usize,
        x: &View,
        dy: &View,
        dk: &View,
    ) -> Result<Op> {
        check(g, n, x, dk, dy)?;
        self.backward_weight.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(x),
                Res::View(dy),
                Res::View(dk),
            ],
            g.channels * 9,
        )
    }
}
