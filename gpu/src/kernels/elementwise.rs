//! Elementwise arithmetic on whole buffers.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 256;

/// Pipelines of `gpu/shaders/elementwise/`.
#[derive(Debug, Clone)]
pub struct Elementwise {
    sub: Kernel,
}

impl Elementwise {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Elementwise> {
        Ok(Elementwise {
            sub: Kernel::new(
                gpu,
                "sub",
                include_str!("../../shaders/elementwise/sub.wgsl"),
                &[Uniform, Read, Read, Write],
                &[("WG", WG as f64)],
                WG,
            )?,
        })
    }

    /// `out = a - b` on the first `len` values.
    pub fn sub(&self, gpu: &Gpu, len: usize, a: &View, b: &View, out: &View) -> Result<Op> {
        for (name, v) in [("minuend", a), ("subtrahend", b), ("difference", out)] {
            need(name, v, len)?;
        }
        let k = &self.sub;
        k.op(
            gpu,
            &[
                Res::Params(&[len as u32]),
                Res::View(a),
                Res::View(b),
                Res::View(out),
            ],
            k.groups_for(len),
        )
    }
}
