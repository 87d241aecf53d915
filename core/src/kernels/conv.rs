//! 2-D convolution (groups = 1, no bias), NCHW, by im2col and GEMM per sample,
//! samples spread over workers. Forward and backward side by side.

use super::conv3x3;
use super::gemm::gemm;
use super::Scratch;
use crate::arch::ConvGeom;
use crate::par::{self, SharedMut};

/// A 1x1, stride-1, unpadded conv reads its input as the im2col matrix directly.
fn is_pointwise(g: &ConvGeom) -> bool {
    g.kernel == 1 && g.stride == 1 && g.pad == 0
}

/// A 3x3, stride-1, pad-1 conv runs the direct kernels of [`super::conv3x3`],
/// except on tiny planes with many channels, where the direct kernels'
/// border columns cost more than im2col and GEMM (measured: direct is
/// ahead at 64 channels on 16x16, even at 128 on 8x8, behind at 256 on 4x4).
fn is_direct3x3(g: &ConvGeom) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.pad == 1
        && g.out_hw == g.in_hw
        && !(g.in_plane() <= 16 && g.cin * g.cout >= 128 * 128)
}

/// Writes the `patch x out_plane` im2col matrix of one sample.
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let k = g.kernel;
    let plane = oh * ow;
    for ci in 0..g.cin {
        let xc = &x[ci * g.in_plane()..(ci + 1) * g.in_plane()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * plane..][..plane];
                for oy in 0..oh {
                    let iy = (oy * g.stride) as isize - g.pad as isize + ky as isize;
                    let out_row = &mut row[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= ih {
                        out_row.fill(0.0);
                        continue;
                    }
                    let x_row = &xc[iy as usize * iw as usize..][..iw as usize];
                    let off = kx as isize - g.pad as isize;
                    if g.stride == 1 {
                        // Contiguous run: valid ox satisfy 0 <= ox + off < iw.
                        let lo = (-off).clamp(0, ow as isize) as usize;
                        let hi = (iw - off).clamp(0, ow as isize) as usize;
                        out_row[..lo].fill(0.0);
                        if hi > lo {
                            let src = (lo as isize + off) as usize;
                            out_row[lo..hi].copy_from_slice(&x_row[src..src + hi - lo]);
                        }
                        out_row[hi.max(lo)..].fill(0.0);
                    } else {
                        for (ox, o) in out_row.iter_mut().enumerate() {
                            let ix = (ox * g.stride) as isize + off;
                            *o = if ix >= 0 && ix < iw {
                                x_row[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Adds the im2col-shaped gradient `col` back onto the input gradient `dx` of one sample.
pub fn col2im_add(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    let (ih, iw) = (g.in_hw.0 as isize, g.in_hw.1 as isize);
    let (oh, ow) = g.out_hw;
    let k = g.kernel;
    let plane = oh * ow;
    for ci in 0..g.cin {
        let dxc = &mut dx[ci * g.in_plane()..(ci + 1) * g.in_plane()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((ci * k + ky) * k + kx) * plane..][..plane];
                for oy in 0..oh {
                    let iy = (oy * g.stride) as isize - g.pad as isize + ky as isize;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    let dx_row = &mut dxc[iy as usize * iw as usize..][..iw as usize];
                    let in_row = &row[oy * ow..(oy + 1) * ow];
                    let off = kx as isize - g.pad as isize;
                    if g.stride == 1 {
                        let lo = (-off).clamp(0, ow as isize) as usize;
                        let hi = (iw - off).clamp(0, ow as isize) as usize;
                        if hi > lo {
                            let dst = (lo as isize + off) as usize;
                            for (d, s) in dx_row[dst..dst + hi - lo].iter_mut().zip(&in_row[lo..hi])
                            {
                                *d += *s;
                            }
                        }
                    } else {
                        for (ox, s) in in_row.iter().enumerate() {
                            let ix = (ox * g.stride) as isize + off;
                            if ix >= 0 && ix < iw {
                                dx_row[ix as usize] += *s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w)` for `n` samples. `w` is `[cout, cin, k, k]`.
pub fn conv2d_forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    if is_direct3x3(g) {
        conv3x3::forward(g.cin, g.cout, g.in_hw, n, x, w, y, scratch);
    } else {
        forward_im2col(g, n, x, w, y, scratch);
    }
}

/// [`conv2d_forward`] by im2col and GEMM, for any geometry.
fn forward_im2col(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) {
    let (isz, osz) = (g.cin * g.in_plane(), g.cout * g.out_plane());
    assert!(x.len() >= n * isz && y.len() >= n * osz && w.len() >= g.cout * g.patch());
    let (patch, plane) = (g.patch(), g.out_plane());
    let yp = SharedMut::new(y);
    par::for_each_part(n, &mut scratch.workers, |range, ws| {
        if !is_pointwise(g) {
            ws.ensure_col(patch * plane);
        }
        for s in range {
            let xs = &x[s * isz..(s + 1) * isz];
            // SAFETY: each sample's output range is written by exactly one worker.
            let ys = unsafe { yp.slice(s * osz, osz) };
            if is_pointwise(g) {
                gemm(g.cout, plane, patch, 1.0, w, false, xs, false, 0.0, ys);
            } else {
                im2col(g, xs, &mut ws.col);
                gemm(g.cout, plane, patch, 1.0, w, false, &ws.col, false, 0.0, ys);
            }
        }
    });
}

/// Backward of [`conv2d_forward`]: writes `dw` (overwritten, summed over the
/// batch) and, when given, `dx` (overwritten).
pub fn conv2d_backward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    scratch: &mut Scratch,
) {
    if is_direct3x3(g) {
        conv3x3::backward(g.cin, g.cout, g.in_hw, n, x, w, dy, dx, dw, scratch);
    } else {
        backward_im2col(g, n, x, w, dy, dx, dw, scratch);
    }
}

/// [`conv2d_backward`] by im2col and GEMM, for any geometry.
fn backward_im2col(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    scratch: &mut Scratch,
) {
    let (isz, osz) = (g.cin * g.in_plane(), g.cout * g.out_plane());
    let (patch, plane, wlen) = (g.patch(), g.out_plane(), g.cout * g.patch());
    assert!(x.len() >= n * isz && dy.len() >= n * osz && dw.len() >= wlen);
    let dxp = dx.map(|d| {
        assert!(d.len() >= n * isz);
        SharedMut::new(d)
    });
    par::for_each_part(n, &mut scratch.workers, |range, ws| {
        ws.ensure_acc(wlen);
        ws.acc[..wlen].fill(0.0);
        if !is_pointwise(g) {
            ws.ensure_col(patch * plane);
        }
        for s in range {
            let xs = &x[s * isz..(s + 1) * isz];
            let dys = &dy[s * osz..(s + 1) * osz];
            if is_pointwise(g) {
                gemm(
                    g.cout,
                    patch,
                    plane,
                    1.0,
                    dys,
                    false,
                    xs,
                    true,
                    1.0,
                    &mut ws.acc,
                );
            } else {
                im2col(g, xs, &mut ws.col);
                gemm(
                    g.cout,
                    patch,
                    plane,
                    1.0,
                    dys,
                    false,
                    &ws.col,
                    true,
                    1.0,
                    &mut ws.acc,
                );
            }
            if let Some(dxp) = dxp {
                // SAFETY: each sample's input-gradient range belongs to one worker.
                let dxs = unsafe { dxp.slice(s * isz, isz) };
                if is_pointwise(g) {
                    gemm(patch, plane, g.cout, 1.0, w, true, dys, false, 0.0, dxs);
                } else {
                    // The column buffer is free again once dW has used it.
                    gemm(
                        patch,
                        plane,
                        g.cout,
                        1.0,
                        w,
                        true,
                        dys,
                        false,
                        0.0,
                        &mut ws.col,
                    );
                    dxs.fill(0.0);
                    col2im_add(g, &ws.col, dxs);
                }
            }
        }
    });
    scratch.reduce_acc(n, &mut dw[..wlen]);
}

#[cfg(test)]
mod input_grad_tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn input_gradient_only_matches_full_backward() {
        for &(cin, cout, k, stride, pad, h) in &[
            (3, 4, 3, 1, 1, 6),
            (2, 5, 1, 1, 0, 5),
            (3, 2, 3, 2, 1, 7),
            (16, 16, 3, 1, 1, 4),
        ] {
            let out_hw = crate::arch::conv_out((h, h + 1), k, stride, pad);
            let g = ConvGeom {
                cin,
                cout,
                kernel: k,
                stride,
                pad,
                in_hw: (h, h + 1),
                out_hw,
            };
            let n = 3;
            let x: Vec<f32> = (0..n * cin * h * (h + 1))
                .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..cout * g.patch())
                .map(|i| ((i * 11 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let dy: Vec<f32> = (0..n * cout * g.out_plane())
                .map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.1)
                .collect();
            let mut s = Scratch::new();
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.0; w.len()]);
            conv2d_backward(&g, n, &x, &w, &dy, Some(&mut dx), &mut dw, &mut s);
            let mut dx2 = vec![f32::NAN; x.len()];
            conv2d_backward_input(&g, n, &w, &dy, &mut dx2, &mut s);
            for (a, b) in dx.iter().zip(&dx2) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "{cin}->{cout} k{k} s{stride}: {a} vs {b}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Direct definition of the convolution, for checking the im2col path.
    fn naive(g: &ConvGeom, n: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = g.out_hw;
        let mut y = vec![0.0; n * g.cout * oh * ow];
        for s in 0..n {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ci in 0..g.cin {
                            for ky in 0..g.kernel {
                                for kx in 0..g.kernel {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.in_hw.0 as isize
                                        || ix >= g.in_hw.1 as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((s * g.cin + ci) * g.in_hw.0 + iy as usize)
                                        * g.in_hw.1
                                        + ix as usize];
                                    let wv = w[((co * g.cin + ci) * g.kernel + ky) * g.kernel + kx];
                                    acc += xv * wv;
                                }
                            }
                        }
                        y[((s * g.cout + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn im2col_conv_matches_direct_definition() {
        for &(k, stride, pad, h) in &[
            (3, 1, 1, 5),
            (3, 2, 1, 6),
            (1, 1, 0, 4),
            (3, 1, 0, 5),
            (1, 2, 0, 5),
        ] {
            let ohw = crate::arch::conv_out((h, h + 1), k, stride, pad);
            let g = ConvGeom {
                cin: 2,
                cout: 3,
                kernel: k,
                stride,
                pad,
                in_hw: (h, h + 1),
                out_hw: ohw,
            };
            let n = 3;
            let x: Vec<f32> = (0..n * 2 * h * (h + 1))
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..3 * g.patch())
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let mut y = vec![f32::NAN; n * 3 * g.out_plane()];
            let mut scratch = Scratch::new();
            conv2d_forward(&g, n, &x, &w, &mut y, &mut scratch);
            let want = naive(&g, n, &x, &w);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "k{k} s{stride} p{pad}: {a} vs {b}");
            }
        }
    }

    /// Direct definitions of both gradients: `(dx, dw)`.
    fn naive_backward(
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (ih, iw) = g.in_hw;
        let (oh, ow) = g.out_hw;
        let k = g.kernel;
        let mut dx = vec![0.0f64; n * g.cin * ih * iw];
        let mut dw = vec![0.0f64; g.cout * g.patch()];
        for s in 0..n {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let d = dy[((s * g.cout + co) * oh + oy) * ow + ox] as f64;
                        for ci in 0..g.cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                        continue;
                                    }
                                    let xi =
                                        ((s * g.cin + ci) * ih + iy as usize) * iw + ix as usize;
                                    let wi = ((co * g.cin + ci) * k + ky) * k + kx;
                                    dx[xi] += d * w[wi] as f64;
                                    dw[wi] += d * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (
            dx.into_iter().map(|v| v as f32).collect(),
            dw.into_iter().map(|v| v as f32).collect(),
        )
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale.max(b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    fn pseudo(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    #[test]
    fn direct3x3_matches_im2col_and_definition() {
        let mut scratch = Scratch::new();
        for cin in 1..=5 {
            for cout in 1..=5 {
                for &(h, wd) in &[
                    (1, 1),
                    (2, 2),
                    (1, 5),
                    (3, 2),
                    (4, 4),
                    (5, 7),
                    (8, 8),
                    (9, 9),
                    (7, 3),
                ] {
                    let n = 1 + (cin + cout + h) % 3;
                    let g = ConvGeom {
                        cin,
                        cout,
                        kernel: 3,
                        stride: 1,
                        pad: 1,
                        in_hw: (h, wd),
                        out_hw: (h, wd),
                    };
                    assert!(is_direct3x3(&g));
                    let x = pseudo(n * cin * h * wd, 1);
                    let w = pseudo(cout * g.patch(), 2);
                    let dy = pseudo(n * cout * h * wd, 3);
                    let tag = alloc::format!("cin{cin} cout{cout} {h}x{wd} n{n}");

                    let mut y = vec![f32::NAN; n * cout * h * wd];
                    conv2d_forward(&g, n, &x, &w, &mut y, &mut scratch);
                    let mut y_ref = vec![f32::NAN; y.len()];
                    forward_im2col(&g, n, &x, &w, &mut y_ref, &mut scratch);
                    close(&alloc::format!("y {tag}"), &y, &y_ref);
                    close(&alloc::format!("y def {tag}"), &y, &naive(&g, n, &x, &w));

                    let (dx_def, dw_def) = naive_backward(&g, n, &x, &w, &dy);
                    let mut dx = vec![f32::NAN; x.len()];
                    let mut dw = vec![f32::NAN; w.len()];
                    conv2d_backward(&g, n, &x, &w, &dy, Some(&mut dx), &mut dw, &mut scratch);
                    close(&alloc::format!("dx {tag}"), &dx, &dx_def);
                    close(&alloc::format!("dw {tag}"), &dw, &dw_def);
                    let mut dx_ref = vec![f32::NAN; x.len()];
                    let mut dw_ref = vec![f32::NAN; w.len()];
                    backward_im2col(
                        &g,
                        n,
                        &x,
                        &w,
                        &dy,
                        Some(&mut dx_ref),
                        &mut dw_ref,
                        &mut scratch,
                    );
                    close(&alloc::format!("dx im2col {tag}"), &dx, &dx_ref);
                    close(&alloc::format!("dw im2col {tag}"), &dw, &dw_ref);

                    let mut dw_only = vec![f32::NAN; w.len()];
                    conv2d_backward(&g, n, &x, &w, &dy, None, &mut dw_only, &mut scratch);
                    assert_eq!(dw_only, dw, "{tag}");
                }
            }
        }
    }

    #[test]
    fn direct3x3_handles_wide_layers() {
        let mut scratch = Scratch::new();
        for &(cin, cout, h, n) in &[
            (16, 16, 8, 2),
            (1, 16, 32, 2),
            (19, 33, 6, 3),
            (16, 16, 2, 5),
        ] {
            let g = ConvGeom {
                cin,
                cout,
                kernel: 3,
                stride: 1,
                pad: 1,
                in_hw: (h, h),
                out_hw: (h, h),
            };
            let x = pseudo(n * cin * h * h, 4);
            let w = pseudo(cout * g.patch(), 5);
            let dy = pseudo(n * cout * h * h, 6);
            let mut y = vec![f32::NAN; n * cout * h * h];
            conv2d_forward(&g, n, &x, &w, &mut y, &mut scratch);
            close("y", &y, &naive(&g, n, &x, &w));
            let (dx_def, dw_def) = naive_backward(&g, n, &x, &w, &dy);
            let mut dx = vec![f32::NAN; x.len()];
            let mut dw = vec![f32::NAN; w.len()];
            conv2d_backward(&g, n, &x, &w, &dy, Some(&mut dx), &mut dw, &mut scratch);
            close("dx", &dx, &dx_def);
            close("dw", &dw, &dw_def);
        }
    }
}

/// Input gradient only: `dx` (overwritten) from `dy`, without the weight
/// gradient (the morphism-learning step needs `dL/da`, not `dL/dw`).
pub fn conv2d_backward_input(
    g: &ConvGeom,
    n: usize,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    scratch: &mut Scratch,
) {
    let (isz, osz) = (g.cin * g.in_plane(), g.cout * g.out_plane());
    let (patch, plane) = (g.patch(), g.out_plane());
    assert!(dy.len() >= n * osz && dx.len() >= n * isz && w.len() >= g.cout * patch);
    if is_direct3x3(g) {
        // A stride-1 pad-1 3x3 conv's input gradient is the same conv of dy
        // with channels swapped and kernels flipped.
        let mut wt = alloc::vec![0.0f32; g.cin * g.cout * 9];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for t in 0..9 {
                    wt[(ci * g.cout + co) * 9 + 8 - t] = w[(co * g.cin + ci) * 9 + t];
                }
            }
        }
        conv3x3::forward(g.cout, g.cin, g.in_hw, n, dy, &wt, dx, scratch);
        return;
    }
    let dxp = SharedMut::new(dx);
    par::for_each_part(n, &mut scratch.workers, |range, ws| {
        if !is_pointwise(g) {
            ws.ensure_col(patch * plane);
        }
        for s in range {
            let dys = &dy[s * osz..(s + 1) * osz];
            // SAFETY: each sample's input-gradient range belongs to one worker.
            let dxs = unsafe { dxp.slice(s * isz, isz) };
            if is_pointwise(g) {
                gemm(patch, plane, g.cout, 1.0, w, true, dys, false, 0.0, dxs);
            } else {
                gemm(
                    patch,
                    plane,
                    g.cout,
                    1.0,
                    w,
                    true,
                    dys,
                    false,
                    0.0,
                    &mut ws.col,
                );
                dxs.fill(0.0);
                col2im_add(g, &ws.col, dxs);
            }
        }
    });
}
