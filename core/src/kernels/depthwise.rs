//! Depthwise 3x3 convolution (pad 1, any stride), NCHW. Forward and backward.

use crate::par::{self, SharedMut};

/// Geometry of a depthwise 3x3 conv with padding 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwGeom {
    pub channels: usize,
    pub stride: usize,
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
}

impl DwGeom {
    fn in_plane(&self) -> usize {
        self.in_hw.0 * self.in_hw.1
    }
    fn out_plane(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }
}

#[inline]
fn plane_forward(g: &DwGeom, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let s = g.stride as isize;
    for oy in 0..oh {
        let yrow = &mut y[oy * ow..(oy + 1) * ow];
        yrow.fill(0.0);
        for ky in 0..3isize {
            let iy = oy as isize * s - 1 + ky;
            if iy < 0 || iy >= ih {
                continue;
            }
            let xrow = &x[(iy * iw) as usize..((iy + 1) * iw) as usize];
            let kr = &k[(ky * 3) as usize..(ky * 3 + 3) as usize];
            if s == 1 {
                // Interior columns without bounds checks; the two edges by hand.
                let w = ow;
                for ox in 1..w.saturating_sub(1) {
                    yrow[ox] += kr[0] * xrow[ox - 1] + kr[1] * xrow[ox] + kr[2] * xrow[ox + 1];
                }
                for ox in [0, w - 1] {
                    let mut acc = 0.0;
                    for kx in 0..3isize {
                        let ix = ox as isize - 1 + kx;
                        if ix >= 0 && ix < iw {
                            acc += kr[kx as usize] * xrow[ix as usize];
                        }
                    }
                    yrow[ox] += acc;
                    if w == 1 {
                        break;
                    }
                }
            } else {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for kx in 0..3isize {
                        let ix = ox as isize * s - 1 + kx;
                        if ix >= 0 && ix < iw {
                            acc += kr[kx as usize] * xrow[ix as usize];
                        }
                    }
                    yrow[ox] += acc;
                }
            }
        }
    }
}

/// `y = depthwise(x, k)` for `n` samples; `k` is `[channels, 1, 3, 3]`.
pub fn depthwise_forward(g: &DwGeom, n: usize, x: &[f32], k: &[f32], y: &mut [f32]) {
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    assert!(x.len() >= n * c * ip && y.len() >= n * c * op && k.len() >= c * 9);
    let yp = SharedMut::new(y);
    par::for_each(n * c, |p| {
        let ch = p % c;
        // SAFETY: plane p is written only here.
        let yplane = unsafe { yp.slice(p * op, op) };
        plane_forward(g, &x[p * ip..(p + 1) * ip], &k[ch * 9..ch * 9 + 9], yplane);
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
    let (ip, op, c) = (g.in_plane(), g.out_plane(), g.channels);
    assert!(x.len() >= n * c * ip && dy.len() >= n * c * op && dk.len() >= c * 9);
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let s = g.stride as isize;
    let dxp = dx.map(|d| {
        assert!(d.len() >= n * c * ip);
        SharedMut::new(d)
    });
    // Workers take whole channels so each kernel gradient has one writer.
    let dkp = SharedMut::new(dk);
    par::for_each(c, |ch| {
        let mut gk = [0.0f32; 9];
        let kr = &k[ch * 9..ch * 9 + 9];
        for smp in 0..n {
            let p = smp * c + ch;
            let xpl = &x[p * ip..(p + 1) * ip];
            let dypl = &dy[p * op..(p + 1) * op];
            // SAFETY: plane p belongs to channel ch, handled only by this worker.
            let mut dxpl = dxp.map(|d| unsafe { d.slice(p * ip, ip) });
            if let Some(d) = dxpl.as_deref_mut() {
                d.fill(0.0);
            }
            for oy in 0..oh {
                for ky in 0..3isize {
                    let iy = oy as isize * s - 1 + ky;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    for ox in 0..ow {
                        let gy = dypl[oy * ow + ox];
                        for kx in 0..3isize {
                            let ix = ox as isize * s - 1 + kx;
                            if ix < 0 || ix >= iw {
                                continue;
                            }
                            let xi = (iy * iw + ix) as usize;
                            gk[(ky * 3 + kx) as usize] += gy * xpl[xi];
                            if let Some(d) = dxpl.as_deref_mut() {
                                d[xi] += gy * kr[(ky * 3 + kx) as usize];
                            }
                        }
                    }
                }
            }
        }
        for (i, v) in gk.iter().enumerate() {
            // SAFETY: channel ch's nine kernel entries are written only here.
            unsafe { dkp.write(ch * 9 + i, *v) };
        }
    });
}
