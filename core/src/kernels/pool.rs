//! 2x2 max-pool (stride 2, floor) and global average pool, NCHW.

use crate::par::{self, SharedMut};

/// `a = maxpool2x2(h)`; `planes = n * channels`, each `hw` in, `hw / 2` out.
pub fn maxpool_forward(planes: usize, hw: (usize, usize), h: &[f32], a: &mut [f32]) {
    let (oh, ow) = (hw.0 / 2, hw.1 / 2);
    let (ip, op) = (hw.0 * hw.1, oh * ow);
    assert!(h.len() >= planes * ip && a.len() >= planes * op);
    let ap = SharedMut::new(a);
    par::for_each(planes, |p| {
        let x = &h[p * ip..(p + 1) * ip];
        // SAFETY: plane p has one writer.
        let out = unsafe { ap.slice(p * op, op) };
        for oy in 0..oh {
            let r0 = &x[2 * oy * hw.1..];
            let r1 = &x[(2 * oy + 1) * hw.1..];
            for ox in 0..ow {
                let m = r0[2 * ox]
                    .max(r0[2 * ox + 1])
                    .max(r1[2 * ox].max(r1[2 * ox + 1]));
                out[oy * ow + ox] = m;
            }
        }
    });
}

/// Backward of [`maxpool_forward`]: each output gradient goes to the first
/// maximum of its window in row-major order (as PyTorch does); `dh` is
/// overwritten, zero where no gradient arrives.
pub fn maxpool_backward(planes: usize, hw: (usize, usize), h: &[f32], da: &[f32], dh: &mut [f32]) {
    let (oh, ow) = (hw.0 / 2, hw.1 / 2);
    let (ip, op) = (hw.0 * hw.1, oh * ow);
    assert!(h.len() >= planes * ip && da.len() >= planes * op && dh.len() >= planes * ip);
    let dp = SharedMut::new(dh);
    par::for_each(planes, |p| {
        let x = &h[p * ip..(p + 1) * ip];
        let g = &da[p * op..(p + 1) * op];
        // SAFETY: plane p has one writer.
        let out = unsafe { dp.slice(p * ip, ip) };
        out.fill(0.0);
        for oy in 0..oh {
            for ox in 0..ow {
                let idx = [
                    2 * oy * hw.1 + 2 * ox,
                    2 * oy * hw.1 + 2 * ox + 1,
                    (2 * oy + 1) * hw.1 + 2 * ox,
                    (2 * oy + 1) * hw.1 + 2 * ox + 1,
                ];
                let mut best = idx[0];
                for &i in &idx[1..] {
                    if x[i] > x[best] {
                        best = i;
                    }
                }
                out[best] += g[oy * ow + ox];
            }
        }
    });
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
}
