//! The splitting matrix's products (sprout-core's `splitting`): its
//! curvature weights, and the elementwise scaling between the products' two convs.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use crate::kernels::batchnorm::stride;
use sprout_core::arch::BnGeom;
use sprout_core::error::Result;
use sprout_core::splitting::SOFTPLUS_BETA;

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Pipelines of `gpu/shaders/splitting/`.
#[derive(Debug, Clone)]
pub struct Splitting {
    curvature: Kernel,
    scale_by: Kernel,
}

impl Splitting {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Splitting> {
        let wg = [("WG", WG as f64)];
        Ok(Splitting {
            curvature: Kernel::new(
                gpu,
                "splitting curvature",
                include_str!("../../shaders/splitting/curvature.wgsl"),
                &[Uniform, Read, Read, Read, Write],
                &wg,
                WG,
            )?,
            scale_by: Kernel::new(
                gpu,
                "scale by",
                include_str!("../../shaders/splitting/scale_by.wgsl"),
                &[Uniform, Read, Write],
                &wg,
                WG,
            )?,
        })
    }

    /// `m = g * scale^2 * relu''(scale * y + shift)`, BN `bn` at its running statistics.
    pub fn curvature(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        grad: &View,
        y: &View,
        bn: &View,
        m: &View,
    ) -> Result<Op> {
        let total = g.n * g.channels * g.plane;
        for (name, v) in [
            ("BN-ReLU output gradient", grad),
            ("pre-activation", y),
            ("curvature weights", m),
        ] {
            need(name, v, total)?;
        }
        let st = stride(g.channels);
        need("BN parameters", bn, 3 * st + g.channels)?;
        let w = [
            total as u32,
            g.channels as u32,
            g.plane as u32,
            st as u32,
            SOFTPLUS_BETA.to_bits(),
        ];
        let k = &self.curvature;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(grad),
                Res::View(y),
                Res::View(bn),
                Res::View(m),
            ],
            k.groups_for(total),
        )
    }

    /// `t *= m` on the first `len` values.
    pub fn scale_by(&self, gpu: &Gpu, len: usize, m: &View, t: &View) -> Result<Op> {
        need("weights", m, len)?;
        need("scaled values", t, len)?;
        let k = &self.scale_by;
        k.op(
            gpu,
            &[Res::Params(&[len as u32]), Res::View(m), Res::View(t)],
            k.groups_for(len),
        )
    }
}
