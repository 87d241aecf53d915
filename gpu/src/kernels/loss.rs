//! Softmax cross-entropy (mean over the batch) and the batch totals that
//! are the only values a step sends back to the host.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::error::Result;

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Pipelines of `gpu/shaders/loss/`.
#[derive(Debug, Clone)]
pub struct Loss {
    softmax_xent: Kernel,
    reduce: Kernel,
}

impl Loss {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Loss> {
        Ok(Loss {
            softmax_xent: Kernel::new(
                gpu,
                "softmax cross-entropy",
                include_str!("../../shaders/loss/softmax_xent.wgsl"),
                &[Uniform, Read, Read, Write, Write],
                &[("WG", WG as f64)],
                WG,
            )?,
            reduce: Kernel::new(
                gpu,
                "loss reduce",
                include_str!("../../shaders/loss/reduce.wgsl"),
                &[Uniform, Read, Write],
                &[],
                64,
            )?,
        })
    }

    /// `dlogits = (softmax - onehot) / n` and per-row `(loss, correct)` into `rows`.
    /// `labels` holds u32 values.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_xent(
        &self,
        gpu: &Gpu,
        n: usize,
        classes: usize,
        logits: &View,
        labels: &View,
        dlogits: &View,
        rows: &View,
    ) -> Result<Op> {
        need("logits", logits, n * classes)?;
        need("logit gradients", dlogits, n * classes)?;
        need("labels", labels, n)?;
        need("per-row losses", rows, 2 * n)?;
        let w = [n as u32, classes as u32];
        let k = &self.softmax_xent;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(logits),
                Res::View(labels),
                Res::View(dlogits),
                Res::View(rows),
            ],
            k.groups_for(n),
        )
    }

    /// `out = (mean loss, correct count)` from `rows`.
    pub fn reduce(&self, gpu: &Gpu, n: usize, rows: &View, out: &View) -> Result<Op> {
        need("per-row losses", rows, 2 * n)?;
        need("batch totals", out, 2)?;
        self.reduce.op(
            gpu,
            &[Res::Params(&[n as u32]), Res::View(rows), Res::View(out)],
            1,
        )
    }
}
