//! Every reference CPU kernel's backward pass against central finite
//! differences of its own forward pass, over random shapes.
//!
//! Each check uses the scalar loss `L = sum(out * R)` for a random, fixed `R`
//! (so the upstream gradient handed to the backward pass is `R` itself), summed
//! in f64. Forward passes are also compared with direct, loop-by-loop
//! definitions, so a forward and backward that are wrong in the same way are
//! still caught. Gradient buffers start as NaN, so a kernel that fails to
//! overwrite an entry fails the comparison.
//!
//! Proptest draws the shapes and a seed; the values come from a small
//! deterministic generator fed by that seed, so a failing case is reproduced
//! by its printed shape and seed.

use proptest::prelude::*;
use sprout_core::arch::conv_out;
use sprout_core::arch::{BnGeom, ConvGeom, DwGeom};
use sprout_core::kernels::batchnorm::{
    backward_eval, backward_train, batch_stats, fold, scale_shift_relu, update_running, BN_EPS,
    BN_MOMENTUM,
};
use sprout_core::kernels::conv::{conv2d_backward, conv2d_forward};
use sprout_core::kernels::depthwise::{
    depthwise_backward, depthwise_backward_input, depthwise_forward,
};
use sprout_core::kernels::linear::{linear_backward, linear_forward};
use sprout_core::kernels::loss::softmax_cross_entropy;
use sprout_core::kernels::pool::{gap_backward, gap_forward, maxpool_backward, maxpool_forward};
use sprout_core::kernels::Scratch;

/// Cases per property: enough shapes to reach every code path (pointwise and
/// im2col convolutions, strided and unstrided depthwise, odd pool sizes)
/// while the whole file stays within a few seconds.
const CASES: u32 = 32;

/// Finite-difference step for losses that are linear (or piecewise linear
/// away from kinks) in the perturbed value: the difference quotient is exact
/// up to f32 rounding of the forward pass.
const STEP: f32 = 1e-2;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

/// SplitMix64: a tiny, seedable source of test values.
struct Values(u64);

impl Values {
    fn new(seed: u64) -> Self {
        Values(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.range(lo, hi)).collect()
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A random permutation of `0..n`.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }

    /// Up to `k` distinct indices of `0..n` (all of them when `n <= k`).
    fn subset(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(k);
        p
    }

    /// Magnitude in `[lo, hi)` with a random sign.
    fn signed(&mut self, lo: f32, hi: f32) -> f32 {
        let m = self.range(lo, hi);
        if self.below(2) == 0 {
            m
        } else {
            -m
        }
    }
}

/// `sum(out * r)` in f64.
fn dot(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(&o, &w)| o as f64 * w as f64).sum()
}

/// Central difference of `loss` with respect to `v[i]`, dividing by the step
/// actually taken in f32.
fn central_diff(v: &mut [f32], i: usize, step: f32, mut loss: impl FnMut(&[f32]) -> f64) -> f64 {
    let orig = v[i];
    let (hi, lo) = (orig + step, orig - step);
    v[i] = hi;
    let lp = loss(v);
    v[i] = lo;
    let lm = loss(v);
    v[i] = orig;
    (lp - lm) / (hi as f64 - lo as f64)
}

/// Fails unless two computations of the same gradient agree to rounding.
fn same(what: &str, a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= 1e-6 * (1.0 + x.abs()),
            "{}[{}]: {} vs {}",
            what,
            i,
            x,
            y
        );
    }
    Ok(())
}

/// Fails unless `analytic` is within `rtol * magnitude + atol` of `fd`.
fn check(
    what: &str,
    i: usize,
    analytic: f32,
    fd: f64,
    rtol: f64,
    atol: f64,
) -> Result<(), TestCaseError> {
    let a = analytic as f64;
    let tol = rtol * a.abs().max(fd.abs()) + atol;
    prop_assert!(
        (a - fd).abs() <= tol,
        "{}[{}]: analytic {} vs finite difference {} (tolerance {})",
        what,
        i,
        a,
        fd,
        tol
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------

/// Direct definition of the convolution: output values and, per output, the
/// sum of the absolute values of its terms (the scale of its rounding error).
fn conv_direct(g: &ConvGeom, n: usize, x: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = g.out_hw;
    let (ih, iw) = g.in_hw;
    let k = g.kernel;
    let mut y = vec![0.0; n * g.cout * oh * ow];
    let mut mag = vec![0.0; y.len()];
    for s in 0..n {
        for co in 0..g.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut abs) = (0.0f64, 0.0f64);
                    for ci in 0..g.cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                    continue;
                                }
                                let xv = x[((s * g.cin + ci) * ih + iy as usize) * iw + ix as usize]
                                    as f64;
                                let wv = w[((co * g.cin + ci) * k + ky) * k + kx] as f64;
                                acc += xv * wv;
                                abs += (xv * wv).abs();
                            }
                        }
                    }
                    let o = ((s * g.cout + co) * oh + oy) * ow + ox;
                    y[o] = acc;
                    mag[o] = abs;
                }
            }
        }
    }
    (y, mag)
}

fn conv_loss(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    r: &[f32],
    scratch: &mut Scratch,
) -> f64 {
    let mut y = vec![0.0; n * g.cout * g.out_plane()];
    conv2d_forward(g, n, x, w, &mut y, scratch);
    dot(&y, r)
}

/// A kernel size and an input height and width at least as large.
fn kernel_and_input() -> impl Strategy<Value = (usize, usize, usize)> {
    prop::sample::select(vec![1usize, 3, 5]).prop_flat_map(|k| (Just(k), k..=9, k..=9))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv2d_forward_and_backward_match_definition_and_finite_differences(
        (kernel, h, w_) in kernel_and_input(),
        cin in 1usize..=4,
        cout in 1usize..=4,
        stride in 1usize..=3,
        pad in 0usize..=2,
        n in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let g = ConvGeom {
            cin,
            cout,
            kernel,
            stride,
            pad,
            in_hw: (h, w_),
            out_hw: conv_out((h, w_), kernel, stride, pad),
        };
        prop_assert!(g.out_plane() > 0);
        let (xlen, wlen, ylen) = (n * cin * g.in_plane(), cout * g.patch(), n * cout * g.out_plane());
        let mut vals = Values::new(seed);
        let mut x = vals.vec(xlen, -1.0, 1.0);
        let mut w = vals.vec(wlen, -1.0, 1.0);
        let r = vals.vec(ylen, -1.0, 1.0);
        let mut scratch = Scratch::new();

        // Forward against the direct definition.
        let mut y = vec![f32::NAN; ylen];
        conv2d_forward(&g, n, &x, &w, &mut y, &mut scratch);
        let (want, mag) = conv_direct(&g, n, &x, &w);
        for i in 0..ylen {
            let tol = 1e-5 * (1.0 + mag[i]);
            prop_assert!(
                (y[i] as f64 - want[i]).abs() <= tol,
                "y[{}] = {} but the direct convolution gives {}", i, y[i], want[i]
            );
        }

        let mut dx = vec![f32::NAN; xlen];
        let mut dw = vec![f32::NAN; wlen];
        conv2d_backward(&g, n, &x, &w, &r, Some(&mut dx), &mut dw, &mut scratch);

        // The weight gradient does not depend on whether dx is asked for.
        let mut dw_only = vec![f32::NAN; wlen];
        conv2d_backward(&g, n, &x, &w, &r, None, &mut dw_only, &mut scratch);
        same("dw without dx", &dw_only, &dw)?;

        // L is linear in x and in w, so the central difference is exact up to
        // rounding; check a random subset of entries of each.
        for i in vals.subset(xlen, 24) {
            let fd = central_diff(&mut x, i, STEP, |xv| conv_loss(&g, n, xv, &w, &r, &mut scratch));
            check("dx", i, dx[i], fd, 1e-3, 1e-3)?;
        }
        for i in vals.subset(wlen, 24) {
            let fd = central_diff(&mut w, i, STEP, |wv| conv_loss(&g, n, &x, wv, &r, &mut scratch));
            check("dw", i, dw[i], fd, 1e-3, 1e-3)?;
        }

        // Every entry at once: L is bilinear, so <dx, x> = <dw, w> = L.
        let l: f64 = want.iter().zip(&r).map(|(y, r)| y * *r as f64).sum();
        let lmag: f64 = mag.iter().zip(&r).map(|(m, r)| m * (*r as f64).abs()).sum();
        let tol = 1e-5 * (1.0 + lmag);
        let via_x: f64 = dx.iter().zip(&x).map(|(d, v)| *d as f64 * *v as f64).sum();
        let via_w: f64 = dw.iter().zip(&w).map(|(d, v)| *d as f64 * *v as f64).sum();
        prop_assert!((via_x - l).abs() <= tol, "<dx, x> = {} but L = {}", via_x, l);
        prop_assert!((via_w - l).abs() <= tol, "<dw, w> = {} but L = {}", via_w, l);
    }
}

// ---------------------------------------------------------------------------
// Depthwise 3x3 convolution, padding 1
// ---------------------------------------------------------------------------

fn depthwise_direct(g: &DwGeom, n: usize, x: &[f32], k: &[f32]) -> Vec<f64> {
    let (ih, iw) = g.in_hw;
    let (oh, ow) = g.out_hw;
    let c = g.channels;
    let mut y = vec![0.0; n * c * oh * ow];
    for p in 0..n * c {
        let ch = p % c;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0f64;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * g.stride + ky) as isize - 1;
                        let ix = (ox * g.stride + kx) as isize - 1;
                        if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                            continue;
                        }
                        acc += x[(p * ih + iy as usize) * iw + ix as usize] as f64
                            * k[ch * 9 + ky * 3 + kx] as f64;
                    }
                }
                y[(p * oh + oy) * ow + ox] = acc;
            }
        }
    }
    y
}

fn depthwise_loss(g: &DwGeom, n: usize, x: &[f32], k: &[f32], r: &[f32]) -> f64 {
    let mut y = vec![0.0; n * g.channels * g.out_hw.0 * g.out_hw.1];
    depthwise_forward(g, n, x, k, &mut y);
    dot(&y, r)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn depthwise_forward_and_backward_match_definition_and_finite_differences(
        channels in 1usize..=4,
        stride in 1usize..=2,
        h in 1usize..=9,
        w_ in 1usize..=9,
        n in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let g = DwGeom { channels, stride, in_hw: (h, w_), out_hw: conv_out((h, w_), 3, stride, 1) };
        let (xlen, klen) = (n * channels * h * w_, channels * 9);
        let ylen = n * channels * g.out_hw.0 * g.out_hw.1;
        prop_assert!(ylen > 0);
        let mut vals = Values::new(seed);
        let mut x = vals.vec(xlen, -1.0, 1.0);
        let mut k = vals.vec(klen, -1.0, 1.0);
        let r = vals.vec(ylen, -1.0, 1.0);

        let mut y = vec![f32::NAN; ylen];
        depthwise_forward(&g, n, &x, &k, &mut y);
        let want = depthwise_direct(&g, n, &x, &k);
        for i in 0..ylen {
            prop_assert!(
                (y[i] as f64 - want[i]).abs() <= 1e-5,
                "y[{}] = {} but the direct depthwise convolution gives {}", i, y[i], want[i]
            );
        }

        let mut dx = vec![f32::NAN; xlen];
        let mut dk = vec![f32::NAN; klen];
        depthwise_backward(&g, n, &x, &k, &r, Some(&mut dx), &mut dk);
        let mut dk_only = vec![f32::NAN; klen];
        depthwise_backward(&g, n, &x, &k, &r, None, &mut dk_only);
        same("dk without dx", &dk_only, &dk)?;
        let mut dx_only = vec![f32::NAN; xlen];
        depthwise_backward_input(&g, n, &k, &r, &mut dx_only);
        same("dx without dk", &dx_only, &dx)?;

        // Linear in x and in k: every entry of both.
        for i in 0..xlen {
            let fd = central_diff(&mut x, i, STEP, |xv| depthwise_loss(&g, n, xv, &k, &r));
            check("dx", i, dx[i], fd, 1e-3, 1e-3)?;
        }
        for i in 0..klen {
            let fd = central_diff(&mut k, i, STEP, |kv| depthwise_loss(&g, n, &x, kv, &r));
            check("dk", i, dk[i], fd, 1e-3, 1e-3)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Batch normalisation fused with ReLU
// ---------------------------------------------------------------------------

/// Step for inputs of train-mode BN, relative to the channel's standard
/// deviation. The loss is smooth but not linear in them (they move the batch
/// statistics), so the step trades truncation error against the rounding of
/// the f32 statistics.
const BN_STEP: f32 = 2e-2;

/// Per-channel BN folding, the activations `a` and the pre-activations
/// `pre = scale * y + shift`.
struct BnForward {
    mean: Vec<f32>,
    var: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    a: Vec<f32>,
    pre: Vec<f32>,
}

/// Train-mode forward with the kernels: batch statistics, fold, scale-shift-ReLU.
fn bn_train_forward(g: &BnGeom, y: &[f32], gamma: &[f32], beta: &[f32]) -> BnForward {
    let c = g.channels;
    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
    batch_stats(g, y, &mut mean, &mut var);
    bn_forward_with(g, y, gamma, beta, mean, var)
}

/// Forward with given statistics (eval mode uses the running ones).
fn bn_forward_with(
    g: &BnGeom,
    y: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: Vec<f32>,
    var: Vec<f32>,
) -> BnForward {
    let c = g.channels;
    let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
    fold(gamma, beta, &mean, &var, &mut scale, &mut shift);
    let mut a = vec![f32::NAN; y.len()];
    scale_shift_relu(g, y, &scale, &shift, &mut a);
    // The kernel returns only relu(pre). Negating scale and shift negates
    // every rounded product and sum, so relu(pre) - relu(-pre) is pre exactly.
    let (neg_scale, neg_shift): (Vec<f32>, Vec<f32>) =
        scale.iter().zip(&shift).map(|(s, t)| (-s, -t)).unzip();
    let mut neg = vec![f32::NAN; y.len()];
    scale_shift_relu(g, y, &neg_scale, &neg_shift, &mut neg);
    let pre = a.iter().zip(&neg).map(|(p, q)| p - q).collect();
    BnForward {
        mean,
        var,
        scale,
        shift,
        a,
        pre,
    }
}

/// Whether any activation switched between zero and positive.
fn relu_mask_changed(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).any(|(u, v)| (*u > 0.0) != (*v > 0.0))
}

/// `sum(r * pre)` over the activations that are on at `base`: the loss with
/// every ReLU held in its state at `base`. It is smooth in every input, and
/// at `base` its gradient is the loss's gradient as backward defines it
/// (masked by `a > 0`).
fn held_loss(f: &BnForward, base: &BnForward, r: &[f32]) -> f64 {
    f.pre
        .iter()
        .zip(&base.a)
        .zip(r)
        .filter(|((_, a), _)| **a > 0.0)
        .map(|((p, _), w)| *p as f64 * *w as f64)
        .sum()
}

/// Central differences along `v[i]` of the loss and of the loss with the
/// ReLUs held, and whether the step switched any activation on or off (the
/// loss is then not smooth between the two points).
struct BnDiff {
    loss: f64,
    held: f64,
    crossed: bool,
}

fn bn_central_diff(
    v: &mut [f32],
    i: usize,
    step: f32,
    base: &BnForward,
    r: &[f32],
    forward: impl Fn(&[f32]) -> BnForward,
) -> BnDiff {
    let orig = v[i];
    let (hi, lo) = (orig + step, orig - step);
    v[i] = hi;
    let fp = forward(v);
    v[i] = lo;
    let fm = forward(v);
    v[i] = orig;
    let h = hi as f64 - lo as f64;
    BnDiff {
        loss: (dot(&fp.a, r) - dot(&fm.a, r)) / h,
        held: (held_loss(&fp, base, r) - held_loss(&fm, base, r)) / h,
        crossed: relu_mask_changed(&fp.a, &base.a) || relu_mask_changed(&fm.a, &base.a),
    }
}

/// Pre-activations `y` with a different mean and spread per channel, `gamma`
/// of both signs, `beta`, and the loss weights `r`.
fn bn_inputs(g: &BnGeom, vals: &mut Values) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c, pl) = (g.channels, g.plane);
    let len = g.n * c * pl;
    let offset = vals.vec(c, -2.0, 2.0);
    let spread = vals.vec(c, 0.2, 2.0);
    let y = (0..len)
        .map(|i| offset[i / pl % c] + spread[i / pl % c] * vals.range(-1.0, 1.0))
        .collect();
    let gamma = (0..c).map(|_| vals.signed(0.3, 1.5)).collect();
    let beta = vals.vec(c, -1.0, 1.0);
    let r = vals.vec(len, -1.0, 1.0);
    (y, gamma, beta, r)
}

/// `relu(gamma * (y - mean) / sqrt(var + eps) + beta)` in f64.
fn bn_relu_direct(
    g: &BnGeom,
    y: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f64],
    var: &[f64],
) -> Vec<f64> {
    let (c, pl) = (g.channels, g.plane);
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / pl % c;
            let xh = (v as f64 - mean[ch]) / (var[ch] + BN_EPS as f64).sqrt();
            (gamma[ch] as f64 * xh + beta[ch] as f64).max(0.0)
        })
        .collect()
}

/// Checks the activations against [`bn_relu_direct`], allowing a few ulps of
/// the terms of `scale * y + shift`.
fn check_bn_forward(
    g: &BnGeom,
    f: &BnForward,
    y: &[f32],
    want: &[f64],
) -> Result<(), TestCaseError> {
    for i in 0..y.len() {
        let ch = i / g.plane % g.channels;
        let tol = 1e-6 * ((y[i] * f.scale[ch]).abs() as f64 + f.shift[ch].abs() as f64) + 1e-7;
        prop_assert!(
            (f.a[i] as f64 - want[i]).abs() <= tol,
            "a[{}] = {} but the definition gives {}",
            i,
            f.a[i],
            want[i]
        );
        prop_assert!(
            f.pre[i].max(0.0) == f.a[i],
            "pre[{}] = {} does not match a = {}",
            i,
            f.pre[i],
            f.a[i]
        );
    }
    Ok(())
}

/// Per-channel mean and biased variance in f64.
fn channel_stats(g: &BnGeom, y: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (c, pl) = (g.channels, g.plane);
    let m = (g.n * pl) as f64;
    let mut mean = vec![0.0; c];
    for (i, &v) in y.iter().enumerate() {
        mean[i / pl % c] += v as f64 / m;
    }
    let mut ss = vec![0.0; c];
    for (i, &v) in y.iter().enumerate() {
        let d = v as f64 - mean[i / pl % c];
        ss[i / pl % c] += d * d;
    }
    let var = ss.iter().map(|s| s / m).collect();
    (mean, var)
}

/// Checks `dgamma` and `dbeta` against central differences of `forward`
/// (step [`STEP`]): always against the loss with the ReLUs held, and against
/// the loss itself where the step switches no activation. The statistics do
/// not depend on gamma and beta, so both losses are linear in them and the
/// quotients exact up to rounding.
fn check_bn_param_grads(
    base: &BnForward,
    r: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dgamma: &[f32],
    dbeta: &[f32],
    forward: impl Fn(&[f32], &[f32]) -> BnForward,
) -> Result<(), TestCaseError> {
    for ch in 0..gamma.len() {
        let mut gm = gamma.to_vec();
        let d = bn_central_diff(&mut gm, ch, STEP, base, r, |gv| forward(gv, beta));
        check("dgamma (ReLUs held)", ch, dgamma[ch], d.held, 1e-3, 1e-3)?;
        if !d.crossed {
            check("dgamma", ch, dgamma[ch], d.loss, 1e-3, 1e-3)?;
        }
        let mut bt = beta.to_vec();
        let d = bn_central_diff(&mut bt, ch, STEP, base, r, |bv| forward(gamma, bv));
        check("dbeta (ReLUs held)", ch, dbeta[ch], d.held, 1e-3, 1e-3)?;
        if !d.crossed {
            check("dbeta", ch, dbeta[ch], d.loss, 1e-3, 1e-3)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Train mode: the statistics are those of the batch, so every input of
    /// a channel moves every output of that channel.
    ///
    /// Every input is checked against the loss with the ReLUs held in their
    /// state at the base point, which is smooth. Against the loss itself,
    /// inputs near a kink are skipped: those whose own pre-ReLU value
    /// `scale * y + shift` lies within `3 * step * |scale|` of zero (the step
    /// could carry it across), and, because a step in one input also moves
    /// the batch mean and variance and so every pre-activation of its
    /// channel, those whose step switches any other activation on or off.
    #[test]
    fn batchnorm_relu_train_backward_matches_finite_differences(
        n in 2usize..=4,
        channels in 1usize..=3,
        plane in 1usize..=16,
        seed in any::<u64>(),
    ) {
        let g = BnGeom { n, channels, plane };
        let len = n * channels * plane;
        let mut vals = Values::new(seed);
        let (mut y, gamma, beta, r) = bn_inputs(&g, &mut vals);
        let base = bn_train_forward(&g, &y, &gamma, &beta);

        // Statistics and forward against the definitions. The kernel may sum
        // in f32 lanes, so allow the rounding of sums of up to 64 terms.
        let (mean, var) = channel_stats(&g, &y);
        for ch in 0..channels {
            prop_assert!(
                (base.mean[ch] as f64 - mean[ch]).abs() <= 1e-5 * (1.0 + mean[ch].abs()),
                "batch mean[{}] = {} but want {}", ch, base.mean[ch], mean[ch]
            );
            prop_assert!(
                (base.var[ch] as f64 - var[ch]).abs() <= 1e-4 * var[ch],
                "batch variance[{}] = {} but want the biased variance {}", ch, base.var[ch], var[ch]
            );
        }
        // The forward is compared with the definition at the kernel's own
        // statistics, whose rounding is bounded above.
        let kmean: Vec<f64> = base.mean.iter().map(|&v| v as f64).collect();
        let kvar: Vec<f64> = base.var.iter().map(|&v| v as f64).collect();
        check_bn_forward(&g, &base, &y, &bn_relu_direct(&g, &y, &gamma, &beta, &kmean, &kvar))?;

        let mut dy = vec![f32::NAN; len];
        let mut dgamma = vec![f32::NAN; channels];
        let mut dbeta = vec![f32::NAN; channels];
        backward_train(&g, &y, &base.a, &r, &base.mean, &base.var, &gamma, &mut dy, &mut dgamma, &mut dbeta);

        for i in 0..len {
            let ch = i / plane % channels;
            let step = BN_STEP * (base.var[ch] + BN_EPS).sqrt();
            let d = bn_central_diff(&mut y, i, step, &base, &r, |yv| bn_train_forward(&g, yv, &gamma, &beta));
            let atol = 1e-3 * base.scale[ch].abs() as f64;
            check("dy (ReLUs held)", i, dy[i], d.held, 2e-3, atol)?;
            let near_kink = base.pre[i].abs() < 3.0 * step * base.scale[ch].abs();
            if !near_kink && !d.crossed {
                check("dy", i, dy[i], d.loss, 2e-3, atol)?;
            }
        }

        check_bn_param_grads(&base, &r, &gamma, &beta, &dgamma, &dbeta, |gm, bt| {
            bn_train_forward(&g, &y, gm, bt)
        })?;
    }

    /// Running statistics move toward the batch statistics with momentum 0.1,
    /// the variance corrected to its unbiased estimate, as PyTorch does.
    #[test]
    fn batchnorm_running_statistics_follow_momentum_and_unbiased_variance(
        n in 1usize..=4,
        channels in 1usize..=3,
        plane in 1usize..=16,
        seed in any::<u64>(),
    ) {
        prop_assume!(n * plane >= 2);
        let g = BnGeom { n, channels, plane };
        let mut vals = Values::new(seed);
        let (y, _, _, _) = bn_inputs(&g, &mut vals);
        let run_mean0 = vals.vec(channels, -1.0, 1.0);
        let run_var0 = vals.vec(channels, 0.01, 2.0);
        let (mut mean, mut var) = (vec![0.0; channels], vec![0.0; channels]);
        batch_stats(&g, &y, &mut mean, &mut var);
        let (mut run_mean, mut run_var) = (run_mean0.clone(), run_var0.clone());
        update_running(&g, &mean, &var, &mut run_mean, &mut run_var);

        prop_assert!((BN_MOMENTUM - 0.1).abs() < 1e-7);
        // The update is checked against the kernel's own batch statistics
        // (themselves checked in the train-mode test), so the only rounding
        // is that of the update itself.
        let m = (n * plane) as f64;
        for ch in 0..channels {
            let unbiased = var[ch] as f64 * m / (m - 1.0);
            let want_mean = 0.9 * run_mean0[ch] as f64 + 0.1 * mean[ch] as f64;
            let want_var = 0.9 * run_var0[ch] as f64 + 0.1 * unbiased;
            let mean_tol = 1e-6 * (run_mean0[ch].abs() as f64 + mean[ch].abs() as f64) + 1e-9;
            let var_tol = 1e-6 * want_var;
            prop_assert!(
                (run_mean[ch] as f64 - want_mean).abs() <= mean_tol,
                "running mean[{}] = {} but want {}", ch, run_mean[ch], want_mean
            );
            prop_assert!(
                (run_var[ch] as f64 - want_var).abs() <= var_tol,
                "running var[{}] = {} but want {} (unbiased batch variance {})",
                ch, run_var[ch], want_var, unbiased
            );
        }
    }

    /// Eval mode: fixed running statistics make BN affine, so the loss is
    /// piecewise linear in y and a step moves only its own pre-activation.
    /// Every input is checked against the loss with the ReLUs held; against
    /// the loss itself, inputs whose pre-ReLU value lies within
    /// `3 * step * |scale|` of zero are skipped (the kink).
    #[test]
    fn batchnorm_relu_eval_backward_matches_finite_differences(
        n in 1usize..=4,
        channels in 1usize..=3,
        plane in 1usize..=16,
        seed in any::<u64>(),
    ) {
        let g = BnGeom { n, channels, plane };
        let len = n * channels * plane;
        let mut vals = Values::new(seed);
        let (mut y, gamma, beta, r) = bn_inputs(&g, &mut vals);
        let run_mean = vals.vec(channels, -1.0, 1.0);
        let run_var = vals.vec(channels, 0.2, 2.0);
        let forward = |yv: &[f32], gm: &[f32], bt: &[f32]| {
            bn_forward_with(&g, yv, gm, bt, run_mean.clone(), run_var.clone())
        };
        let base = forward(&y, &gamma, &beta);

        let mean64: Vec<f64> = run_mean.iter().map(|&v| v as f64).collect();
        let var64: Vec<f64> = run_var.iter().map(|&v| v as f64).collect();
        check_bn_forward(&g, &base, &y, &bn_relu_direct(&g, &y, &gamma, &beta, &mean64, &var64))?;

        let mut dy = vec![f32::NAN; len];
        let mut dgamma = vec![f32::NAN; channels];
        let mut dbeta = vec![f32::NAN; channels];
        backward_eval(
            &g, &y, &base.a, &r, &run_mean, &run_var, &gamma, &mut dy, Some((&mut dgamma, &mut dbeta)),
        );
        let mut dy_only = vec![f32::NAN; len];
        backward_eval(&g, &y, &base.a, &r, &run_mean, &run_var, &gamma, &mut dy_only, None);
        same("dy without parameter gradients", &dy_only, &dy)?;

        for i in 0..len {
            let ch = i / plane % channels;
            let d = bn_central_diff(&mut y, i, STEP, &base, &r, |yv| forward(yv, &gamma, &beta));
            check("dy (ReLUs held)", i, dy[i], d.held, 1e-3, 1e-4)?;
            if base.pre[i].abs() >= 3.0 * STEP * base.scale[ch].abs() {
                check("dy", i, dy[i], d.loss, 1e-3, 1e-4)?;
            }
        }

        check_bn_param_grads(&base, &r, &gamma, &beta, &dgamma, &dbeta, |gm, bt| forward(&y, gm, bt))?;
    }
}

// ---------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------

/// Direct 2x2 max-pool, and for each output the row-major index of the first
/// maximum of its window.
fn maxpool_direct(planes: usize, (h, w): (usize, usize), x: &[f32]) -> (Vec<f32>, Vec<usize>) {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = Vec::with_capacity(planes * oh * ow);
    let mut arg = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = p * h * w + 2 * oy * w + 2 * ox;
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let i = p * h * w + (2 * oy + dy) * w + 2 * ox + dx;
                    if x[i] > x[best] {
                        best = i;
                    }
                }
                out.push(x[best]);
                arg.push(best);
            }
        }
    }
    (out, arg)
}

proptest! {
    #![proptest_config(config())]

    /// Distinct inputs, spaced well beyond the step, so no window has a tie
    /// and the step never changes which input is its maximum.
    #[test]
    fn maxpool_backward_matches_finite_differences(
        planes in 1usize..=6,
        h in 1usize..=9,
        w in 1usize..=9,
        seed in any::<u64>(),
    ) {
        let len = planes * h * w;
        let olen = planes * (h / 2) * (w / 2);
        let mut vals = Values::new(seed);
        let mut x: Vec<f32> = vals
            .permutation(len)
            .into_iter()
            .map(|rank| (rank as f32 - len as f32 / 2.0) * 0.1)
            .collect();
        let r = vals.vec(olen, -1.0, 1.0);

        let mut a = vec![f32::NAN; olen];
        maxpool_forward(planes, (h, w), &x, &mut a);
        let (want, _) = maxpool_direct(planes, (h, w), &x);
        prop_assert_eq!(&a, &want);

        let mut dx = vec![f32::NAN; len];
        maxpool_backward(planes, (h, w), &x, &r, &mut dx);
        for i in 0..len {
            let fd = central_diff(&mut x, i, STEP, |xv| {
                let mut a = vec![0.0; olen];
                maxpool_forward(planes, (h, w), xv, &mut a);
                dot(&a, &r)
            });
            check("dx", i, dx[i], fd, 1e-4, 1e-5)?;
        }
    }

    /// With ties (values from a handful of levels) each output gradient goes
    /// to the first maximum of its window in row-major order; rows and
    /// columns beyond the last full window get none.
    #[test]
    fn maxpool_backward_routes_ties_to_first_maximum(
        planes in 1usize..=4,
        h in 1usize..=7,
        w in 1usize..=7,
        levels in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let len = planes * h * w;
        let olen = planes * (h / 2) * (w / 2);
        let mut vals = Values::new(seed);
        let x: Vec<f32> = (0..len).map(|_| vals.below(levels) as f32).collect();
        let r = vals.vec(olen, 0.5, 1.5);
        let (_, arg) = maxpool_direct(planes, (h, w), &x);
        let mut want = vec![0.0f32; len];
        for (o, &i) in arg.iter().enumerate() {
            want[i] += r[o];
        }
        let mut dx = vec![f32::NAN; len];
        maxpool_backward(planes, (h, w), &x, &r, &mut dx);
        prop_assert_eq!(&dx, &want);
    }

    #[test]
    fn global_average_pool_backward_matches_finite_differences(
        planes in 1usize..=6,
        plane in 1usize..=64,
        seed in any::<u64>(),
    ) {
        let len = planes * plane;
        let mut vals = Values::new(seed);
        let mut x = vals.vec(len, -1.0, 1.0);
        let r = vals.vec(planes, -1.0, 1.0);

        let mut f = vec![f32::NAN; planes];
        gap_forward(planes, plane, &x, &mut f);
        for p in 0..planes {
            let want = x[p * plane..(p + 1) * plane].iter().map(|&v| v as f64).sum::<f64>() / plane as f64;
            prop_assert!((f[p] as f64 - want).abs() <= 1e-6, "f[{}] = {} but the mean is {}", p, f[p], want);
        }

        let mut dx = vec![f32::NAN; len];
        gap_backward(planes, plane, &r, &mut dx);
        for i in 0..len {
            let fd = central_diff(&mut x, i, STEP, |xv| {
                let mut f = vec![0.0; planes];
                gap_forward(planes, plane, xv, &mut f);
                dot(&f, &r)
            });
            check("dx", i, dx[i], fd, 1e-3, 1e-4)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Linear layer and loss
// ---------------------------------------------------------------------------

fn linear_loss(
    n: usize,
    features: usize,
    classes: usize,
    f: &[f32],
    w: &[f32],
    b: &[f32],
    r: &[f32],
) -> f64 {
    let mut out = vec![0.0; n * classes];
    linear_forward(n, features, classes, f, w, b, &mut out);
    dot(&out, r)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn linear_forward_and_backward_match_definition_and_finite_differences(
        n in 1usize..=4,
        features in 1usize..=10,
        classes in 1usize..=6,
        seed in any::<u64>(),
    ) {
        let mut vals = Values::new(seed);
        let mut f = vals.vec(n * features, -1.0, 1.0);
        let mut w = vals.vec(classes * features, -1.0, 1.0);
        let mut b = vals.vec(classes, -1.0, 1.0);
        let r = vals.vec(n * classes, -1.0, 1.0);

        let mut out = vec![f32::NAN; n * classes];
        linear_forward(n, features, classes, &f, &w, &b, &mut out);
        for row in 0..n {
            for k in 0..classes {
                let want = b[k] as f64
                    + (0..features).map(|j| f[row * features + j] as f64 * w[k * features + j] as f64).sum::<f64>();
                let got = out[row * classes + k] as f64;
                prop_assert!((got - want).abs() <= 1e-5, "out[{}][{}] = {} but want {}", row, k, got, want);
            }
        }

        let mut df = vec![f32::NAN; n * features];
        let mut dw = vec![f32::NAN; classes * features];
        let mut db = vec![f32::NAN; classes];
        linear_backward(n, features, classes, &f, &w, &r, Some(&mut df), &mut dw, &mut db);
        let mut dw_only = vec![f32::NAN; classes * features];
        let mut db_only = vec![f32::NAN; classes];
        linear_backward(n, features, classes, &f, &w, &r, None, &mut dw_only, &mut db_only);
        same("dw without dx", &dw_only, &dw)?;
        same("db without df", &db_only, &db)?;

        for i in 0..w.len() {
            let fd = central_diff(&mut w, i, STEP, |wv| linear_loss(n, features, classes, &f, wv, &b, &r));
            check("dw", i, dw[i], fd, 1e-3, 1e-4)?;
        }
        for i in 0..b.len() {
            let fd = central_diff(&mut b, i, STEP, |bv| linear_loss(n, features, classes, &f, &w, bv, &r));
            check("db", i, db[i], fd, 1e-3, 1e-4)?;
        }
        for i in 0..f.len() {
            let fd = central_diff(&mut f, i, STEP, |fv| linear_loss(n, features, classes, fv, &w, &b, &r));
            check("df", i, df[i], fd, 1e-3, 1e-4)?;
        }
    }

    /// Mean softmax cross-entropy: the loss against a direct log-sum-exp, the
    /// count of rows whose arg-max is the label, and `dlogits` against finite
    /// differences of the returned mean loss. About half the rows get their
    /// label's logit raised so the count varies between 0 and `n`.
    #[test]
    fn softmax_cross_entropy_matches_definition_and_finite_differences(
        n in 1usize..=5,
        classes in 2usize..=7,
        seed in any::<u64>(),
    ) {
        let mut vals = Values::new(seed);
        let mut logits = vals.vec(n * classes, -3.0, 3.0);
        let labels: Vec<u32> = (0..n).map(|_| vals.below(classes) as u32).collect();
        for row in 0..n {
            if vals.below(2) == 0 {
                logits[row * classes + labels[row] as usize] += 3.0;
            }
        }

        let mut d = vec![f32::NAN; n * classes];
        let (loss, correct) = softmax_cross_entropy(n, classes, &logits, &labels, &mut d);

        let mut want_loss = 0.0f64;
        let mut want_correct = 0;
        for row in 0..n {
            let z: Vec<f64> = logits[row * classes..(row + 1) * classes].iter().map(|&v| v as f64).collect();
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            want_loss += (lse - z[labels[row] as usize]) / n as f64;
            let mut arg = 0;
            for k in 1..classes {
                if z[k] > z[arg] {
                    arg = k;
                }
            }
            want_correct += usize::from(arg == labels[row] as usize);
        }
        prop_assert!(
            (loss as f64 - want_loss).abs() <= 1e-5 * (1.0 + want_loss),
            "loss {} but log-sum-exp gives {}", loss, want_loss
        );
        prop_assert_eq!(correct, want_correct);

        for row in 0..n {
            let s: f64 = d[row * classes..(row + 1) * classes].iter().map(|&v| v as f64).sum();
            prop_assert!(s.abs() <= 1e-6, "row {} of dlogits sums to {}, not 0", row, s);
        }
        let mut unused_grad = vec![0.0; n * classes];
        for i in 0..logits.len() {
            let fd = central_diff(&mut logits, i, STEP, |lv| {
                softmax_cross_entropy(n, classes, lv, &labels, &mut unused_grad).0 as f64
            });
            check("dlogits", i, d[i], fd, 1e-3, 2e-4)?;
        }
    }
}
