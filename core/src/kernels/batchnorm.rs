//! Batch normalisation fused with the ReLU that always follows it in sprout's
//! networks. NCHW; statistics per channel over batch and space.
//!
//! Train mode normalises with the batch statistics and updates the running
//! statistics (momentum 0.1, unbiased variance, as PyTorch does); eval mode
//! uses the running statistics. Both are `a = relu(scale * y + shift)` with
//! `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`.

use super::simd::{self, load};
use crate::arch::BnGeom;
use crate::par::{self, SharedMut};
use wide::f32x8;

/// Variance epsilon (PyTorch's default).
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// `(sum(g * m), sum(g * m * (y - mu)))` over one plane, where `m = [a > 0]`.
#[inline]
fn masked_sums(y: &[f32], a: &[f32], g: &[f32], mu: f32) -> (f32, f32) {
    let n = y.len();
    let (a, g) = (&a[..n], &g[..n]);
    let muv = f32x8::splat(mu);
    simd::sum2(
        n,
        |i| simd::relu_mask(load(a, i), load(g, i)),
        |i| if a[i] > 0.0 { g[i] } else { 0.0 },
        |i| simd::relu_mask(load(a, i), load(g, i)) * (load(y, i) - muv),
        |i| if a[i] > 0.0 { g[i] * (y[i] - mu) } else { 0.0 },
    )
}

/// `(sum(y), sum((y - shift)^2))` over one plane.
#[inline]
fn plane_sums(y: &[f32], shift: f32) -> (f32, f32) {
    let sv = f32x8::splat(shift);
    simd::sum2(
        y.len(),
        |i| load(y, i),
        |i| y[i],
        |i| {
            let d = load(y, i) - sv;
            d * d
        },
        |i| (y[i] - shift) * (y[i] - shift),
    )
}

/// Per-channel batch mean and biased variance (planes summed in f32 lanes, planes combined in f64).
pub fn batch_stats(g: &BnGeom, y: &[f32], mean: &mut [f32], var: &mut [f32]) {
    let (c, pl) = (g.channels, g.plane);
    assert!(y.len() >= g.n * c * pl && mean.len() >= c && var.len() >= c);
    let mp = SharedMut::new(mean);
    let vp = SharedMut::new(var);
    par::for_each(c, |ch| {
        // Shift by the first value so the squared deviations stay well conditioned.
        let shift = y[ch * pl];
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for smp in 0..g.n {
            let (a, b) = plane_sums(&y[(smp * c + ch) * pl..][..pl], shift);
            s += a as f64;
            s2 += b as f64;
        }
        let cnt = g.count() as f64;
        let m = s / cnt;
        let d = m - shift as f64;
        let var = (s2 / cnt - d * d).max(0.0);
        // SAFETY: channel ch's statistics have one writer.
        unsafe {
            mp.write(ch, m as f32);
            vp.write(ch, var as f32);
        }
    });
}

/// Folds BN into `scale`/`shift` for the given mean and variance.
pub fn fold(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    scale: &mut [f32],
    shift: &mut [f32],
) {
    for i in 0..gamma.len() {
        let inv = 1.0 / libm::sqrtf(var[i] + BN_EPS);
        scale[i] = gamma[i] * inv;
        shift[i] = beta[i] - mean[i] * scale[i];
    }
}

/// Moves running statistics toward the batch statistics (unbiased variance).
pub fn update_running(
    g: &BnGeom,
    mean: &[f32],
    var: &[f32],
    run_mean: &mut [f32],
    run_var: &mut [f32],
) {
    let m = g.count() as f32;
    let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    for i in 0..g.channels {
        run_mean[i] = (1.0 - BN_MOMENTUM) * run_mean[i] + BN_MOMENTUM * mean[i];
        run_var[i] = (1.0 - BN_MOMENTUM) * run_var[i] + BN_MOMENTUM * var[i] * unbias;
    }
}

/// `a = relu(scale * y + shift)` per channel.
pub fn scale_shift_relu(g: &BnGeom, y: &[f32], scale: &[f32], shift: &[f32], a: &mut [f32]) {
    let (c, pl) = (g.channels, g.plane);
    assert!(y.len() >= g.n * c * pl && a.len() >= g.n * c * pl);
    let ap = SharedMut::new(a);
    par::for_each(g.n * c, |p| {
        let ch = p % c;
        let (sc, sh) = (scale[ch], shift[ch]);
        // SAFETY: plane p has one writer.
        let out = unsafe { ap.slice(p * pl, pl) };
        let yp = &y[p * pl..(p + 1) * pl];
        let (scv, shv) = (f32x8::splat(sc), f32x8::splat(sh));
        simd::map(
            out,
            |i| (load(yp, i) * scv + shv).max(f32x8::ZERO),
            |i| (yp[i] * sc + sh).max(0.0),
        );
    });
}

/// Backward of BN + ReLU in train mode (batch statistics).
///
/// Inputs: the BN input `y`, the ReLU output `a` (its sign is the ReLU mask),
/// the upstream gradient `da`, batch `mean` and `var`, and `gamma`. Writes
/// `dy` and the parameter gradients `dgamma`, `dbeta` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn backward_train(
    g: &BnGeom,
    y: &[f32],
    a: &[f32],
    da: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    dy: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let (c, pl) = (g.channels, g.plane);
    let m = g.count() as f32;
    let dyp = SharedMut::new(dy);
    let dgp = SharedMut::new(dgamma);
    let dbp = SharedMut::new(dbeta);
    par::for_each(c, |ch| {
        let inv = 1.0 / libm::sqrtf(var[ch] + BN_EPS);
        let mu = mean[ch];
        // Sums of the masked gradient and of it times x_hat.
        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
        for smp in 0..g.n {
            let o = (smp * c + ch) * pl;
            let (s1, s2) = masked_sums(&y[o..o + pl], &a[o..o + pl], &da[o..o + pl], mu);
            sg += s1 as f64;
            sgx += s2 as f64;
        }
        let sgx = sgx as f32 * inv;
        let sg = sg as f32;
        // dy = gamma * inv / m * (m * g - sum(g) - x_hat * sum(g * x_hat))
        let k = gamma[ch] * inv / m;
        for smp in 0..g.n {
            let o = (smp * c + ch) * pl;
            // SAFETY: channel ch's planes have one writer.
            let out = unsafe { dyp.slice(o, pl) };
            let (yp, ap, gp) = (&y[o..o + pl], &a[o..o + pl], &da[o..o + pl]);
            // dy = k * (m * g - sg - (y - mu) * inv * sgx), folded into one multiply-add.
            let (km, c0, c1) = (k * m, -k * sg + k * mu * inv * sgx, -k * inv * sgx);
            let (kv, c0v, c1v) = (f32x8::splat(km), f32x8::splat(c0), f32x8::splat(c1));
            simd::map(
                out,
                |i| kv * simd::relu_mask(load(ap, i), load(gp, i)) + c0v + c1v * load(yp, i),
                |i| km * (if ap[i] > 0.0 { gp[i] } else { 0.0 }) + c0 + c1 * yp[i],
            );
        }
        // SAFETY: one writer per channel.
        unsafe {
            dgp.write(ch, sgx);
            dbp.write(ch, sg);
        }
    });
}

/// Backward of BN + ReLU in eval mode (fixed statistics, so BN is affine):
/// `dy = da * [a > 0] * scale`. Parameter gradients are written when given.
#[allow(clippy::too_many_arguments)]
pub fn backward_eval(
    g: &BnGeom,
    y: &[f32],
    a: &[f32],
    da: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    dy: &mut [f32],
    param_grads: Option<(&mut [f32], &mut [f32])>,
) {
    let (c, pl) = (g.channels, g.plane);
    let dyp = SharedMut::new(dy);
    let grads = param_grads.map(|(dg, db)| (SharedMut::new(dg), SharedMut::new(db)));
    par::for_each(c, |ch| {
        let inv = 1.0 / libm::sqrtf(var[ch] + BN_EPS);
        let (mu, sc) = (mean[ch], gamma[ch] * inv);
        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
        for smp in 0..g.n {
            let o = (smp * c + ch) * pl;
            // SAFETY: channel ch's planes have one writer.
            let out = unsafe { dyp.slice(o, pl) };
            let (yp, ap, gp) = (&y[o..o + pl], &a[o..o + pl], &da[o..o + pl]);
            let scv = f32x8::splat(sc);
            simd::map(
                out,
                |i| simd::relu_mask(load(ap, i), load(gp, i)) * scv,
                |i| if ap[i] > 0.0 { gp[i] * sc } else { 0.0 },
            );
            if grads.is_some() {
                let (s1, s2) = masked_sums(yp, ap, gp, mu);
                sg += s1 as f64;
                sgx += (s2 * inv) as f64;
            }
        }
        if let Some((dgp, dbp)) = grads {
            // SAFETY: one writer per channel.
            unsafe {
                dgp.write(ch, sgx as f32);
                dbp.write(ch, sg as f32);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    fn loss(g: &BnGeom, y: &[f32], gamma: &[f32], beta: &[f32], wts: &[f32]) -> f64 {
        let c = g.channels;
        let (mut m, mut v, mut sc, mut sh) =
            (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        batch_stats(g, y, &mut m, &mut v);
        fold(gamma, beta, &m, &v, &mut sc, &mut sh);
        let mut a = vec![0.0; y.len()];
        scale_shift_relu(g, y, &sc, &sh, &mut a);
        a.iter()
            .zip(wts)
            .map(|(a, w)| (*a as f64) * (*w as f64))
            .sum()
    }

    #[test]
    fn train_backward_matches_finite_differences() {
        let g = BnGeom {
            n: 4,
            channels: 2,
            plane: 25,
        };
        let len = g.n * g.channels * g.plane;
        let mut r = Rng::new(1);
        let mut y: Vec<f32> = (0..len).map(|_| r.normal()).collect();
        let wts: Vec<f32> = (0..len).map(|_| r.normal()).collect();
        let gamma = [1.3, 0.7];
        let beta = [0.1, -0.2];
        let (mut m, mut v, mut sc, mut sh) =
            (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
        batch_stats(&g, &y, &mut m, &mut v);
        fold(&gamma, &beta, &m, &v, &mut sc, &mut sh);
        let mut a = vec![0.0; len];
        scale_shift_relu(&g, &y, &sc, &sh, &mut a);
        let (mut dy, mut dg, mut db) = (vec![0.0; len], vec![0.0; 2], vec![0.0; 2]);
        backward_train(&g, &y, &a, &wts, &m, &v, &gamma, &mut dy, &mut dg, &mut db);
        for i in 0..len {
            let o = y[i];
            y[i] = o + 1e-3;
            let lp = loss(&g, &y, &gamma, &beta, &wts);
            y[i] = o - 1e-3;
            let lm = loss(&g, &y, &gamma, &beta, &wts);
            y[i] = o;
            let fd = (lp - lm) / 2e-3;
            // Skip elements within the finite-difference step of the ReLU kink.
            if (a[i] > 0.0 && a[i] < 0.01)
                || (a[i] == 0.0 && (y[i] * sc[i % 50 / 25] + sh[i % 50 / 25]).abs() < 0.01)
            {
                continue;
            }
            assert!(
                (fd - dy[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
                "dy[{i}]: {fd} vs {}",
                dy[i]
            );
        }
    }
}
