//! 2x2 max-pool (stride 2, floor) and global average pool, NCHW.

use super::lanes::{self, Isa};
use crate::par::{self, SharedMut};

/// `a = maxpool2x2(h)`; `planes = n * channels`, each `hw` in, `hw / 2` out.
pub fn maxpool_forward(planes: usize, hw: (usize, usize), h: &[f32], a: &mut [f32]) {
    maxpool_forward_with(lanes::isa(), planes, hw, h, a);
}

fn maxpool_forward_with(isa: Isa, planes: usize, hw: (usize, usize), h: &[f32], a: &mut [f32]) {
    let (oh, ow) = (hw.0 / 2, hw.1 / 2);
    let (ip, op) = (hw.0 * hw.1, oh * ow);
    assert!(h.len() >= planes * ip && a.len() >= planes * op);
    if op == 0 {
        return;
    }
    let ap = SharedMut::new(a);
    let rows = planes * oh;
    par::for_each(rows.div_ceil(ROWS_PER_TASK), |t| {
        for row in t * ROWS_PER_TASK..rows.min((t + 1) * ROWS_PER_TASK) {
            let (p, oy) = (row / oh, row % oh);
            let x = &h[p * ip + 2 * oy * hw.1..][..2 * hw.1];
            let (r0, r1) = x.split_at(hw.1);
            // SAFETY: output row `row` has one writer.
            max_row(isa, r0, r1, unsafe { ap.slice(row * ow, ow) });
        }
    });
}

/// Maxima of the 2x2 windows of rows `r0`, `r1` into `out`.
#[inline]
fn max_row(isa: Isa, r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let done = match isa {
        // SAFETY: the ISA was detected.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { avx::max_row(r0, r1, out) },
        _ => 0,
    };
    for ox in done..out.len() {
        out[ox] = r0[2 * ox]
            .max(r0[2 * ox + 1])
            .max(r1[2 * ox].max(r1[2 * ox + 1]));
    }
}

/// One `hw` plane of [`maxpool_forward`], on the calling thread.
pub(crate) fn maxpool_plane(isa: Isa, hw: (usize, usize), h: &[f32], a: &mut [f32]) {
    let ow = hw.1 / 2;
    for oy in 0..hw.0 / 2 {
        let (r0, r1) = h[2 * oy * hw.1..(2 * oy + 2) * hw.1].split_at(hw.1);
        max_row(isa, r0, r1, &mut a[oy * ow..(oy + 1) * ow]);
    }
}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Gradients for the window `x0, x1` (top row), `x2, x3` (bottom row): all of
/// `g` to the first maximum in that order (strict `>` against the best so far,
/// as the definition does), zero to the others.
#[inline(always)]
fn route(x: [f32; 4], g: f32) -> [f32; 4] {
    let c1 = x[1] > x[0];
    let v = if c1 { x[1] } else { x[0] };
    let c2 = x[2] > v;
    let v = if c2 { x[2] } else { v };
    let c3 = x[3] > v;
    let w3 = c3;
    let w2 = c2 & !c3;
    let w1 = c1 & !c2 & !c3;
    let w0 = !(c1 | c2 | c3);
    let pick = |b: bool| if b { g } else { 0.0 };
    [pick(w0), pick(w1), pick(w2), pick(w3)]
}

/// Backward of [`maxpool_forward`]: each output gradient goes to the first
/// maximum of its window in row-major order (as PyTorch does); `dh` is
/// overwritten, zero where no gradient arrives.
pub fn maxpool_backward(planes: usize, hw: (usize, usize), h: &[f32], da: &[f32], dh: &mut [f32]) {
    maxpool_backward_with(lanes::isa(), planes, hw, h, da, dh);
}

fn maxpool_backward_with(
    isa: Isa,
    planes: usize,
    hw: (usize, usize),
    h: &[f32],
    da: &[f32],
    dh: &mut [f32],
) {
    let (oh, ow) = (hw.0 / 2, hw.1 / 2);
    let (ip, op) = (hw.0 * hw.1, oh * ow);
    assert!(h.len() >= planes * ip && da.len() >= planes * op && dh.len() >= planes * ip);
    let dp = SharedMut::new(dh);
    par::for_each(planes.div_ceil(PLANES_PER_TASK), |t| {
        for p in t * PLANES_PER_TASK..planes.min((t + 1) * PLANES_PER_TASK) {
            // SAFETY: plane p has one writer.
            let out = unsafe { dp.slice(p * ip, ip) };
            maxpool_backward_plane(
                isa,
                hw,
                &h[p * ip..(p + 1) * ip],
                &da[p * op..(p + 1) * op],
                out,
            );
        }
    });
}

/// One `hw` plane of [`maxpool_backward`], on the calling thread: `out`
/// (the plane's `dh`) is overwritten.
pub(crate) fn maxpool_backward_plane(
    isa: Isa,
    hw: (usize, usize),
    x: &[f32],
    g: &[f32],
    out: &mut [f32],
) {
    let (oh, ow, w) = (hw.0 / 2, hw.1 / 2, hw.1);
    for oy in 0..oh {
        let (r0, r1) = x[2 * oy * w..(2 * oy + 2) * w].split_at(w);
        let (d0, d1) = out[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
        let gr = &g[oy * ow..(oy + 1) * ow];
        let done = match isa {
            // SAFETY: the ISA was detected.
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx2 => unsafe { avx::route_rows(r0, r1, gr, d0, d1) },
            _ => 0,
        };
        for ox in done..ow {
            let [a, b, c, d] = route(
                [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]],
                gr[ox],
            );
            d0[2 * ox] = a;
            d0[2 * ox + 1] = b;
            d1[2 * ox] = c;
            d1[2 * ox + 1] = d;
        }
        // A leftover odd column gets nothing.
        d0[2 * ow..].fill(0.0);
        d1[2 * ow..].fill(0.0);
    }
    // A leftover odd row gets nothing.
    out[2 * oh * w..].fill(0.0);
}

/// Planes per parallel task in the backward pass.
const PLANES_PER_TASK: usize = 16;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx {
    use core::arch::x86_64::*;

    /// Maxima of the windows of rows `r0`, `r1` into `out`, eight at a time;
    /// returns how many outputs were written.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_row(r0: &[f32], r1: &[f32], out: &mut [f32]) -> usize {
        let ow = out.len();
        assert!(r0.len() >= 2 * ow && r1.len() >= 2 * ow);
        let mut ox = 0;
        while ox + 8 <= ow {
            // SAFETY: 2 * ox + 16 <= 2 * ow elements of each row, 8 outputs.
            unsafe {
                let (p0, p1) = (r0.as_ptr().add(2 * ox), r1.as_ptr().add(2 * ox));
                let m0 = _mm256_max_ps(_mm256_loadu_ps(p0), _mm256_loadu_ps(p1));
                let m1 = _mm256_max_ps(_mm256_loadu_ps(p0.add(8)), _mm256_loadu_ps(p1.add(8)));
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(m0, m1);
                let o = _mm256_shuffle_ps::<0b11_01_11_01>(m0, m1);
                let m = _mm256_castps_pd(_mm256_max_ps(e, o));
                let m = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(m));
                _mm256_storeu_ps(out.as_mut_ptr().add(ox), m);
            }
            ox += 8;
        }
        ox
    }

    /// Routes the gradients `g` of the windows of rows `r0`, `r1` into `d0`,
    /// `d1`, four windows at a time, as [`super::route`] does; returns how
    /// many windows were done.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn route_rows(
        r0: &[f32],
        r1: &[f32],
        g: &[f32],
        d0: &mut [f32],
        d1: &mut [f32],
    ) -> usize {
        let ow = g.len();
        assert!(
            r0.len() >= 2 * ow && r1.len() >= 2 * ow && d0.len() >= 2 * ow && d1.len() >= 2 * ow
        );
        let mut ox = 0;
        while ox + 4 <= ow {
            // SAFETY: 2 * ox + 8 <= 2 * ow elements of each row, 4 gradients.
            unsafe {
                let a = _mm256_loadu_ps(r0.as_ptr().add(2 * ox));
                let b = _mm256_loadu_ps(r1.as_ptr().add(2 * ox));
                // Each lane pair sees its whole window: x0 x1 / x2 x3.
                let x0 = _mm256_moveldup_ps(a);
                let x1 = _mm256_movehdup_ps(a);
                let x2 = _mm256_moveldup_ps(b);
                let x3 = _mm256_movehdup_ps(b);
                let c1 = _mm256_cmp_ps::<_CMP_GT_OQ>(x1, x0);
                let v = _mm256_blendv_ps(x0, x1, c1);
                let c2 = _mm256_cmp_ps::<_CMP_GT_OQ>(x2, v);
                let v = _mm256_blendv_ps(v, x2, c2);
                let c3 = _mm256_cmp_ps::<_CMP_GT_OQ>(x3, v);
                let w2 = _mm256_andnot_ps(c3, c2);
                let w1 = _mm256_andnot_ps(_mm256_or_ps(c2, c3), c1);
                let any = _mm256_or_ps(c1, _mm256_or_ps(c2, c3));
                // Top row: even lanes take w0 = !any, odd lanes w1; bottom row: w2, w3.
                let top = _mm256_blend_ps::<0b1010_1010>(
                    _mm256_andnot_ps(any, _mm256_castsi256_ps(_mm256_set1_epi32(-1))),
                    w1,
                );
                let bottom = _mm256_blend_ps::<0b1010_1010>(w2, c3);
                let g4 = _mm_loadu_ps(g.as_ptr().add(ox));
                let gd = _mm256_set_m128(_mm_unpackhi_ps(g4, g4), _mm_unpacklo_ps(g4, g4));
                _mm256_storeu_ps(d0.as_mut_ptr().add(2 * ox), _mm256_and_ps(top, gd));
                _mm256_storeu_ps(d1.as_mut_ptr().add(2 * ox), _mm256_and_ps(bottom, gd));
            }
            ox += 4;
        }
        ox
    }
}

/// Global average pool: `f[p] = mean(h[p, :])` for each of `planes` planes.
pub fn gap_forward(planes: usize, plane: usize, h: &[f32], f: &mut [f32]) {
    for p in 0..planes {
        f[p] = h[p * plane..(p + 1) * plane].iter().sum::<f32>() / plane as f32;
    }
}

/// Backward of [`gap_forward`]: `dh` is overwritten.
pub fn gap_backward(planes: usize, plane: usize, df: &[f32], dh: &mut [f32]) {
    for p in 0..planes {
        let g = df[p] / plane as f32;
        dh[p * plane..(p + 1) * plane].fill(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn maxpool_backward_matches_finite_differences() {
        let (planes, hw) = (3, (6, 5));
        let mut r = Rng::new(3);
        let mut h: Vec<f32> = (0..planes * 30).map(|_| r.normal()).collect();
        let wts: Vec<f32> = (0..planes * 6).map(|_| r.normal()).collect();
        let f = |h: &[f32]| {
            let mut a = vec![0.0; planes * 6];
            maxpool_forward(planes, hw, h, &mut a);
            a.iter().zip(&wts).map(|(a, w)| (a * w) as f64).sum::<f64>()
        };
        let mut dh = vec![0.0; planes * 30];
        maxpool_backward(planes, hw, &h, &wts, &mut dh);
        for i in 0..h.len() {
            let o = h[i];
            h[i] = o + 1e-3;
            let p = f(&h);
            h[i] = o - 1e-3;
            let m = f(&h);
            h[i] = o;
            let fd = (p - m) / 2e-3;
            assert!(
                (fd - dh[i] as f64).abs() < 1e-3,
                "dh[{i}]: {fd} vs {}",
                dh[i]
            );
        }
    }

    /// Both instantiations against the definition, with many ties.
    #[test]
    fn maxpool_matches_definition_with_ties() {
        let mut isas = vec![Isa::Portable];
        if lanes::isa() != Isa::Portable {
            isas.push(lanes::isa());
        }
        let mut r = Rng::new(9);
        for planes in 1..=3 {
            for hh in 1..=19 {
                for ww in 1..=37 {
                    let levels = 1 + (hh + ww) % 4;
                    let len = planes * hh * ww;
                    let x: Vec<f32> = (0..len).map(|_| r.below(levels) as f32).collect();
                    let (oh, ow) = (hh / 2, ww / 2);
                    let da: Vec<f32> = (0..planes * oh * ow).map(|_| r.normal()).collect();
                    let mut want_a = vec![0.0f32; da.len()];
                    let mut want_dh = vec![0.0f32; len];
                    for p in 0..planes {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut best = p * hh * ww + 2 * oy * ww + 2 * ox;
                                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                                    let i = p * hh * ww + (2 * oy + dy) * ww + 2 * ox + dx;
                                    if x[i] > x[best] {
                                        best = i;
                                    }
                                }
                                let o = (p * oh + oy) * ow + ox;
                                want_a[o] = x[best];
                                want_dh[best] += da[o];
                            }
                        }
                    }
                    for &isa in &isas {
                        let mut a = vec![f32::NAN; da.len()];
                        maxpool_forward_with(isa, planes, (hh, ww), &x, &mut a);
                        assert_eq!(a, want_a, "{hh}x{ww}");
                        let mut dh = vec![f32::NAN; len];
                        maxpool_backward_with(isa, planes, (hh, ww), &x, &da, &mut dh);
                        assert_eq!(dh, want_dh, "{hh}x{ww}");
                    }
                }
            }
        }
    }
}
