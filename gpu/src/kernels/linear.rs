//! Fully connected layer `out = f W^T + b`: forward, input gradient, and the
//! weight and bias gradients.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Shape of a linear layer applied to `n` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearGeom {
    /// Rows (samples).
    pub n: usize,
    /// Inputs per row.
    pub features: usize,
    /// Outputs per row.
    pub classes: usize,
}

impl LinearGeom {
    fn words(&self) -> [u32; 3] {
        [self.n, self.features, self.classes].map(|v| v as u32)
    }
}

/// Pipelines of `gpu/shaders/linear/`.
#[derive(Debug, Clone)]
pub struct Linear {
    forward: Kernel,
    backward_input: Kernel,
    backward_weight: Kernel,
}

impl Linear {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Linear> {
        let wg = [("WG", WG as f64)];
        let k = |name, src, acc: &[Access]| Kernel::new(gpu, name, src, acc, &wg, WG);
        Ok(Linear {
            forward: k(
                "linear forward",
                include_str!("../../shaders/linear/forward.wgsl"),
                &[Uniform, Read, Read, Read, Write],
            )?,
            backward_input: k(
                "linear backward input",
                include_str!("../../shaders/linear/backward_input.wgsl"),
                &[Uniform, Read, Read, Write],
            )?,
            backward_weight: k(
                "linear backward weight",
                include_str!("../../shaders/linear/backward_weight.wgsl"),
                &[Uniform, Read, Read, Write, Write],
            )?,
        })
    }

    fn check(g: &LinearGeom, f: &View, w: &View, out: &View) -> Result<()> {
        need("linear input", f, g.n * g.features)?;
        need("linear weight", w, g.classes * g.features)?;
        need("linear output", out, g.n * g.classes)
    }

    /// Records `out = f W^T + b` (`f` `[n, features]`, `w` `[classes, features]`, `b` `[classes]`).
    pub fn forward(
        &self,
        gpu: &Gpu,
        g: &LinearGeom,
        f: &View,
        w: &View,
        b: &View,
        out: &View,
    ) -> Result<Op> {
        Self::check(g, f, w, out)?;
        need("linear bias", b, g.classes)?;
        let k = &self.forward;
        k.op(
            gpu,
            &[
                Res::Params(&g.words()),
                Res::View(f),
                Res::View(w),
                Res::View(b),
                Res::View(out),
            ],
            k.groups_for(g.n * g.classes),
        )
    }

    /// `df = dout W` (overwritten).
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        g: &LinearGeom,
        dout: &View,
        w: &View,
        df: &View,
    ) -> Result<Op> {
        Self::check(g, df, w, dout)?;
        let k = &self.backward_input;
        k.op(
            gpu,
            &[
                Res::Params(&g.words()),
                Res::View(dout),
                Res::View(w),
                Res::View(df),
            ],
            k.groups_for(g.n * g.features),
        )
    }

    /// `dw = dout^T f`, `db = sum(dout)` (overwritten).
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        g: &LinearGeom,
        f: &View,
        dout: &View,
        dw: &View,
        db: &View,
    ) -> Result<Op> {
        Self::check(g, f, dw, dout)?;
        need("linear bias gradient", db, g.classes)?;
        let k = &self.backward_weight;
        k.op(
            gpu,
            &[
                Res::Params(&g.words()),
                Res::View(f),
                Res::View(dout),
                Res::View(dw),
                Res::View(db),
            ],
            k.groups_for(g.classes * g.features + g.classes),
        )
    }
}
