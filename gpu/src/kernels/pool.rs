//! 2x2 max-pool (stride 2, floor) and global average pool, forward and backward.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 256;

/// Pipelines of `gpu/shaders/pool/`.
#[derive(Debug, Clone)]
pub struct Pool {
    max_forward: Kernel,
    max_backward: Kernel,
    avg_forward: Kernel,
    avg_backward: Kernel,
}

impl Pool {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Pool> {
        let wg = [("WG", WG as f64)];
        let k = |name, src, acc: &[Access]| Kernel::new(gpu, name, src, acc, &wg, WG);
        Ok(Pool {
            max_forward: k(
                "max-pool forward",
                include_str!("../../shaders/pool/max_forward.wgsl"),
                &[Uniform, Read, Write],
            )?,
            max_backward: k(
                "max-pool backward",
                include_str!("../../shaders/pool/max_backward.wgsl"),
                &[Uniform, Read, Read, Write],
            )?,
            avg_forward: k(
                "average-pool forward",
                include_str!("../../shaders/pool/avg_forward.wgsl"),
                &[Uniform, Read, Write],
            )?,
            avg_backward: k(
                "average-pool backward",
                include_str!("../../shaders/pool/avg_backward.wgsl"),
                &[Uniform, Read, Write],
            )?,
        })
    }

    /// `a = maxpool2x2(h)` over `planes` planes of `hw`.
    pub fn max_forward(
        &self,
        gpu: &Gpu,
        planes: usize,
        hw: (usize, usize),
        h: &View,
        a: &View,
    ) -> Result<Op> {
        need("max-pool input", h, planes * hw.0 * hw.1)?;
        let out = planes * (hw.0 / 2) * (hw.1 / 2);
        need("max-pool output", a, out)?;
        let w = [planes, hw.0, hw.1].map(|v| v as u32);
        let k = &self.max_forward;
        k.op(
            gpu,
            &[Res::Params(&w), Res::View(h), Res::View(a)],
            k.groups_for(out),
        )
    }

    /// `dh` (overwritten): each output gradient to the first maximum of its window.
    pub fn max_backward(
        &self,
        gpu: &Gpu,
        planes: usize,
        hw: (usize, usize),
        h: &View,
        da: &View,
        dh: &View,
    ) -> Result<Op> {
        let len = planes * hw.0 * hw.1;
        need("max-pool input", h, len)?;
        need("max-pool input gradient", dh, len)?;
        need(
            "max-pool output gradient",
            da,
            planes * (hw.0 / 2) * (hw.1 / 2),
        )?;
        let w = [planes, hw.0, hw.1].map(|v| v as u32);
        let k = &self.max_backward;
        k.op(
            gpu,
            &[Res::Params(&w), Res::View(h), Res::View(da), Res::View(dh)],
            k.groups_for(planes * hw.0.div_ceil(2) * hw.1.div_ceil(2)),
        )
    }

    /// `f[p] = mean of plane p of h`.
    pub fn avg_forward(
        &self,
        gpu: &Gpu,
        planes: usize,
        plane: usize,
        h: &View,
        f: &View,
    ) -> Result<Op> {
        need("average-pool input", h, planes * plane)?;
        need("average-pool output", f, planes)?;
        let w = [planes, plane].map(|v| v as u32);
        let k = &self.avg_forward;
        k.op(
            gpu,
            &[Res::Params(&w), Res::View(h), Res::View(f)],
            k.groups_for(planes),
        )
    }

    /// `dh = df / plane` over each plane.
    pub fn avg_backward(
        &self,
        gpu: &Gpu,
        planes: usize,
        plane: usize,
        df: &View,
        dh: &View,
    ) -> Result<Op> {
        need("average-pool output gradient", df, planes)?;
        need("average-pool input gradient", dh, planes * plane)?;
        let w = [planes, plane].map(|v| v as u32);
        let k = &self.avg_backward;
        k.op(
            gpu,
            &[Res::Params(&w), Res::View(df), Res::View(dh)],
            k.groups_for(planes * plane),
        )
    }
}
