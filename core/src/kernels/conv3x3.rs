//! Direct 3x3, stride-1, pad-1 convolution (groups = 1, no bias), NCHW, as an
//! implicit GEMM: no im2col matrix and no packing.
//!
//! Each input plane of a sample is copied into a zero-bordered grid with row
//! stride `r = w + 2`. An output pixel `q = oy * r + ox` of the same grid then
//! reads its 3x3 window at `q + ky * r + kx`, so every tap is a contiguous,
//! shifted run of the padded plane and eight outputs are one vector FMA. The
//! two extra columns per row are computed and dropped.
//!
//! - Forward: tiles of 4 output channels x 3 vectors of 8 pixels held in
//!   registers, looping over input channels and taps (weights broadcast).
//! - Input gradient: the same kernel on the zero-bordered output gradient with
//!   the kernels flipped and the channel roles swapped (a full correlation).
//! - Weight gradient: per (4 output channels, input channel, kernel row),
//!   3 taps x 4 channels of lane-wise dot products over the plane, kept in
//!   8-lane accumulators across samples and summed across lanes at the end.
//!
//! With the `std` feature on x86_64 the kernels run with AVX-512F (16 lanes,
//! tiles of 4 vectors) or AVX2 + FMA (8 lanes) when the CPU has them (runtime
//! detection: the crate is built for baseline x86_64, where the portable
//! 8-lane code compiles to pairs of SSE operations); otherwise the portable
//! `wide::f32x8` instantiation of the same code runs. Grids are padded to a
//! multiple of 16 positions for all of them. Every output pixel sums its taps
//! in the same order on every path, so the forward and input-gradient results
//! differ between paths only where fused multiply-adds round differently;
//! the weight gradient's lane sums are folded in a different order at 16 lanes.

#[cfg(all(feature = "std", target_arch = "x86_64"))]
use super::lanes::has_avx512;
use super::lanes::{copy, isa, round_up, Isa, Vf, L, MAX_LANES};
use super::Scratch;
use crate::par::{self, SharedMut};
use wide::f32x8;

/// Output channels per register tile.
const CB: usize = 4;
/// Pixel vectors per register tile in the forward kernel at 8 lanes (16
/// registers of AVX2 hold 8 accumulators, the loads and a broadcast).
const NV: usize = 2;
/// Pixel vectors per register tile at 16 lanes (32 registers of AVX-512: 16
/// accumulators).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
const NV512: usize = 4;

/// Which instantiation of the kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The portable 8-lane code, or AVX2 + FMA where [`isa`] finds it.
    Lanes8(Isa),
    /// AVX-512F, 16 lanes.
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx512,
}

/// The fastest path this CPU runs.
fn path() -> Path {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if has_avx512() {
        return Path::Avx512;
    }
    Path::Lanes8(isa())
}

/// Layout of the zero-bordered planes of a chunk of samples: per channel,
/// the samples are stacked vertically with one zero row between them, so a
/// chunk is one tall image and small planes still give long vector runs.
#[derive(Clone, Copy, Debug)]
struct Grid {
    h: usize,
    w: usize,
    /// Row stride: `w + 2`.
    r: usize,
    /// Output grid positions computed per channel, a multiple of [`MAX_LANES`].
    qv: usize,
    /// Stride between channels of the output grid.
    os: usize,
    /// Stride between channels of the bordered input (with slack for the last vectors' reads).
    p: usize,
}

impl Grid {
    /// Room for `m` samples.
    fn new(h: usize, w: usize, m: usize) -> Self {
        let r = w + 2;
        let os = round_up((m * (h + 1) - 1) * r, MAX_LANES);
        // Reads reach os - 1 + 2r + 2; the gradient view starts at r + 1.
        let p = round_up(os + 2 * r + 2, MAX_LANES);
        Grid {
            h,
            w,
            r,
            qv: os,
            os,
            p,
        }
    }
    /// The same layout, computing only the first `k` samples.
    fn with_count(&self, k: usize) -> Self {
        Grid {
            qv: round_up((k * (self.h + 1) - 1) * self.r, MAX_LANES).min(self.os),
            ..*self
        }
    }
    /// Offset of row `y` of sample `s` in a bordered plane.
    fn row(&self, s: usize, y: usize) -> usize {
        (1 + s * (self.h + 1) + y) * self.r + 1
    }
    fn taps(&self) -> [usize; 9] {
        let r = self.r;
        [0, 1, 2, r, r + 1, r + 2, 2 * r, 2 * r + 1, 2 * r + 2]
    }
}

/// Samples per chunk: enough to fill about 6 KiB per channel plane.
fn chunk_samples(h: usize, w: usize, n: usize, parts: usize) -> usize {
    (1536 / ((h + 1) * (w + 2))).clamp(1, n.div_ceil(parts).max(1))
}

/// The sample kernels compiled for one x86-64 instruction set: module
/// `$module` holds `fwd_sample` and `dw_sample` on lanes `$lanes`, with
/// `$nv` vectors per forward tile, in functions enabling `$features`.
macro_rules! isa_kernels {
    ($module:ident, $lanes:ident, $nv:ident, $features:literal) => {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        mod $module {
            use crate::kernels::lanes::$lanes;

            #[doc = concat!("# Safety\nAs [`super::fwd_sample`], and the CPU has ", $features, ".")]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn fwd_sample(
                cin: usize,
                blocks: usize,
                g: &super::Grid,
                xp: &[f32],
                wk: &[f32],
                out: &mut [f32],
            ) {
                unsafe { super::fwd_sample::<$lanes, { super::$nv }>(cin, blocks, g, xp, wk, out) }
            }

            #[doc = concat!("# Safety\nAs [`super::dw_sample`], and the CPU has ", $features, ".")]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn dw_sample(
                cin: usize,
                blocks: usize,
                g: &super::Grid,
                xp: &[f32],
                dyp: &[f32],
                acc: &mut [f32],
            ) {
                unsafe { super::dw_sample::<$lanes>(cin, blocks, g, xp, dyp, acc) }
            }
        }
    };
}

isa_kernels!(avx, Avx, NV, "avx2,fma");
isa_kernels!(avx512, Avx512, NV512, "avx512f");

/// One register tile: `CB` output channels x `N` vectors at grid position `q0`.
///
/// # Safety
/// `xp` holds `cin` bordered planes of `g.p`, `wk` holds `cin * 9 * CB`
/// weights, `out` holds `CB` rows of `g.os`, and `q0 + N * V::LANES <= g.qv`.
#[inline(always)]
unsafe fn fwd_tile<V: Vf, const N: usize>(
    cin: usize,
    p: usize,
    taps: &[usize; 9],
    xp: *const f32,
    wk: *const f32,
    q0: usize,
    out: *mut f32,
    qv: usize,
) {
    let mut acc = [[V::zero(); N]; CB];
    for ci in 0..cin {
        let xb = unsafe { xp.add(ci * p + q0) };
        let wb = unsafe { wk.add(ci * 9 * CB) };
        for (t, &off) in taps.iter().enumerate() {
            let mut xv = [V::zero(); N];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = unsafe { V::load(xb.add(off + j * V::LANES)) };
            }
            for (c, row) in acc.iter_mut().enumerate() {
                let wv = V::splat(unsafe { *wb.add(t * CB + c) });
                for (a, &x) in row.iter_mut().zip(&xv) {
                    *a = V::fma(x, wv, *a);
                }
            }
        }
    }
    for (c, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            unsafe { a.store(out.add(c * qv + q0 + j * V::LANES)) };
        }
    }
}

/// Correlates `cin` bordered planes `xp` with the blocked 3x3 weights `wk`
/// (`[blocks][cin][9][CB]`), writing `blocks * CB` rows of `g.os` grid outputs
/// in tiles of `N` vectors (the last ones of one).
///
/// # Safety
/// Nothing beyond the slice lengths, which are checked.
#[inline(always)]
unsafe fn fwd_sample<V: Vf, const N: usize>(
    cin: usize,
    blocks: usize,
    g: &Grid,
    xp: &[f32],
    wk: &[f32],
    out: &mut [f32],
) {
    assert!(
        xp.len() >= cin * g.p
            && wk.len() >= blocks * cin * 9 * CB
            && out.len() >= blocks * CB * g.os
            && g.qv.is_multiple_of(V::LANES)
    );
    let taps = g.taps();
    let nvec = g.qv / V::LANES;
    let (xp, wk, out) = (xp.as_ptr(), wk.as_ptr(), out.as_mut_ptr());
    let wstride = cin * 9 * CB;
    let orow = CB * g.os;
    let mut j = 0;
    // Pixel blocks outside, channel blocks inside: the input window stays in L1.
    while j + N <= nvec {
        for b in 0..blocks {
            unsafe {
                fwd_tile::<V, N>(
                    cin,
                    g.p,
                    &taps,
                    xp,
                    wk.add(b * wstride),
                    j * V::LANES,
                    out.add(b * orow),
                    g.os,
                )
            };
        }
        j += N;
    }
    while j < nvec {
        for b in 0..blocks {
            unsafe {
                fwd_tile::<V, 1>(
                    cin,
                    g.p,
                    &taps,
                    xp,
                    wk.add(b * wstride),
                    j * V::LANES,
                    out.add(b * orow),
                    g.os,
                )
            };
        }
        j += 1;
    }
}

/// Adds one sample's weight-gradient contributions, per lane (folded to
/// [`L`] lanes), to `acc` (`[blocks * CB][cin][9][L]`). `dyp` holds
/// `blocks * CB` bordered planes of the output gradient (rows past `cout` zero).
///
/// # Safety
/// Nothing beyond the slice lengths, which are checked.
#[inline(always)]
unsafe fn dw_sample<V: Vf>(
    cin: usize,
    blocks: usize,
    g: &Grid,
    xp: &[f32],
    dyp: &[f32],
    acc: &mut [f32],
) {
    assert!(
        xp.len() >= cin * g.p
            && dyp.len() >= blocks * CB * g.p
            && acc.len() >= blocks * CB * cin * 9 * L
            && g.qv.is_multiple_of(V::LANES)
    );
    let (p, r, qv) = (g.p, g.r, g.qv);
    let (xp, dyp, accp) = (xp.as_ptr(), dyp.as_ptr(), acc.as_mut_ptr());
    for b in 0..blocks {
        // The output gradient on the output grid: zero on the two extra columns.
        let dg: [*const f32; CB] =
            core::array::from_fn(|c| unsafe { dyp.add((b * CB + c) * p + r + 1) });
        for ci in 0..cin {
            for ky in 0..3 {
                let xr = unsafe { xp.add(ci * p + ky * r) };
                let mut a = [[V::zero(); 3]; CB];
                let mut q = 0;
                while q < qv {
                    let x: [V; 3] = core::array::from_fn(|kx| unsafe { V::load(xr.add(q + kx)) });
                    for c in 0..CB {
                        let d = unsafe { V::load(dg[c].add(q)) };
                        for kx in 0..3 {
                            a[c][kx] = V::fma(d, x[kx], a[c][kx]);
                        }
                    }
                    q += V::LANES;
                }
                for c in 0..CB {
                    for kx in 0..3 {
                        let dst =
                            unsafe { accp.add((((b * CB + c) * cin + ci) * 9 + ky * 3 + kx) * L) };
                        unsafe { a[c][kx].add_to8(dst) };
                    }
                }
            }
        }
    }
}

fn run_fwd(
    path: Path,
    cin: usize,
    blocks: usize,
    g: &Grid,
    xp: &[f32],
    wk: &[f32],
    out: &mut [f32],
) {
    match path {
        // SAFETY: slice lengths are checked inside; the ISA was detected.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Path::Avx512 => unsafe { avx512::fwd_sample(cin, blocks, g, xp, wk, out) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Path::Lanes8(Isa::Avx2) => unsafe { avx::fwd_sample(cin, blocks, g, xp, wk, out) },
        Path::Lanes8(Isa::Portable) => unsafe {
            fwd_sample::<f32x8, NV>(cin, blocks, g, xp, wk, out)
        },
    }
}

fn run_dw(
    path: Path,
    cin: usize,
    blocks: usize,
    g: &Grid,
    xp: &[f32],
    dyp: &[f32],
    acc: &mut [f32],
) {
    match path {
        // SAFETY: slice lengths are checked inside; the ISA was detected.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Path::Avx512 => unsafe { avx512::dw_sample(cin, blocks, g, xp, dyp, acc) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Path::Lanes8(Isa::Avx2) => unsafe { avx::dw_sample(cin, blocks, g, xp, dyp, acc) },
        Path::Lanes8(Isa::Portable) => unsafe { dw_sample::<f32x8>(cin, blocks, g, xp, dyp, acc) },
    }
}

/// Blocks `w` (`[cout][cin][3][3]`) as `[cout / CB][cin][9][CB]`, zero past `cout`.
fn block_weights(w: &[f32], cout: usize, cin: usize, wk: &mut [f32]) {
    let blocks = cout.div_ceil(CB);
    for b in 0..blocks {
        for ci in 0..cin {
            for t in 0..9 {
                for c in 0..CB {
                    let co = b * CB + c;
                    wk[((b * cin + ci) * 9 + t) * CB + c] = if co < cout {
                        w[(co * cin + ci) * 9 + t]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Blocks the flipped, transposed kernels for the input gradient:
/// `[cin / CB][cout][9][CB]` with entry `w[co][ci][8 - t]`.
fn block_weights_flipped(w: &[f32], cout: usize, cin: usize, wk: &mut [f32]) {
    let blocks = cin.div_ceil(CB);
    for b in 0..blocks {
        for co in 0..cout {
            for t in 0..9 {
                for c in 0..CB {
                    let ci = b * CB + c;
                    wk[((b * cout + co) * 9 + t) * CB + c] = if ci < cin {
                        w[(co * cin + ci) * 9 + 8 - t]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Copies a row with inline vector moves: rows are short (2 to 32 floats
/// here), and a library call per row costs more than the copy.
#[inline(always)]
fn copy_row(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY: both slices hold `src.len()` floats and do not overlap.
    unsafe { copy::<f32x8>(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Copies `k` samples of `c` planes of `h x w` into the interiors of the bordered planes.
fn pad_planes(g: &Grid, c: usize, k: usize, src: &[f32], dst: &mut [f32]) {
    let (h, w, p) = (g.h, g.w, g.p);
    for s in 0..k {
        for ch in 0..c {
            let sp = &src[(s * c + ch) * h * w..][..h * w];
            let d = &mut dst[ch * p..(ch + 1) * p];
            for y in 0..h {
                copy_row(&sp[y * w..(y + 1) * w], &mut d[g.row(s, y)..][..w]);
            }
        }
    }
}

/// Copies `k` samples of `c` channels of grid outputs back to dense `h x w` planes.
fn unpad_outputs(g: &Grid, c: usize, k: usize, src: &[f32], dst: &mut [f32]) {
    let (h, w, os) = (g.h, g.w, g.os);
    for s in 0..k {
        for ch in 0..c {
            let sc = &src[ch * os..(ch + 1) * os];
            let d = &mut dst[(s * c + ch) * h * w..][..h * w];
            for y in 0..h {
                // Output row y of sample s sits one row above its bordered input row.
                copy_row(
                    &sc[g.row(s, y) - g.r - 1..][..w],
                    &mut d[y * w..(y + 1) * w],
                );
            }
        }
    }
}

/// Forward of a 3x3, stride-1, pad-1 convolution of `n` samples of
/// `cin x h x w` into `cout x h x w` (see [`super::conv::conv2d_forward`]).
pub fn forward(
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    forward_with(path(), cin, cout, hw, n, x, w, y, scratch);
}

fn forward_with(
    path: Path,
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    let plane = hw.0 * hw.1;
    let (isz, osz) = (cin * plane, cout * plane);
    assert!(x.len() >= n * isz && y.len() >= n * osz && w.len() >= cout * cin * 9);
    let m = chunk_samples(hw.0, hw.1, n, scratch.workers.len());
    let g = Grid::new(hw.0, hw.1, m);
    let blocks = cout.div_ceil(CB);
    let wlen = blocks * cin * 9 * CB;
    let (xlen, olen) = (cin * g.p, blocks * CB * g.os);
    let yp = SharedMut::new(y);
    par::for_each_part(n, &mut scratch.workers, |range, ws| {
        ws.ensure_col(wlen + xlen + olen);
        let (wk, rest) = ws.col.split_at_mut(wlen);
        let (xp, rest) = rest.split_at_mut(xlen);
        let out = &mut rest[..olen];
        block_weights(w, cout, cin, wk);
        xp.fill(0.0);
        let mut s0 = range.start;
        while s0 < range.end {
            let k = m.min(range.end - s0);
            let gk = g.with_count(k);
            pad_planes(&g, cin, k, &x[s0 * isz..(s0 + k) * isz], xp);
            run_fwd(path, cin, blocks, &gk, xp, wk, out);
            // SAFETY: each sample's output range is written by exactly one worker.
            let ys = unsafe { yp.slice(s0 * osz, k * osz) };
            unpad_outputs(&g, cout, k, out, ys);
            s0 += k;
        }
    });
}

/// Backward of [`forward`]: `dw` overwritten with the batch sum, `dx`
/// (when given) overwritten.
pub fn backward(
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    scratch: &mut Scratch,
) {
    backward_with(path(), cin, cout, hw, n, x, w, dy, dx, dw, scratch);
}

fn backward_with(
    path: Path,
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    scratch: &mut Scratch,
) {
    let plane = hw.0 * hw.1;
    let (isz, osz) = (cin * plane, cout * plane);
    let wlen = cout * cin * 9;
    assert!(x.len() >= n * isz && dy.len() >= n * osz && dw.len() >= wlen && w.len() >= wlen);
    let m = chunk_samples(hw.0, hw.1, n, scratch.workers.len());
    let g = Grid::new(hw.0, hw.1, m);
    let oblocks = cout.div_ceil(CB);
    let iblocks = cin.div_ceil(CB);
    let want_dx = dx.is_some();
    let dxp = dx.map(|d| {
        assert!(d.len() >= n * isz);
        SharedMut::new(d)
    });
    let wklen = if want_dx { iblocks * cout * 9 * CB } else { 0 };
    let (xlen, dylen) = (cin * g.p, oblocks * CB * g.p);
    let olen = if want_dx { iblocks * CB * g.os } else { 0 };
    let acclen = oblocks * CB * cin * 9 * L;
    let parts = scratch.workers.len().min(n).max(1);
    par::for_each_part(n, &mut scratch.workers, |range, ws| {
        ws.ensure_col(wklen + xlen + dylen + olen);
        ws.ensure_acc(acclen);
        ws.acc[..acclen].fill(0.0);
        let (wk, rest) = ws.col.split_at_mut(wklen);
        let (xp, rest) = rest.split_at_mut(xlen);
        let (dyp, rest) = rest.split_at_mut(dylen);
        let out = &mut rest[..olen];
        if want_dx {
            block_weights_flipped(w, cout, cin, wk);
        }
        xp.fill(0.0);
        dyp.fill(0.0);
        let mut s0 = range.start;
        while s0 < range.end {
            let k = m.min(range.end - s0);
            if k < m && s0 > range.start {
                // A short last chunk: clear what earlier chunks left past it,
                // which the rounded-up grid may still read.
                dyp.fill(0.0);
            }
            let gk = g.with_count(k);
            pad_planes(&g, cin, k, &x[s0 * isz..(s0 + k) * isz], xp);
            pad_planes(&g, cout, k, &dy[s0 * osz..(s0 + k) * osz], dyp);
            run_dw(path, cin, oblocks, &gk, xp, dyp, &mut ws.acc);
            if let Some(dxp) = dxp {
                run_fwd(path, cout, iblocks, &gk, dyp, wk, out);
                // SAFETY: each sample's input-gradient range belongs to one worker.
                let dxs = unsafe { dxp.slice(s0 * isz, k * isz) };
                unpad_outputs(&g, cin, k, out, dxs);
            }
            s0 += k;
        }
    });
    // Sum the lanes and the workers.
    let dw = &mut dw[..wlen];
    dw.fill(0.0);
    for ws in &scratch.workers[..parts] {
        for (d, a) in dw.iter_mut().zip(ws.acc.chunks_exact(L)) {
            *d += a.iter().sum::<f32>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn pseudo(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// Every path this CPU runs (portable, AVX2 + FMA, AVX-512F) agrees with
    /// the portable one within 1e-4 relative (they differ in rounding from
    /// fused multiply-adds and, for the weight gradient, in summation order).
    #[test]
    fn paths_agree() {
        let mut paths = vec![Path::Lanes8(Isa::Portable)];
        if isa() != Isa::Portable {
            paths.push(Path::Lanes8(isa()));
        }
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        if has_avx512() {
            paths.push(Path::Avx512);
        }
        // Where the CPU has them the paths are really compared.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        assert_eq!(
            paths.len(),
            1 + usize::from(isa() != Isa::Portable) + usize::from(has_avx512())
        );
        let mut scratch = Scratch::new();
        for &(cin, cout, h, w, n) in &[
            (3, 5, 5, 7, 3),
            (16, 16, 4, 4, 9),
            (2, 7, 9, 9, 2),
            (1, 4, 1, 1, 40),
            (16, 16, 32, 32, 3),
            (5, 9, 2, 2, 17),
            (64, 64, 8, 8, 5),
        ] {
            let x = pseudo(n * cin * h * w, 1);
            let wt = pseudo(cout * cin * 9, 2);
            let dy = pseudo(n * cout * h * w, 3);
            let mut res = Vec::new();
            for &path in &paths {
                let mut y = vec![f32::NAN; n * cout * h * w];
                forward_with(path, cin, cout, (h, w), n, &x, &wt, &mut y, &mut scratch);
                let mut dx = vec![f32::NAN; x.len()];
                let mut dw = vec![f32::NAN; wt.len()];
                backward_with(
                    path,
                    cin,
                    cout,
                    (h, w),
                    n,
                    &x,
                    &wt,
                    &dy,
                    Some(&mut dx),
                    &mut dw,
                    &mut scratch,
                );
                res.push((y, dx, dw));
            }
            let a = &res[0];
            for (b, path) in res[1..].iter().zip(&paths[1..]) {
                for (u, v) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
                    // Relative to the tensor's scale: sums of many terms of
                    // both signs can cancel to near zero.
                    let scale = v.iter().fold(0.0f32, |m, q| m.max(q.abs()));
                    for (p, q) in u.iter().zip(v.iter()) {
                        assert!(
                            (p - q).abs() <= 1e-4 * (1.0 + scale),
                            "{path:?} {cin}x{cout} {h}x{w} n {n}: {p} vs {q}"
                        );
                    }
                }
            }
        }
    }

    /// The forward matches a plain loop over pixels, channels and taps.
    #[test]
    fn matches_a_plain_convolution() {
        let (cin, cout, h, w, n) = (3, 18, 6, 5, 2);
        let x = pseudo(n * cin * h * w, 4);
        let wt = pseudo(cout * cin * 9, 5);
        let mut want = vec![0.0f32; n * cout * h * w];
        for s in 0..n {
            for co in 0..cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = 0.0;
                        for ci in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (oy + ky, ox + kx);
                                    if iy < 1 || ix < 1 || iy > h || ix > w {
                                        continue;
                                    }
                                    acc += x[((s * cin + ci) * h + iy - 1) * w + ix - 1]
                                        * wt[((co * cin + ci) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                        want[((s * cout + co) * h + oy) * w + ox] = acc;
                    }
                }
            }
        }
        let mut y = vec![f32::NAN; want.len()];
        forward(cin, cout, (h, w), n, &x, &wt, &mut y, &mut Scratch::new());
        for (p, q) in y.iter().zip(&want) {
            assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
