//! 2-D convolution (groups 1, no bias): forward, input gradient and weight gradient.
//!
//! Kernels up to 3x3 with stride 1 or 2 take register-tiled paths: the
//! forward (and the stride-1 input gradient, as a forward over a flipped
//! kernel) reads a kernel packed by a pre-pass into vec4s of output
//! channels; the weight gradient accumulates tiles over chunks of the batch
//! into a scratch buffer that a second pass sums. Other shapes take the
//! generic kernels.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use sprout_core::arch::ConvGeom;
use sprout_core::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use Access::{Read, Uniform, Write};

/// Channels each generic forward (output) or input-gradient (input) invocation computes.
const CO_TILE: usize = 4;
/// Pixels of a row each generic forward or input-gradient invocation computes.
const PX_TILE: usize = 4;
const WG: u32 = 64;
/// Invocations the weight gradient aims for per layer (chunks x tiles).
const WEIGHT_LANES: usize = 1024;
/// Output channels per tiled invocation (the packed kernel's padding).
const CO_BLOCK: usize = 8;
/// Input channels per weight-gradient invocation.
const CI_BLOCK: usize = 8;

/// Which tiled pipeline, with its specialisation constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tiled {
    /// Forward: kernel size, output rows per invocation.
    Forward { k: usize, py: usize },
    /// Weight gradient: kernel size.
    Weight { k: usize },
}

/// Scratch buffers shared by every op these pipelines record; the ops of a
/// step run in order, so one packed kernel and one set of partial sums
/// at a time is enough.
#[derive(Debug, Default)]
struct Scratch {
    packed: Option<View>,
    partial: Option<View>,
}

/// Pipelines of `gpu/shaders/conv/`.
#[derive(Debug, Clone)]
pub struct Conv {
    generic_forward: Kernel,
    generic_backward_input: Kernel,
    generic_backward_weight: Kernel,
    pack: Kernel,
    reduce: Kernel,
    tiled: Arc<Mutex<HashMap<Tiled, Kernel>>>,
    scratch: Arc<Mutex<Scratch>>,
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

/// Whether the tiled kernels cover this geometry.
fn tiled(g: &ConvGeom) -> bool {
    (g.kernel == 1 || g.kernel == 3) && g.stride == 1
}

impl Conv {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Conv> {
        let tiled = [("WG", WG as f64), ("PX_TILE", PX_TILE as f64)];
        Ok(Conv {
            generic_forward: Kernel::new(
                gpu,
                "conv forward",
                include_str!("../../shaders/conv/generic_forward.wgsl"),
                &[Uniform, Read, Read, Write],
                &tiled,
                WG,
            )?,
            generic_backward_input: Kernel::new(
                gpu,
                "conv backward input",
                include_str!("../../shaders/conv/generic_backward_input.wgsl"),
                &[Uniform, Read, Read, Write],
                &tiled,
                WG,
            )?,
            generic_backward_weight: Kernel::new(
                gpu,
                "conv backward weight",
                include_str!("../../shaders/conv/generic_backward_weight.wgsl"),
                &[Uniform, Read, Read, Write],
                &[],
                64,
            )?,
            pack: Kernel::new(
                gpu,
                "conv pack",
                include_str!("../../shaders/conv/pack.wgsl"),
                &[Uniform, Read, Write],
                &[("WG", 256.0)],
                256,
            )?,
            reduce: Kernel::new(
                gpu,
                "conv reduce",
                include_str!("../../shaders/conv/reduce.wgsl"),
                &[Uniform, Read, Write],
                &[("WG", 256.0)],
                256,
            )?,
            tiled: Arc::default(),
            scratch: Arc::default(),
        })
    }

    /// The tiled pipeline for `key`, built on first use.
    fn kernel(&self, gpu: &Gpu, key: Tiled) -> Result<Kernel> {
        let mut cache = self.tiled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = cache.get(&key) {
            return Ok(k.clone());
        }
        let k = match key {
            Tiled::Forward { k, py } => Kernel::new(
                gpu,
                "conv forward tiled",
                include_str!("../../shaders/conv/forward.wgsl"),
                &[Uniform, Read, Read, Write],
                &[("WG", WG as f64), ("K", k as f64), ("PY", py as f64)],
                WG,
            )?,
            Tiled::Weight { k } => Kernel::new(
                gpu,
                "conv backward weight tiled",
                include_str!("../../shaders/conv/backward_weight.wgsl"),
                &[Uniform, Read, Read, Write],
                &[("WG", WG as f64), ("K", k as f64)],
                WG,
            )?,
        };
        cache.insert(key, k.clone());
        Ok(k)
    }

    /// A scratch view of at least `len` values (`packed` or partial sums).
    fn scratch(&self, gpu: &Gpu, packed: bool, len: usize) -> Result<View> {
        let mut s = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = if packed {
            &mut s.packed
        } else {
            &mut s.partial
        };
        if let Some(v) = slot.as_ref().filter(|v| v.len >= len) {
            return Ok(v.clone());
        }
        let v = gpu.buffer(
            if packed {
                "conv packed kernel"
            } else {
                "conv partial sums"
            },
            len.next_power_of_two(),
        )?;
        *slot = Some(v.clone());
        Ok(v)
    }

    /// Packs `w` and records the tiled forward of geometry `f` (`flip`: the
    /// input gradient of the transposed geometry).
    #[allow(clippy::too_many_arguments)]
    fn tiled_forward(
        &self,
        gpu: &Gpu,
        f: &ConvGeom,
        pad: i32,
        n: usize,
        x: &View,
        w: &View,
        y: &View,
        flip: bool,
    ) -> Result<Op> {
        let py = match f.out_hw.0 {
            0..=1 => 1,
            2..=3 => 2,
            _ => 4,
        };
        let coutp = f.cout.div_ceil(CO_BLOCK) * CO_BLOCK;
        let kk = f.kernel * f.kernel;
        let packed = self.scratch(gpu, true, f.cin * kk * coutp)?;
        let pack = self.pack.op(
            gpu,
            &[
                Res::Params(&[
                    f.cin as u32,
                    f.cout as u32,
                    kk as u32,
                    coutp as u32,
                    u32::from(flip),
                ]),
                Res::View(w),
                Res::View(&packed),
            ],
            self.pack.groups_for(f.cin * kk * coutp),
        )?;
        let k = self.kernel(gpu, Tiled::Forward { k: f.kernel, py })?;
        let (ty, tx) = (f.out_hw.0.div_ceil(py), f.out_hw.1.div_ceil(4));
        let co_tiles = coutp / CO_BLOCK;
        let conv = k.op(
            gpu,
            &[
                Res::Params(&[
                    n as u32,
                    f.cin as u32,
                    f.cout as u32,
                    pad as u32,
                    f.in_hw.0 as u32,
                    f.in_hw.1 as u32,
                    f.out_hw.0 as u32,
                    f.out_hw.1 as u32,
                    ty as u32,
                    tx as u32,
                    (coutp / 4) as u32,
                    co_tiles as u32,
                ]),
                Res::View(x),
                Res::View(&packed),
                Res::View(y),
            ],
            k.groups_for(co_tiles * n * ty * tx),
        )?;
        Ok(pack.then(conv))
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
        if tiled(g) {
            return self.tiled_forward(gpu, g, g.pad as i32, n, x, w, y, false);
        }
        let tiles = g.cout.div_ceil(CO_TILE) * g.out_hw.0 * g.out_hw.1.div_ceil(PX_TILE);
        let k = &self.generic_forward;
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
        if tiled(g) {
            // A stride-1 input gradient is a convolution of dy with the
            // flipped, transposed kernel, padded by k - 1 - pad.
            let t = ConvGeom {
                cin: g.cout,
                cout: g.cin,
                kernel: g.kernel,
                stride: 1,
                pad: 0,
                in_hw: g.out_hw,
                out_hw: g.in_hw,
            };
            let pad = g.kernel as i32 - 1 - g.pad as i32;
            return self.tiled_forward(gpu, &t, pad, n, dy, w, dx, true);
        }
        let k = &self.generic_backward_input;
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
        if !tiled(g) {
            return self.generic_backward_weight.op(
                gpu,
                &[
                    Res::Params(&words(g, n)),
                    Res::View(x),
                    Res::View(dy),
                    Res::View(dw),
                ],
                g.cout * g.patch(),
            );
        }
        let (co_tiles, ci_tiles) = (g.cout.div_ceil(CO_BLOCK), g.cin.div_ceil(CI_BLOCK));
        let tiles = co_tiles * ci_tiles * g.kernel;
        let rows = n * g.out_hw.0;
        let chunk_rows = (rows * tiles)
            .div_ceil(WEIGHT_LANES)
            .max(32usize.div_ceil(g.out_hw.1))
            .clamp(1, rows.max(1));
        let chunks = rows.div_ceil(chunk_rows).max(1);
        let ts = CO_BLOCK * CI_BLOCK * g.kernel;
        let partial = self.scratch(gpu, false, tiles * chunks * ts)?;
        let k = self.kernel(gpu, Tiled::Weight { k: g.kernel })?;
        let sums = k.op(
            gpu,
            &[
                Res::Params(&[
                    n as u32,
                    g.cin as u32,
                    g.cout as u32,
                    g.pad as u32,
                    g.in_hw.0 as u32,
                    g.in_hw.1 as u32,
                    g.out_hw.0 as u32,
                    g.out_hw.1 as u32,
                    chunk_rows as u32,
                    chunks as u32,
                    ci_tiles as u32,
                    co_tiles as u32,
                ]),
                Res::View(x),
                Res::View(dy),
                Res::View(&partial),
            ],
            k.groups_for(tiles * chunks),
        )?;
        let reduce = self.reduce.op(
            gpu,
            &[
                Res::Params(&[
                    g.cin as u32,
                    g.cout as u32,
                    g.kernel as u32,
                    chunks as u32,
                    ci_tiles as u32,
                ]),
                Res::View(&partial),
                Res::View(dw),
            ],
            self.reduce.groups_for(g.cout * g.patch()),
        )?;
        Ok(sums.then(reduce))
    }
}
