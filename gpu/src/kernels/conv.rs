//! 2-D convolution (groups 1, no bias): forward, input gradient and weight gradient.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::arch::ConvGeom;
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

/// Channels each forward (output) or input-gradient (input) invocation computes.
const CO_TILE: usize = 4;
/// Pixels of a row each forward or input-gradient invocation computes (`PX_TILE`).
const PX_TILE: usize = 4;
const WG: u32 = 64;

/// Pipelines of `gpu/shaders/conv/`.
#[derive(Debug, Clone)]
pub struct Conv {
    forward: Kernel,
    backward_input: Kernel,
    backward_weight: Kernel,
}

fn words(g: &ConvGeom, n: usize) -> [u32; 10] {
    [
        n, g.cin, g.cout, g.kernel, g.stride, g.pad, g.in_hw.0, g.in_hw.1, g.out_hw.0, g.out_hw.1,
    ]
    .map(|v| v as u32)
}

fn check(g: &ConvGeom, n: usize, x: &View, w: &View, y: &View) -> Result<()> {
    need("conv input", x, n * g.cin * g.in_plane())?;
    need("conv kernel", w, g.cout * g.patch())?;
    need("conv output", y, n * g.cout * g.out_plane())
}

impl Conv {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Conv> {
        let tiled = [("WG", WG as f64), ("PX_TILE", PX_TILE as f64)];
        Ok(Conv {
            forward: Kernel::new(
                gpu,
                "conv forward",
                include_str!("../../shaders/conv/forward.wgsl"),
                &[Uniform, Read, Read, Write],
                &tiled,
                WG,
            )?,
            backward_input: Kernel::new(
                gpu,
                "conv backward input",
                include_str!("../../shaders/conv/backward_input.wgsl"),
                &[Uniform, Read, Read, Write],
                &tiled,
                WG,
            )?,
            backward_weight: Kernel::new(
                gpu,
                "conv backward weight",
                include_str!("../../shaders/conv/backward_weight.wgsl"),
                &[Uniform, Read, Read, Write],
                &[],
                64,
            )?,
        })
    }

    /// `y = conv(x, w)` for `n` samples.
    pub fn forward(
        &self,
        gpu: &Gpu,
        g: &ConvGeom,
        n: usize,
        x: &View,
        w: &View,
        y: &View,
    ) -> Result<Op> {
        check(g, n, x, w, y)?;
        let tiles = g.cout.div_ceil(CO_TILE) * g.out_hw.0 * g.out_hw.1.div_ceil(PX_TILE);
        let k = &self.forward;
        k.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(x),
                Res::View(w),
                Res::View(y),
            ],
            k.groups_for(n * tiles),
        )
    }

    /// `dx` (overwritten) from `dy`.
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        g: &ConvGeom,
        n: usize,
        dy: &View,
        w: &View,
        dx: &View,
    ) -> Result<Op> {
        check(g, n, dx, w, dy)?;
        let k = &self.backward_input;
        k.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(dy),
                Res::View(w),
                Res::View(dx),
            ],
            k.groups_for(n * g.cin.div_ceil(CO_TILE) * g.in_hw.0 * g.in_hw.1.div_ceil(PX_TILE)),
        )
    }

    /// `dw` (overwritten, summed over the batch) from `x` and `dy`.
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        g: &ConvGeom,
        n: usize,
        x: &View,
        dy: &View,
        dw: &View,
    ) -> Result<Op> {
        check(g, n, x, dw, dy)?;
        self.backward_weight.op(
            gpu,
            &[
                Res::Params(&words(g, n)),
                Res::View(x),
                Res::View(dy),
                Res::View(dw),
            ],
            g.cout * g.patch(),
        )
    }
}
