//! Depthwise 3x3 convolution (pad 1): forward, input gradient and kernel gradient.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::arch::DwGeom;
use sprout_core::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use Access::{Read, Uniform, Write};

const WG: u32 = 256;
/// Invocations the kernel gradient aims for (channels x chunks).
const WEIGHT_LANES: usize = 1024;

/// Pipelines of `gpu/shaders/depthwise/`.
#[derive(Debug, Clone)]
pub struct Depthwise {
    forward: Kernel,
    backward_input: Kernel,
    reduce: Kernel,
    /// Kernel-gradient pipelines by stride, built on first use.
    backward_weight: Arc<Mutex<HashMap<usize, Kernel>>>,
    /// Partial sums of the kernel gradient, shared by every op (ops run in order).
    partial: Arc<Mutex<Option<View>>>,
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
            reduce: Kernel::new(
                gpu,
                "depthwise reduce",
                include_str!("../../shaders/depthwise/reduce.wgsl"),
                &[Uniform, Read, Write],
                &[("WG", 256.0)],
                256,
            )?,
            backward_weight: Arc::default(),
            partial: Arc::default(),
        })
    }

    fn weight_kernel(&self, gpu: &Gpu, stride: usize) -> Result<Kernel> {
        let mut cache = self
            .backward_weight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = cache.get(&stride) {
            return Ok(k.clone());
        }
        let k = Kernel::new(
            gpu,
            "depthwise backward weight",
            include_str!("../../shaders/depthwise/backward_weight.wgsl"),
            &[Uniform, Read, Read, Write],
            &[("WG", WG as f64), ("S", stride as f64)],
            WG,
        )?;
        cache.insert(stride, k.clone());
        Ok(k)
    }

    fn partial(&self, gpu: &Gpu, len: usize) -> Result<View> {
        let mut slot = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = slot.as_ref().filter(|v| v.len >= len) {
            return Ok(v.clone());
        }
        let v = gpu.buffer("depthwise partial sums", len.next_power_of_two())?;
        *slot = Some(v.clone());
        Ok(v)
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
        let rows = n * g.out_hw.0;
        let chunk_rows = (rows * g.channels)
            .div_ceil(WEIGHT_LANES)
            .max(32usize.div_ceil(g.out_hw.1.max(1)))
            .clamp(1, rows.max(1));
        let chunks = rows.div_ceil(chunk_rows).max(1);
        let partial = self.partial(gpu, g.channels * chunks * 9)?;
        let k = self.weight_kernel(gpu, g.stride)?;
        let w = [
            n, g.channels, g.in_hw.0, g.in_hw.1, g.out_hw.0, g.out_hw.1, chunk_rows, chunks,
        ]
        .map(|v| v as u32);
        let sums = k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(x),
                Res::View(dy),
                Res::View(&partial),
            ],
            k.groups_for(g.channels * chunks),
        )?;
        let reduce = self.reduce.op(
            gpu,
            &[
                Res::Params(&[g.channels as u32, chunks as u32]),
                Res::View(&partial),
                Res::View(dk),
            ],
            self.reduce.groups_for(g.channels * 9),
        )?;
        Ok(sums.then(reduce))
    }
}
