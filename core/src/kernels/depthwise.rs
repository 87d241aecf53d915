//! Depthwise 3x3 convolution (pad 1, any stride), NCHW. Forward and backward.
//!
//! Strides 1 and 2 run direct vector kernels; other strides (and geometries
//! whose output size is not the usual `(in - 1) / stride + 1`) run the scalar
//! definition.
//!
//! Per channel, a chunk of samples is copied into one zero-bordered grid with
//! row stride `r`, the samples stacked vertically so that small planes still
//! give long vector runs. An output position `q` of the grid reads its tap `t`
//! at `q + off[t]`, so each tap is a contiguous shifted run and eight outputs
//! are one vector multiply-add per tap; the few grid positions that are not
//! outputs are computed and dropped.
//!
//! - Stride 1: the bordered plane has row stride `w + 2`, and samples share
//!   one zero row. The input gradient is the same kernel run on the bordered
//!   output gradient with the kernel flipped.
//! - Stride 2: the bordered plane is split into its four row/column parity
//!   phases (row stride `ow + 1`), so each tap reads one phase at a constant
//!   shift and no lane is wasted on skipped pixels. The input gradient is
//!   computed per phase (four, two, two and one taps) and interleaved back.
//! - Kernel gradient: nine lane-wise accumulators of `dy[q] * x[q + off[t]]`
//!   over the grid (zero wherever `q` is not an output), kept across the
//!   chunks of a channel and summed across lanes at the end.

use super::lanes::{self, round_up, Isa, Vf, L};
use crate::arch::DwGeom;
use crate::par::{self, SharedMut};
use alloc::vec::Vec;
use core::ops::Range;
use wide::f32x8;

/// Layout of the bordered grids of one channel's chunk of samples.
#[derive(Clone, Copy, Debug)]
struct Lay {
    s: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Row stride of every grid.
    r: usize,
    /// Grid rows per sample.
    rows: usize,
    /// Samples per chunk.
    m: usize,
    /// Length of one grid (one phase), with slack for the rounded-up vector runs.
    pl: usize,
}

impl Lay {
    fn new(g: &DwGeom, n: usize) -> Option<Self> {
        let (h, w) = g.in_hw;
        let (oh, ow) = g.out_hw;
        let s = g.stride;
        if h == 0 || w == 0 || !(s == 1 || s == 2) || oh != (h - 1) / s + 1 || ow != (w - 1) / s + 1
        {
            return None;
        }
        let (r, rows, target) = if s == 1 {
            (w + 2, h + 1, 2048)
        } else {
            (ow + 1, oh + 1, 1024)
        };
        let m = (target / (rows * r)).clamp(1, n.max(1));
        let pl = round_up(m * rows * r + 2 * r + 2, L) + L;
        Some(Lay {
            s,
            h,
            w,
            oh,
            ow,
            r,
            rows,
            m,
            pl,
        })
    }

    /// Grids holding the bordered input: one, or four parity phases.
    fn phases(&self) -> usize {
        self.s * self.s
    }

    /// Where tap `t = 3 * ky + kx` of output grid position 0 reads the input grids.
    fn taps(&self) -> [usize; 9] {
        core::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            if self.s == 1 {
                ky * self.r + kx
            } else {
                ((ky % 2) * 2 + kx % 2) * self.pl + (ky / 2) * self.r + kx / 2
            }
        })
    }

    /// Grid position of row `y`, column 0 of sample `s` on the output grid.
    fn at(&self, s: usize, y: usize) -> usize {
        (s * self.rows + y) * self.r
    }

    /// Output grid positions (rounded up to vectors) covering `k` samples' outputs.
    fn qv_out(&self, k: usize) -> usize {
        round_up((k * self.rows - 1) * self.r, L)
    }

    /// Grid positions (rounded up) covering `k` samples' whole parity phases.
    fn qv_all(&self, k: usize) -> usize {
        round_up(k * self.rows * self.r, L)
    }
}

/// Copies `k` planes of `hh x ww` (`src` plane `i` at `i * sstride`) into the
/// interior of a bordered grid: row `y` of sample `s` at `r + 1 + at(s, y)`.
#[inline(always)]
fn pad_plain<V: Vf>(
    lay: &Lay,
    src: &[f32],
    sstride: usize,
    k: usize,
    (hh, ww): (usize, usize),
    dst: &mut [f32],
) {
    for s in 0..k {
        let sp = &src[s * sstride..][..hh * ww];
        for y in 0..hh {
            let d = &mut dst[lay.r + 1 + lay.at(s, y)..][..ww];
            // SAFETY: both rows hold `ww` floats.
            unsafe { lanes::copy::<V>(sp[y * ww..].as_ptr(), d.as_mut_ptr(), ww) };
        }
    }
}

/// Splits one row into its even elements (`ev`) and odd elements (`od`).
#[inline(always)]
fn split_row<V: Vf>(xr: &[f32], ev: &mut [f32], od: &mut [f32]) {
    let w = xr.len();
    assert!(ev.len() >= w.div_ceil(2) && od.len() >= w / 2);
    let mut u = 0;
    while 2 * u + 2 * L <= w {
        // SAFETY: 2u + 16 <= w, so 16 floats of xr and 8 of ev and od are in bounds.
        unsafe {
            let (e, o) = V::deinterleave(
                V::load(xr.as_ptr().add(2 * u)),
                V::load(xr.as_ptr().add(2 * u + L)),
            );
            e.store(ev.as_mut_ptr().add(u));
            o.store(od.as_mut_ptr().add(u));
        }
        u += L;
    }
    for i in 2 * u..w {
        if i % 2 == 0 {
            ev[i / 2] = xr[i];
        } else {
            od[i / 2] = xr[i];
        }
    }
}

/// Inverse of [`split_row`].
#[inline(always)]
fn merge_row<V: Vf>(ev: &[f32], od: &[f32], xr: &mut [f32]) {
    let w = xr.len();
    assert!(ev.len() >= w.div_ceil(2) && od.len() >= w / 2);
    let mut u = 0;
    while 2 * u + 2 * L <= w {
        // SAFETY: as in split_row.
        unsafe {
            let (a, b) = V::interleave(V::load(ev.as_ptr().add(u)), V::load(od.as_ptr().add(u)));
            a.store(xr.as_mut_ptr().add(2 * u));
            b.store(xr.as_mut_ptr().add(2 * u + L));
        }
        u += L;
    }
    for i in 2 * u..w {
        xr[i] = if i % 2 == 0 { ev[i / 2] } else { od[i / 2] };
    }
}

/// Splits `k` input planes, bordered, into the four parity phases of `dst`
/// (phase `2 * (py % 2) + px % 2` of bordered pixel `(py, px)` at `(py / 2, px / 2)`).
#[inline(always)]
fn pad_phases<V: Vf>(lay: &Lay, src: &[f32], sstride: usize, k: usize, dst: &mut [f32]) {
    let (h, w, pl) = (lay.h, lay.w, lay.pl);
    for s in 0..k {
        let sp = &src[s * sstride..][..h * w];
        for iy in 0..h {
            // Bordered row py = iy + 1 is row py / 2 of the phases with a = py % 2.
            let py = iy + 1;
            let (a, j) = (py % 2, py / 2);
            let base = lay.at(s, j);
            let (pe, po) = dst[2 * a * pl..(2 * a + 2) * pl].split_at_mut(pl);
            // Even input columns land on odd bordered columns (phase b = 1),
            // odd ones on even bordered columns, one further right.
            split_row::<V>(
                &sp[iy * w..(iy + 1) * w],
                &mut po[base..],
                &mut pe[base + 1..],
            );
        }
    }
}

/// Copies `k` samples of grid outputs (`hh x ww` each) to dense planes of
/// `dst`, sample `i` at `start + i * dstride`.
#[inline(always)]
fn unpad_plain<V: Vf>(
    lay: &Lay,
    out: &[f32],
    (hh, ww): (usize, usize),
    k: usize,
    dst: SharedMut,
    start: usize,
    dstride: usize,
) {
    for s in 0..k {
        // SAFETY: the caller owns these planes.
        let d = unsafe { dst.slice(start + s * dstride, hh * ww) };
        for y in 0..hh {
            let o = &out[lay.at(s, y)..][..ww];
            // SAFETY: both rows hold `ww` floats.
            unsafe { lanes::copy::<V>(o.as_ptr(), d[y * ww..].as_mut_ptr(), ww) };
        }
    }
}

/// Inverse of [`pad_phases`] for the input gradient held per phase in `out`.
#[inline(always)]
fn unpad_phases<V: Vf>(
    lay: &Lay,
    out: &[f32],
    k: usize,
    dst: SharedMut,
    start: usize,
    dstride: usize,
) {
    let (h, w, pl) = (lay.h, lay.w, lay.pl);
    for s in 0..k {
        // SAFETY: the caller owns these planes.
        let d = unsafe { dst.slice(start + s * dstride, h * w) };
        for iy in 0..h {
            // Bordered row py = iy + 1 is row py / 2 of the phases with a = py % 2.
            let py = iy + 1;
            let (a, j) = (py % 2, py / 2);
            let base = lay.at(s, j);
            let pe = &out[2 * a * pl + base + 1..(2 * a + 1) * pl];
            let po = &out[(2 * a + 1) * pl + base..(2 * a + 2) * pl];
            merge_row::<V>(po, pe, &mut d[iy * w..(iy + 1) * w]);
        }
    }
}

/// `out[q] = sum_t wt[t] * src[q + offs[t]]` for `q < qv` (a multiple of [`L`]).
///
/// # Safety
/// `src + offs[t] + qv` and `out + qv` stay inside their buffers.
#[inline(always)]
unsafe fn corr<V: Vf, const NT: usize>(
    src: *const f32,
    offs: &[usize; NT],
    wt: &[f32; NT],
    out: *mut f32,
    qv: usize,
) {
    let w: [V; NT] = core::array::from_fn(|t| V::splat(wt[t]));
    let mut q = 0;
    // Three vectors, two partial sums each: six independent chains.
    while q + 3 * L <= qv {
        let mut a = [[V::zero(); 3]; 2];
        for t in 0..NT {
            let p = unsafe { src.add(offs[t] + q) };
            for j in 0..3 {
                a[t & 1][j] = V::fma(unsafe { V::load(p.add(j * L)) }, w[t], a[t & 1][j]);
            }
        }
        for j in 0..3 {
            unsafe { V::add(a[0][j], a[1][j]).store(out.add(q + j * L)) };
        }
        q += 3 * L;
    }
    while q < qv {
        let mut a = [V::zero(); 2];
        for t in 0..NT {
            a[t & 1] = V::fma(unsafe { V::load(src.add(offs[t] + q)) }, w[t], a[t & 1]);
        }
        unsafe { V::add(a[0], a[1]).store(out.add(q)) };
        q += L;
    }
}

/// `acc[t] += dy[q] * src[q + offs[t]]` lane-wise for `q < qv`.
///
/// # Safety
/// `src + offs[t] + qv` and `dy + qv` stay inside their buffers.
#[inline(always)]
unsafe fn kernel_grad<V: Vf>(
    src: *const f32,
    offs: &[usize; 9],
    dy: *const f32,
    qv: usize,
    acc: &mut [V; 9],
) {
    let mut q = 0;
    while q < qv {
        let d = unsafe { V::load(dy.add(q)) };
        for t in 0..9 {
            acc[t] = V::fma(d, unsafe { V::load(src.add(offs[t] + q)) }, acc[t]);
        }
        q += L;
    }
}

/// Shared arguments of the per-channel loops.
struct Job<'a> {
    lay: Lay,
    c: usize,
    n: usize,
    x: &'a [f32],
    k: &'a [f32],
}

impl Job<'_> {
    fn ip(&self) -> usize {
        self.lay.h * self.lay.w
    }
    fn op(&self) -> usize {
        self.lay.oh * self.lay.ow
    }
    /// The input planes of chunk `s0..s0 + k` of channel `ch`, bordered into `xb`.
    #[inline(always)]
    fn pad_input<V: Vf>(&self, ch: usize, s0: usize, k: usize, xb: &mut [f32]) {
        let (lay, ip) = (&self.lay, self.ip());
        let src = &self.x[(s0 * self.c + ch) * ip..];
        if lay.s == 1 {
            pad_plain::<V>(lay, src, self.c * ip, k, (lay.h, lay.w), xb);
        } else {
            pad_phases::<V>(lay, src, self.c * ip, k, xb);
        }
    }
    fn weights(&self, ch: usize) -> [f32; 9] {
        core::array::from_fn(|t| self.k[ch * 9 + t])
    }
    fn fwd_len(&self) -> usize {
        (self.lay.phases() + 1) * self.lay.pl
    }
    fn bwd_len(&self) -> usize {
        (2 * self.lay.phases() + 1) * self.lay.pl
    }
}

/// Forward for channels `chans`; `buf` holds [`Job::fwd_len`] zeros.
///
/// # Safety
/// Only this worker writes the output planes of `chans`.
#[inline(always)]
unsafe fn fwd_channels<V: Vf>(job: &Job, y: SharedMut, chans: Range<usize>, buf: &mut [f32]) {
    let lay = job.lay;
    let (xb, out) = buf.split_at_mut(lay.phases() * lay.pl);
    let taps = lay.taps();
    assert!(taps[8] + lay.qv_out(lay.m) <= xb.len() && lay.qv_out(lay.m) <= out.len());
    let (c, op) = (job.c, job.op());
    for ch in chans {
        let wt = job.weights(ch);
        let mut s0 = 0;
        while s0 < job.n {
            let k = lay.m.min(job.n - s0);
            job.pad_input::<V>(ch, s0, k, xb);
            unsafe { corr::<V, 9>(xb.as_ptr(), &taps, &wt, out.as_mut_ptr(), lay.qv_out(k)) };
            unpad_plain::<V>(
                &lay,
                out,
                (lay.oh, lay.ow),
                k,
                y,
                (s0 * c + ch) * op,
                c * op,
            );
            s0 += k;
        }
    }
}

/// Backward for channels `chans`; `buf` holds [`Job::bwd_len`] zeros.
///
/// # Safety
/// Only this worker writes the input-gradient planes and kernel gradients of `chans`.
#[inline(always)]
unsafe fn bwd_channels<V: Vf>(
    job: &Job,
    dy: &[f32],
    dx: Option<SharedMut>,
    dk: Option<SharedMut>,
    chans: Range<usize>,
    buf: &mut [f32],
) {
    let lay = job.lay;
    let (pl, r) = (lay.pl, lay.r);
    let ph = lay.phases();
    let taps = lay.taps();
    let qmax = lay.qv_out(lay.m).max(lay.qv_all(lay.m));
    assert!(buf.len() >= (2 * ph + 1) * pl && taps[8] + qmax <= ph * pl && 2 * r + 2 + qmax <= pl);
    let (c, ip, op) = (job.c, job.ip(), job.op());
    for ch in chans {
        let wt = job.weights(ch);
        let mut acc = [V::zero(); 9];
        let mut s0 = 0;
        while s0 < job.n {
            let k = lay.m.min(job.n - s0);
            if k < lay.m {
                // A short last chunk: clear what earlier chunks left past it,
                // which the rounded-up vector runs still read.
                buf.fill(0.0);
            }
            let (xb, rest) = buf.split_at_mut(ph * pl);
            let (dyb, out) = rest.split_at_mut(pl);
            if dk.is_some() {
                job.pad_input::<V>(ch, s0, k, xb);
            }
            pad_plain::<V>(
                &lay,
                &dy[(s0 * c + ch) * op..],
                c * op,
                k,
                (lay.oh, lay.ow),
                dyb,
            );
            // The output gradient on the output grid starts at r + 1.
            if dk.is_some() {
                unsafe {
                    kernel_grad::<V>(
                        xb.as_ptr(),
                        &taps,
                        dyb.as_ptr().add(r + 1),
                        lay.qv_out(k),
                        &mut acc,
                    )
                };
            }
            if let Some(dx) = dx {
                let (src, o) = (dyb.as_ptr(), out.as_mut_ptr());
                if lay.s == 1 {
                    let flip: [f32; 9] = core::array::from_fn(|t| wt[8 - t]);
                    unsafe { corr::<V, 9>(src, &taps, &flip, o, lay.qv_out(k)) };
                    unpad_plain::<V>(&lay, out, (lay.h, lay.w), k, dx, (s0 * c + ch) * ip, c * ip);
                } else {
                    // Phase (a, b) of the bordered input gradient gathers the
                    // taps with ky = a (mod 2), kx = b (mod 2): dy[j - ky / 2][i - kx / 2].
                    let q = lay.qv_all(k);
                    let (d0, d1, dr, drr) = (r + 1, r, 1, 0);
                    unsafe {
                        corr::<V, 4>(src, &[d0, d1, dr, drr], &[wt[0], wt[2], wt[6], wt[8]], o, q);
                        corr::<V, 2>(src, &[d0, dr], &[wt[1], wt[7]], o.add(pl), q);
                        corr::<V, 2>(src, &[d0, d1], &[wt[3], wt[5]], o.add(2 * pl), q);
                        corr::<V, 1>(src, &[d0], &[wt[4]], o.add(3 * pl), q);
                    }
                    unpad_phases::<V>(&lay, out, k, dx, (s0 * c + ch) * ip, c * ip);
                }
            }
            s0 += k;
        }
        if let Some(dk) = dk {
            for (t, a) in acc.iter().enumerate() {
                // SAFETY: channel ch's nine kernel entries are written only here.
                unsafe { dk.write(ch * 9 + t, a.sum()) };
            }
        }
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx {
    use super::*;

    /// # Safety
    /// As [`fwd_channels`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fwd(job: &Job, y: SharedMut, chans: Range<usize>, buf: &mut [f32]) {
        unsafe { fwd_channels::<lanes::Avx>(job, y, chans, buf) }
    }

    /// # Safety
    /// As [`bwd_channels`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bwd(
        job: &Job,
        dy: &[f32],
        dx: Option<SharedMut>,
        dk: Option<SharedMut>,
        chans: Range<usize>,
        buf: &mut [f32],
    ) {
        unsafe { bwd_channels::<lanes::Avx>(job, dy, dx, dk, chans, buf) }
    }
}

/// [`fwd_channels`] with the vector width of `isa`.
///
/// # Safety
/// As [`fwd_channels`]; `isa` was detected on this CPU.
unsafe fn fwd_on(isa: Isa, job: &Job, y: SharedMut, chans: Range<usize>, buf: &mut [f32]) {
    match isa {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { avx::fwd(job, y, chans, buf) },
        Isa::Portable => unsafe { fwd_channels::<f32x8>(job, y, chans, buf) },
    }
}

/// [`bwd_channels`] with the vector width of `isa`.
///
/// # Safety
/// As [`bwd_channels`]; `isa` was detected on this CPU.
unsafe fn bwd_on(
    isa: Isa,
    job: &Job,
    dy: &[f32],
    dx: Option<SharedMut>,
    dk: Option<SharedMut>,
    chans: Range<usize>,
    buf: &mut [f32],
) {
    match isa {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { avx::bwd(job, dy, dx, dk, chans, buf) },
        Isa::Portable => unsafe { bwd_channels::<f32x8>(job, dy, dx, dk, chans, buf) },
    }
}

/// One zeroed buffer of `len` per worker, allocated by the worker that uses it.
fn worker_bufs() -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    v.resize_with(par::threads(), Vec::new);
    v
}

/// `y = depthwise(x, k)` for `n` samples; `k` is `[channels, 1, 3, 3]`.
pub fn depthwise_forward(g: &DwGeom, n: usize, x: &[f32], k: &[f32], y: &mut [f32]) {
    forward_with(lanes::isa(), g, n, x, k, y);
}

fn forward_with(isa: Isa, g: &DwGeom, n: usize, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    assert!(x.len() >= n * c * ip && y.len() >= n * c * op && k.len() >= c * 9);
    let Some(lay) = Lay::new(g, n) else {
        return forward_scalar(g, n, x, k, y);
    };
    if n == 0 || c == 0 {
        return;
    }
    let job = Job { lay, c, n, x, k };
    let yp = SharedMut::new(y);
    let mut bufs = worker_bufs();
    par::for_each_part(c, &mut bufs, |chans, buf| {
        buf.resize(job.fwd_len(), 0.0);
        // SAFETY: each worker writes only the planes of its own channels; the
        // ISA was detected.
        unsafe { fwd_on(isa, &job, yp, chans, buf) }
    });
}

/// Backward of [`depthwise_forward`]: `dk` (overwritten, summed over the
/// batch) and, when given, `dx` (overwritten).
pub fn depthwise_backward(
    g: &DwGeom,
    n: usize,
    x: &[f32],
    k: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dk: &mut [f32],
) {
    backward_with(lanes::isa(), g, n, x, k, dy, dx, Some(dk));
}

/// Input gradient only of [`depthwise_forward`]: `dx` (overwritten), without
/// the kernel gradient (about half the work of [`depthwise_backward`]).
pub fn depthwise_backward_input(g: &DwGeom, n: usize, k: &[f32], dy: &[f32], dx: &mut [f32]) {
    backward_with(lanes::isa(), g, n, &[], k, dy, Some(dx), None);
}

fn backward_with(
    isa: Isa,
    g: &DwGeom,
    n: usize,
    x: &[f32],
    k: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dk: Option<&mut [f32]>,
) {
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    assert!(dy.len() >= n * c * op);
    if let Some(dk) = &dk {
        assert!(x.len() >= n * c * ip && dk.len() >= c * 9);
    }
    let Some(lay) = Lay::new(g, n) else {
        return backward_scalar(g, n, x, k, dy, dx, dk);
    };
    if n == 0 || c == 0 {
        if let Some(dk) = dk {
            dk[..c * 9].fill(0.0);
        }
        return;
    }
    let dxp = dx.map(|d| {
        assert!(d.len() >= n * c * ip);
        SharedMut::new(d)
    });
    let job = Job { lay, c, n, x, k };
    let dkp = dk.map(SharedMut::new);
    let mut bufs = worker_bufs();
    // Workers take whole channels so each kernel gradient has one writer.
    par::for_each_part(c, &mut bufs, |chans, buf| {
        buf.resize(job.bwd_len(), 0.0);
        // SAFETY: each worker writes only the planes and kernel gradients of
        // its own channels; the ISA was detected.
        unsafe { bwd_on(isa, &job, dy, dxp, dkp, chans, buf) }
    });
}

/// A group of planes of one channel at a time on the calling thread, with
/// buffers kept between calls: for passes that fuse a depthwise conv with
/// other per-plane work inside their own parallel loop (the estimator's
/// depthwise sigma). The planes of a group are stacked in one bordered grid,
/// as the batched kernels stack samples, so small planes still give long
/// vector runs.
#[derive(Debug)]
pub struct DwPlanes {
    geom: DwGeom,
    lay: Option<Lay>,
    group: usize,
    isa: Isa,
    fwd_buf: Vec<f32>,
    bwd_buf: Vec<f32>,
}

impl DwPlanes {
    /// For groups of at most `most` planes of `g` (its channel count is
    /// ignored); [`DwPlanes::group`] says how many one grid holds.
    pub fn new(g: &DwGeom, most: usize) -> Self {
        let geom = DwGeom { channels: 1, ..*g };
        let lay = Lay::new(&geom, most.max(1));
        DwPlanes {
            geom,
            lay,
            group: lay.map_or(1, |l| l.m),
            isa: lanes::isa(),
            fwd_buf: Vec::new(),
            bwd_buf: Vec::new(),
        }
    }

    /// Largest number of planes per call.
    pub fn group(&self) -> usize {
        self.group
    }

    /// `y = depthwise(x, k)` for `planes` (at most [`DwPlanes::group`])
    /// consecutive planes; `k` holds the channel's nine taps.
    pub fn forward(&mut self, planes: usize, x: &[f32], k: &[f32], y: &mut [f32]) {
        let g = &self.geom;
        assert!(planes <= self.group && k.len() >= 9);
        assert!(x.len() >= planes * g.in_plane() && y.len() >= planes * g.out_plane());
        let Some(lay) = self.lay else {
            return forward_scalar(g, planes, x, k, y);
        };
        let job = Job {
            lay,
            c: 1,
            n: planes,
            x,
            k,
        };
        // Pads write only the grid interior, so the zero borders last.
        self.fwd_buf.resize(job.fwd_len(), 0.0);
        let yp = SharedMut::new(y);
        // SAFETY: one channel, one writer; the ISA was detected.
        unsafe { fwd_on(self.isa, &job, yp, 0..1, &mut self.fwd_buf) }
    }

    /// Input gradient of [`DwPlanes::forward`] (overwritten).
    pub fn backward_input(&mut self, planes: usize, k: &[f32], dy: &[f32], dx: &mut [f32]) {
        let g = &self.geom;
        assert!(planes <= self.group && k.len() >= 9);
        assert!(dy.len() >= planes * g.out_plane() && dx.len() >= planes * g.in_plane());
        let Some(lay) = self.lay else {
            return backward_scalar(g, planes, &[], k, dy, Some(dx), None);
        };
        let job = Job {
            lay,
            c: 1,
            n: planes,
            x: &[],
            k,
        };
        self.bwd_buf.resize(job.bwd_len(), 0.0);
        let dxp = Some(SharedMut::new(dx));
        // SAFETY: one channel, one writer; the ISA was detected.
        unsafe { bwd_on(self.isa, &job, dy, dxp, None, 0..1, &mut self.bwd_buf) }
    }
}

/// The definition, for strides other than 1 and 2.
fn forward_scalar(g: &DwGeom, n: usize, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let s = g.stride as isize;
    let yp = SharedMut::new(y);
    par::for_each(n * c, |p| {
        let kr = &k[(p % c) * 9..(p % c) * 9 + 9];
        let xpl = &x[p * ip..(p + 1) * ip];
        // SAFETY: plane p is written only here.
        let ypl = unsafe { yp.slice(p * op, op) };
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0;
                for t in 0..9 {
                    let iy = oy as isize * s - 1 + (t / 3) as isize;
                    let ix = ox as isize * s - 1 + (t % 3) as isize;
                    if iy >= 0 && iy < ih && ix >= 0 && ix < iw {
                        acc += kr[t] * xpl[(iy * iw + ix) as usize];
                    }
                }
                ypl[oy * ow + ox] = acc;
            }
        }
    });
}

/// Backward of [`forward_scalar`].
fn backward_scalar(
    g: &DwGeom,
    n: usize,
    x: &[f32],
    k: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dk: Option<&mut [f32]>,
) {
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let s = g.stride as isize;
    let dxp = dx.map(|d| {
        assert!(d.len() >= n * c * ip);
        SharedMut::new(d)
    });
    let dkp = dk.map(SharedMut::new);
    par::for_each(c, |ch| {
        let mut gk = [0.0f32; 9];
        let kr = &k[ch * 9..ch * 9 + 9];
        for smp in 0..n {
            let p = smp * c + ch;
            let xpl = dkp.map(|_| &x[p * ip..(p + 1) * ip]);
            let dypl = &dy[p * op..(p + 1) * op];
            // SAFETY: plane p belongs to channel ch, handled only by this worker.
            let mut dxpl = dxp.map(|d| unsafe { d.slice(p * ip, ip) });
            if let Some(d) = dxpl.as_deref_mut() {
                d.fill(0.0);
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let gy = dypl[oy * ow + ox];
                    for t in 0..9 {
                        let iy = oy as isize * s - 1 + (t / 3) as isize;
                        let ix = ox as isize * s - 1 + (t % 3) as isize;
                        if iy >= 0 && iy < ih && ix >= 0 && ix < iw {
                            let xi = (iy * iw + ix) as usize;
                            if let Some(xpl) = xpl {
                                gk[t] += gy * xpl[xi];
                            }
                            if let Some(d) = dxpl.as_deref_mut() {
                                d[xi] += gy * kr[t];
                            }
                        }
                    }
                }
            }
        }
        if let Some(dkp) = dkp {
            for (i, v) in gk.iter().enumerate() {
                // SAFETY: channel ch's nine kernel entries are written only here.
                unsafe { dkp.write(ch * 9 + i, *v) };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn pseudo(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// The definition in f64: `y`, `dx` and `dk` for output gradient `dy`.
    fn direct(g: &DwGeom, n: usize, x: &[f32], k: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let (ih, iw) = g.in_hw;
        let (oh, ow) = g.out_hw;
        let c = g.channels;
        let mut y = vec![0.0; n * c * oh * ow];
        let mut dx = vec![0.0; n * c * ih * iw];
        let mut dk = vec![0.0; c * 9];
        for p in 0..n * c {
            let ch = p % c;
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = (p * oh + oy) * ow + ox;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy * g.stride + ky) as isize - 1;
                            let ix = (ox * g.stride + kx) as isize - 1;
                            if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                continue;
                            }
                            let i = (p * ih + iy as usize) * iw + ix as usize;
                            let kk = ch * 9 + ky * 3 + kx;
                            y[o] += x[i] as f64 * k[kk] as f64;
                            dx[i] += dy[o] as f64 * k[kk] as f64;
                            dk[kk] += dy[o] as f64 * x[i] as f64;
                        }
                    }
                }
            }
        }
        [y, dx, dk]
    }

    fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if lanes::isa() != Isa::Portable {
            v.push(lanes::isa());
        }
        v
    }

    /// `c` channels of `h x w` at `stride`, with the usual output size.
    fn geom(c: usize, stride: usize, h: usize, w: usize) -> DwGeom {
        DwGeom {
            channels: c,
            stride,
            in_hw: (h, w),
            out_hw: ((h - 1) / stride + 1, (w - 1) / stride + 1),
        }
    }

    /// Both instantiations agree with the definition on every small geometry.
    #[test]
    fn fast_paths_match_definition() {
        for stride in 1..=3 {
            for h in 1..=9 {
                for w in 1..=9 {
                    for (n, c) in [(1, 1), (2, 3), (3, 5), (1, 4), (3, 2)] {
                        let g = geom(c, stride, h, w);
                        let out_hw = g.out_hw;
                        let seed = h * 31 + w * 7 + n + c;
                        let x = pseudo(n * c * h * w, seed);
                        let k = pseudo(c * 9, seed + 1);
                        let dy = pseudo(n * c * out_hw.0 * out_hw.1, seed + 2);
                        let [y0, dx0, dk0] = direct(&g, n, &x, &k, &dy);
                        for isa in isas() {
                            let mut y = vec![f32::NAN; y0.len()];
                            forward_with(isa, &g, n, &x, &k, &mut y);
                            close("y", &y, &y0, 1e-5);
                            let mut dx = vec![f32::NAN; dx0.len()];
                            let mut dk = vec![f32::NAN; dk0.len()];
                            backward_with(isa, &g, n, &x, &k, &dy, Some(&mut dx), Some(&mut dk));
                            close("dx", &dx, &dx0, 1e-5);
                            close("dk", &dk, &dk0, 1e-5);
                            let mut dk2 = vec![f32::NAN; dk0.len()];
                            backward_with(isa, &g, n, &x, &k, &dy, None, Some(&mut dk2));
                            assert_eq!(dk, dk2);
                            let mut dx2 = vec![f32::NAN; dx0.len()];
                            backward_with(isa, &g, n, &[], &k, &dy, Some(&mut dx2), None);
                            assert_eq!(dx, dx2);
                        }
                    }
                }
            }
        }
    }

    /// One reused [`DwPlanes`], forward and backward calls interleaved, in
    /// full and short groups, gives the definition plane by plane.
    #[test]
    fn planes_in_groups_match_definition() {
        for stride in 1..=3 {
            for (h, w) in [(1, 1), (2, 3), (4, 4), (5, 7), (8, 8), (16, 16), (9, 2)] {
                let (n, c) = (5, 2);
                let g = geom(c, stride, h, w);
                let (ip, op) = (h * w, g.out_hw.0 * g.out_hw.1);
                // Channel-major planes: channel ch's n planes are consecutive.
                let x = pseudo(c * n * ip, h + w);
                let k = pseudo(c * 9, stride);
                let dy = pseudo(c * n * op, 3 * h + w);
                let g1 = DwGeom { channels: 1, ..g };
                for most in [1, 3, n] {
                    let mut conv = DwPlanes::new(&g, most);
                    assert!(conv.group() >= 1 && conv.group() <= most);
                    for ch in 0..c {
                        let kc = &k[ch * 9..ch * 9 + 9];
                        let [y0, dx0, _] = direct(
                            &g1,
                            n,
                            &x[ch * n * ip..(ch + 1) * n * ip],
                            kc,
                            &dy[ch * n * op..(ch + 1) * n * op],
                        );
                        let mut y = vec![f32::NAN; n * op];
                        let mut dx = vec![f32::NAN; n * ip];
                        let mut s0 = 0;
                        while s0 < n {
                            let m = conv.group().min(n - s0);
                            let xs = &x[(ch * n + s0) * ip..(ch * n + s0 + m) * ip];
                            conv.forward(m, xs, kc, &mut y[s0 * op..(s0 + m) * op]);
                            let dys = &dy[(ch * n + s0) * op..(ch * n + s0 + m) * op];
                            conv.backward_input(m, kc, dys, &mut dx[s0 * ip..(s0 + m) * ip]);
                            s0 += m;
                        }
                        close("y", &y, &y0, 1e-5);
                        close("dx", &dx, &dx0, 1e-5);
                    }
                }
            }
        }
    }

    /// Batches longer than one chunk, with a short last chunk.
    #[test]
    fn chunked_batches_match_definition() {
        for &(h, stride, n, c) in &[
            (2, 1, 700, 3),
            (3, 2, 130, 2),
            (5, 2, 67, 2),
            (4, 1, 101, 2),
            (32, 2, 3, 2),
        ] {
            let g = geom(c, stride, h, h);
            let out_hw = g.out_hw;
            let x = pseudo(n * c * h * h, 5);
            let k = pseudo(c * 9, 6);
            let dy = pseudo(n * c * out_hw.0 * out_hw.1, 7);
            let [y0, dx0, dk0] = direct(&g, n, &x, &k, &dy);
            for isa in isas() {
                let mut y = vec![f32::NAN; y0.len()];
                forward_with(isa, &g, n, &x, &k, &mut y);
                close("y", &y, &y0, 1e-5);
                let mut dx = vec![f32::NAN; dx0.len()];
                let mut dk = vec![f32::NAN; dk0.len()];
                backward_with(isa, &g, n, &x, &k, &dy, Some(&mut dx), Some(&mut dk));
                close("dx", &dx, &dx0, 1e-5);
                close("dk", &dk, &dk0, 1e-4);
                let mut dx2 = vec![f32::NAN; dx0.len()];
                backward_with(isa, &g, n, &[], &k, &dy, Some(&mut dx2), None);
                assert_eq!(dx, dx2);
            }
        }
    }
}
