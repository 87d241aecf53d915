//! Splitting steepest descent (Liu, Wu, Liu 2019: "Splitting Steepest
//! Descent for Growing Neural Architectures"), the baseline that splits the
//! channels whose splitting matrix has the most negative minimum eigenvalue,
//! along the matching eigenvector. For every channel of a layer at once, on the
//! same [`LayerBatch`] view as the Gauss-Newton estimator.
//!
//! For channel `c` with incoming kernel `w_c`, im2col input patches `x` and
//! pre-activation `y_c = w_c . x`, the splitting matrix is
//!
//! ```text
//! S_c = sum_s sum_p g_c[s,p] * sigma''(y_c[s,p]) * x[s,p] x[s,p]^T
//!     = E_s[ sum_p S * g_c[s,p] * sigma''(y_c[s,p]) * x[s,p] x[s,p]^T ]
//! ```
//!
//! where `g = dL/dh` is the gradient of the mean mini-batch loss `L` at the
//! output `h = relu(scale * y + shift)` of the unit's own BN + ReLU. Per-sample
//! gradients are `S * g` (as in the estimator), so the second line is the batch
//! mean over the `S` samples of the paper's per-sample matrix: `S_c` is the
//! semi-Hessian of the mean loss `L`. With that normalisation, splitting
//! channel `c` into `w_c + eps v` and `w_c - eps v` with halved outgoing
//! weights changes the loss by `eps^2 / 2 * v^T S_c v + O(eps^3)`, the same
//! scale as the estimator's first-order term `1/S * sum_s u_s`.
//!
//! Conventions:
//! - sigma is frozen as in the estimator: BN at its running statistics
//!   (`Sigma::scale`/`shift`), so `sigma(y) = relu(scale * y + shift)` and
//!   `sigma''(y) = scale^2 * relu''(scale * y + shift)`.
//! - `relu''` is the second derivative of the softplus surrogate
//!   `ln(1 + e^{beta t}) / beta` with `beta = `[`SOFTPLUS_BETA`] (as in the
//!   authors' code): `beta * s(beta t) * (1 - s(beta t))`, `s` the logistic
//!   function.
//! - What follows the unit's BN + ReLU (max-pool, or MobileNet's next
//!   depthwise conv + BN + ReLU) belongs to the rest of the network: it only
//!   shapes `g` through its backward pass (see [`relu_output_grad`]); its own
//!   curvature (max-pool switches, the depthwise ReLU) is not part of `S`.
//!
//! Products `S V` for all channels at once never form a `d x d` matrix
//! (`d = cin * k * k`): with `V` stacked like the layer's kernel,
//! `t = conv(x, V)`, `m = g * sigma''(y)` and `(S V)_c` is the weight gradient
//! of the conv for the output gradient `t * m` ([`splitting_products`]).
//!
//! ```
//! use sprout_core::arch::Arch;
//! use sprout_core::estimator::{FrozenSigma, LayerBatch};
//! use sprout_core::engine::Mode;
//! use sprout_core::model::Model;
//! use sprout_core::rng::Rng;
//! use sprout_core::splitting::{min_eigen, SplitWorkspace};
//! use sprout_core::Network;
//!
//! let arch = Arch::vgg19(4, [1, 32, 32], 10).unwrap();
//! let net = Network::init(&arch, 0);
//! let (n, layer) = (2, 3);
//! let images: Vec<f32> = (0..n * 32 * 32).map(|i| (i % 7) as f32 * 0.1).collect();
//! let mut model = Model::new(&arch, n);
//! model.forward(&net, &images, n, Mode::Eval);
//! let (loss, _) = model.loss(&[1, 7]);
//! let mut grads = net.zeros_like();
//! model.backward(&net, &mut grads);
//!
//! let sigma = FrozenSigma::of(&net, layer);
//! let batch = LayerBatch::from_model(&model, layer, sigma.view(), loss);
//! let split = min_eigen(&batch, 30, &mut Rng::new(1), &mut SplitWorkspace::default());
//! assert_eq!(split.eigenvalues.len(), 4);
//! assert_eq!(split.directions.len(), arch.units()[layer].weight_len());
//! assert!(split.eigenvalues.iter().all(|l| l.is_finite()));
//! ```

use crate::arch::DwGeom;
use crate::estimator::{LayerBatch, SigmaPost};
use crate::kernels::conv::{conv2d_backward, conv2d_forward};
use crate::kernels::depthwise::depthwise_backward;
use crate::kernels::pool::maxpool_backward;
use crate::kernels::Scratch;
use crate::rng::Rng;
use alloc::vec;
use alloc::vec::Vec;

/// `beta` of the softplus surrogate whose second derivative stands in for
/// `relu''` (the authors' choice).
pub const SOFTPLUS_BETA: f32 = 3.0;

/// A channel whose eigen-residual `|S v - lambda v|` falls below this fraction
/// of its largest observed `|S q|` (unit `q`) has converged and stops moving:
/// below it the residual is f32 round-off.
const RESIDUAL_TOL: f64 = 1e-6;

/// The minimum eigenpair of every channel's splitting matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitDirections {
    /// `lambda_min(S_c)` per channel `[cout]`, as the Rayleigh quotient of the
    /// returned direction (one last exact product). Negative: splitting along
    /// the direction decreases the loss by about `eps^2 / 2 * |lambda|`.
    pub eigenvalues: Vec<f32>,
    /// Unit eigenvectors `[cout, cin, k, k]`, stacked like the layer's kernel;
    /// the sign is arbitrary (a split uses `+v` and `-v`).
    pub directions: Vec<f32>,
}

/// Reusable buffers of the splitting products and the eigen-solver.
#[derive(Clone, Debug, Default)]
pub struct SplitWorkspace {
    /// `h = relu(scale * y + shift)` (max-pool post only).
    h: Vec<f32>,
    /// `g` at `h`, then `m = g * sigma''(y)`.
    m: Vec<f32>,
    /// The depthwise output gradient, then `t = conv(x, V)` of the products.
    t: Vec<f32>,
    /// The depthwise kernel gradient (computed alongside, unused).
    dk: Vec<f32>,
    solver: SolverWorkspace,
    scratch: Option<Scratch>,
}

/// The eigen-solver's state: iterate, residual, previous step and their products.
#[derive(Clone, Debug, Default)]
pub struct SolverWorkspace {
    x: Vec<f32>,
    sx: Vec<f32>,
    r: Vec<f32>,
    sr: Vec<f32>,
    p: Vec<f32>,
    sp: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `relu''(t)` of the softplus surrogate: `beta * s(beta t) * (1 - s(beta t))`,
/// written as `beta * e / (1 + e)^2` with `e = exp(-beta |t|)` so that neither
/// side of the kink cancels to zero in f32.
#[inline]
pub fn relu_curvature(t: f32) -> f32 {
    let e = libm::expf(-SOFTPLUS_BETA * libm::fabsf(t));
    SOFTPLUS_BETA * e / ((1.0 + e) * (1.0 + e))
}

/// `g = dL/dh` for every sample, channel and position `[n, cout, Hc, Wc]`: the
/// gradient of the mean mini-batch loss at `h = relu(scale * y + shift)`, the
/// output of the unit's own BN + ReLU (before its ReLU mask). Without a post
/// it is `grad_a`; after a max-pool, the max-pool backward of `grad_a` given
/// `h`; in MobileNet, the backward of the next block's frozen depthwise conv,
/// BN and ReLU (the estimator's sigma backward, stopped at `h`).
pub fn relu_output_grad<'w>(b: &LayerBatch, ws: &'w mut SplitWorkspace) -> &'w [f32] {
    let u = b.unit;
    let (n, c) = (b.n, u.cout);
    let (pc, po) = (u.conv_hw.0 * u.conv_hw.1, u.out_hw.0 * u.out_hw.1);
    let conv_len = n * u.conv_len();
    let s = &b.sigma;
    match s.post {
        SigmaPost::None => {
            sized(&mut ws.m, conv_len).copy_from_slice(&b.grad_a[..conv_len]);
        }
        SigmaPost::MaxPool => {
            let h = sized(&mut ws.h, conv_len);
            // Same arithmetic as the estimator's sigma forward, so that the
            // max-pool picks the same window maxima as the model did.
            for p in 0..n * c {
                let ch = p % c;
                for (o, v) in h[p * pc..(p + 1) * pc]
                    .iter_mut()
                    .zip(&b.y[p * pc..(p + 1) * pc])
                {
                    *o = (s.scale[ch] * v + s.shift[ch]).max(0.0);
                }
            }
            let gh = sized(&mut ws.m, conv_len);
            maxpool_backward(n * c, u.conv_hw, &ws.h[..conv_len], b.grad_a, gh);
        }
        SigmaPost::Depthwise {
            stride,
            kernel,
            scale,
            ..
        } => {
            // dL/dz through the depthwise ReLU (mask from the unit output a).
            let gz = sized(&mut ws.t, n * u.out_len());
            for p in 0..n * c {
                let ch = p % c;
                for i in p * po..(p + 1) * po {
                    gz[i] = if b.a[i] > 0.0 {
                        b.grad_a[i] * scale[ch]
                    } else {
                        0.0
                    };
                }
            }
            let g = DwGeom {
                channels: c,
                stride,
                in_hw: u.conv_hw,
                out_hw: u.out_hw,
            };
            // The kernel gradient is not wanted; the input it reads is
            // irrelevant to dx, so y stands in for h.
            let dk = sized(&mut ws.dk, c * 9);
            let gh = sized(&mut ws.m, conv_len);
            depthwise_backward(&g, n, b.y, kernel, &ws.t[..n * u.out_len()], Some(gh), dk);
        }
    }
    &ws.m[..conv_len]
}

/// Fills `ws.m` with `m = g * sigma''(y)` for every element of `y`.
fn curvature_weights(b: &LayerBatch, ws: &mut SplitWorkspace) {
    let u = b.unit;
    let (n, c) = (b.n, u.cout);
    let pc = u.conv_hw.0 * u.conv_hw.1;
    relu_output_grad(b, ws);
    let m = &mut ws.m[..n * u.conv_len()];
    for p in 0..n * c {
        let ch = p % c;
        let (scale, shift) = (b.sigma.scale[ch], b.sigma.shift[ch]);
        let k = scale * scale;
        for (m, y) in m[p * pc..(p + 1) * pc]
            .iter_mut()
            .zip(&b.y[p * pc..(p + 1) * pc])
        {
            *m *= k * relu_curvature(scale * y + shift);
        }
    }
}

/// `out = S V` with `ws.m` already holding the curvature weights.
fn products(b: &LayerBatch, v: &[f32], ws: &mut SplitWorkspace, out: &mut [f32]) {
    let u = b.unit;
    let conv_len = b.n * u.conv_len();
    let geom = u.conv_geom();
    let scratch = ws.scratch.get_or_insert_with(Scratch::new);
    let t = sized(&mut ws.t, conv_len);
    conv2d_forward(&geom, b.n, b.x, v, t, scratch);
    for (t, m) in t.iter_mut().zip(&ws.m[..conv_len]) {
        *t *= m;
    }
    // g is the mean-loss gradient: the weight gradient's sum over samples is
    // already the batch mean of the per-sample matrices (module docs).
    conv2d_backward(&geom, b.n, b.x, v, t, None, out, scratch);
}

/// `out[c] = S_c v[c]` for every channel: `v` and `out` are `[cout, cin, k, k]`,
/// stacked like the layer's kernel, one vector per channel. Costs one conv and
/// one weight-gradient conv. `S_c` is the semi-Hessian of the mean mini-batch
/// loss (module docs): the sum over samples and positions of
/// `g * sigma''(y) * x x^T` with `g` the mean-loss gradient from
/// [`relu_output_grad`].
pub fn splitting_products(b: &LayerBatch, v: &[f32], ws: &mut SplitWorkspace, out: &mut [f32]) {
    let len = b.unit.weight_len();
    assert!(v.len() >= len && out.len() >= len);
    curvature_weights(b, ws);
    products(b, v, ws, out);
}

/// The minimum eigenvalue and a unit eigenvector of every channel's
/// splitting matrix, from a random start drawn from `rng`. See [`min_eigen_from`].
pub fn min_eigen(
    b: &LayerBatch,
    iterations: usize,
    rng: &mut Rng,
    ws: &mut SplitWorkspace,
) -> SplitDirections {
    let start: Vec<f32> = (0..b.unit.weight_len()).map(|_| rng.normal()).collect();
    min_eigen_from(b, &start, iterations, ws)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// `a -= k * b`.
fn axpy(a: &mut [f32], k: f64, b: &[f32]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a = (*a as f64 - k * *b as f64) as f32;
    }
}

fn scale(a: &mut [f32], k: f64) {
    for a in a.iter_mut() {
        *a = (*a as f64 * k) as f32;
    }
}

/// [`min_eigen`] from the start vectors `start` (`[cout, cin, k, k]`, any
/// nonzero norm per channel; a previous batch's directions give a warm start).
///
/// Each channel minimises the Rayleigh quotient `v^T S_c v / v^T v` by
/// locally optimal preconditioner-free gradient descent (LOBPCG with one
/// vector): every step takes the minimum Ritz pair of `S_c` on
/// `span{v, S_c v - rho v, previous step}`, which is gradient descent on the
/// Rayleigh quotient with the optimal step and momentum. All channels share
/// each product `S V`; a step costs one product, and the solve
/// `iterations + 2` products in all (fewer when every channel converges
/// early). The returned eigenvalues are the Rayleigh quotients of the
/// returned unit directions under one last exact product.
pub fn min_eigen_from(
    b: &LayerBatch,
    start: &[f32],
    iterations: usize,
    ws: &mut SplitWorkspace,
) -> SplitDirections {
    let u = b.unit;
    curvature_weights(b, ws);
    let mut solver = core::mem::take(&mut ws.solver);
    let solved = solve_min_eigen(
        u.cout,
        u.fan_in(),
        start,
        iterations,
        &mut solver,
        &mut |v: &[f32], out: &mut [f32]| {
            products(b, v, ws, out);
            Ok::<(), core::convert::Infallible>(())
        },
    );
    ws.solver = solver;
    match solved {
        Ok(dirs) => dirs,
        Err(never) => match never {},
    }
}

/// `out = S V` for every channel at once: an engine's splitting-matrix products.
pub type Products<'a, E> = dyn FnMut(&[f32], &mut [f32]) -> Result<(), E> + 'a;

/// The eigen-solver of [`min_eigen_from`] for `c` channels of `d`-long
/// vectors, with the products `out = S V` of all channels at once from
/// `products` (`V` and `out` stacked like a layer's kernel): any engine's
/// splitting-matrix products drive the same solver.
pub fn solve_min_eigen<E>(
    c: usize,
    d: usize,
    start: &[f32],
    iterations: usize,
    ws: &mut SolverWorkspace,
    products: &mut Products<'_, E>,
) -> Result<SplitDirections, E> {
    let len = c * d;
    assert!(start.len() >= len);
    let mut x = core::mem::take(&mut ws.x);
    let mut sx = core::mem::take(&mut ws.sx);
    let mut r = core::mem::take(&mut ws.r);
    let mut sr = core::mem::take(&mut ws.sr);
    let mut p = core::mem::take(&mut ws.p);
    let mut sp = core::mem::take(&mut ws.sp);
    for buf in [&mut x, &mut sx, &mut r, &mut sr, &mut p, &mut sp] {
        sized(buf, len);
    }
    x[..len].copy_from_slice(&start[..len]);
    for ch in 0..c {
        let xc = &mut x[ch * d..(ch + 1) * d];
        let norm = libm::sqrt(dot(xc, xc));
        if norm > 0.0 && norm.is_finite() {
            scale(xc, 1.0 / norm);
        } else {
            // A zero start is replaced by the first basis vector.
            xc.fill(0.0);
            xc[0] = 1.0;
        }
    }
    products(&x[..len], &mut sx[..len])?;
    let mut lambda = vec![0.0f64; c];
    // Largest |S q| seen for a unit q: a lower bound on the spectral norm.
    let mut norm_s = vec![0.0f64; c];
    let mut active = vec![true; c];
    let mut has_p = vec![false; c];
    for ch in 0..c {
        let r = ch * d..(ch + 1) * d;
        lambda[ch] = dot(&x[r.clone()], &sx[r.clone()]);
        norm_s[ch] = libm::sqrt(dot(&sx[r.clone()], &sx[r]));
    }
    for _ in 0..iterations {
        // Residuals, normalised; converged channels stop.
        for ch in 0..c {
            let rg = ch * d..(ch + 1) * d;
            let rc = &mut r[rg.clone()];
            rc.copy_from_slice(&sx[rg.clone()]);
            axpy(rc, lambda[ch], &x[rg.clone()]);
            let rn = libm::sqrt(dot(rc, rc));
            if !active[ch] || rn <= RESIDUAL_TOL * norm_s[ch] || !rn.is_finite() {
                active[ch] = false;
                rc.fill(0.0);
            } else {
                scale(rc, 1.0 / rn);
            }
        }
        if !active.iter().any(|a| *a) {
            break;
        }
        products(&r[..len], &mut sr[..len])?;
        for ch in (0..c).filter(|ch| active[*ch]) {
            let rg = ch * d..(ch + 1) * d;
            let nsr = libm::sqrt(dot(&sr[rg.clone()], &sr[rg.clone()]));
            norm_s[ch] = norm_s[ch].max(nsr);
            let (k, y) = {
                let mut basis: [(&mut [f32], &mut [f32]); 3] = [
                    (&mut x[rg.clone()], &mut sx[rg.clone()]),
                    (&mut r[rg.clone()], &mut sr[rg.clone()]),
                    (&mut p[rg.clone()], &mut sp[rg.clone()]),
                ];
                let k = orthonormalise(&mut basis, if has_p[ch] { 3 } else { 2 });
                let mut a = [[0.0f64; 3]; 3];
                for i in 0..k {
                    for j in 0..k {
                        a[i][j] = 0.5 * (dot(basis[i].0, basis[j].1) + dot(basis[j].0, basis[i].1));
                    }
                }
                (k, min_eigenpair(&mut a, k))
            };
            // New step p = y1 q1 + y2 q2 (and S p), then x = y0 x + p.
            let (pc, spc) = (&mut p[rg.clone()], &mut sp[rg.clone()]);
            let (rc, src) = (&r[rg.clone()], &sr[rg.clone()]);
            for i in 0..d {
                let (mut pv, mut spv) = (y[1] * rc[i] as f64, y[1] * src[i] as f64);
                if k == 3 {
                    pv += y[2] * pc[i] as f64;
                    spv += y[2] * spc[i] as f64;
                }
                pc[i] = pv as f32;
                spc[i] = spv as f32;
            }
            let (xc, sxc) = (&mut x[rg.clone()], &mut sx[rg.clone()]);
            for i in 0..d {
                xc[i] = (y[0] * xc[i] as f64 + pc[i] as f64) as f32;
                sxc[i] = (y[0] * sxc[i] as f64 + spc[i] as f64) as f32;
            }
            let xn = libm::sqrt(dot(xc, xc));
            scale(xc, 1.0 / xn);
            scale(sxc, 1.0 / xn);
            let pn = libm::sqrt(dot(pc, pc));
            has_p[ch] = pn > 1e-12 && k > 1;
            if has_p[ch] {
                scale(pc, 1.0 / pn);
                scale(spc, 1.0 / pn);
            }
            lambda[ch] = dot(xc, sxc);
        }
    }
    // The tracked S x drifts with round-off: one exact product for the result.
    products(&x[..len], &mut sx[..len])?;
    let eigenvalues = (0..c)
        .map(|ch| {
            let rg = ch * d..(ch + 1) * d;
            dot(&x[rg.clone()], &sx[rg]) as f32
        })
        .collect();
    let directions = x[..len].to_vec();
    ws.x = x;
    ws.sx = sx;
    ws.r = r;
    ws.sr = sr;
    ws.p = p;
    ws.sp = sp;
    Ok(SplitDirections {
        eigenvalues,
        directions,
    })
}

/// Modified Gram-Schmidt (twice) on the first `k` vectors of `basis`, each
/// paired with its product `S q`, which follows the same linear combinations.
/// The first vector is already unit. Vectors that are (numerically) in the span
/// of the earlier ones are dropped by moving later ones forward; returns how
/// many remain.
fn orthonormalise(basis: &mut [(&mut [f32], &mut [f32]); 3], mut k: usize) -> usize {
    let mut i = 1;
    while i < k {
        let (done, rest) = basis.split_at_mut(i);
        let (v, sv) = &mut rest[0];
        let before = libm::sqrt(dot(v, v));
        for _ in 0..2 {
            for (q, sq) in done.iter() {
                let a = dot(q, v);
                axpy(v, a, q);
                axpy(sv, a, sq);
            }
        }
        let after = libm::sqrt(dot(v, v));
        if before > 0.0 && after > 1e-5 * before {
            scale(v, 1.0 / after);
            scale(sv, 1.0 / after);
            i += 1;
        } else {
            // Drop it: later vectors move forward (the step p keeps its slot
            // semantics only through the returned count).
            for j in i..k - 1 {
                let (lo, hi) = basis.split_at_mut(j + 1);
                lo[j].0.copy_from_slice(hi[0].0);
                lo[j].1.copy_from_slice(hi[0].1);
            }
            k -= 1;
        }
    }
    k
}

/// The smallest eigenvalue's unit eigenvector of the symmetric leading
/// `k x k` block of `a` (`k <= 3`), by cyclic Jacobi rotations.
fn min_eigenpair(a: &mut [[f64; 3]; 3], k: usize) -> [f64; 3] {
    let mut v = [[0.0f64; 3]; 3];
    for i in 0..k {
        v[i][i] = 1.0;
    }
    for _ in 0..50 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..k).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-30 * diag || off == 0.0 {
            break;
        }
        for pi in 0..k {
            for qi in pi + 1..k {
                if a[pi][qi] == 0.0 {
                    continue;
                }
                let theta = (a[qi][qi] - a[pi][pi]) / (2.0 * a[pi][qi]);
                let t = theta.signum() / (theta.abs() + libm::sqrt(theta * theta + 1.0));
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / libm::sqrt(t * t + 1.0);
                let sn = t * cs;
                for r in 0..k {
                    let (arp, arq) = (a[r][pi], a[r][qi]);
                    a[r][pi] = cs * arp - sn * arq;
                    a[r][qi] = sn * arp + cs * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[pi][r], a[qi][r]);
                    a[pi][r] = cs * apr - sn * aqr;
                    a[qi][r] = sn * apr + cs * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r][pi], v[r][qi]);
                    v[r][pi] = cs * vrp - sn * vrq;
                    v[r][qi] = sn * vrp + cs * vrq;
                }
            }
        }
    }
    let best = (0..k)
        .min_by(|i, j| a[*i][*i].total_cmp(&a[*j][*j]))
        .unwrap_or(0);
    let mut y = [0.0f64; 3];
    for r in 0..k {
        y[r] = v[r][best];
    }
    y
}

/// The average of per-batch [`SplitDirections`] over several mini-batches:
/// each batch is solved on its own (a warm start from [`SplitAverage::mean`]
/// of the earlier batches saves iterations), eigenvalues are averaged, and
/// directions are summed with each batch's sign flipped to agree with the
/// running sum, then normalised per channel.
///
/// The mean of per-batch minimum eigenvalues is at most the minimum
/// eigenvalue of the mean matrix (`lambda_min` is concave), so it reads a
/// little more negative than a solve on all batches together would.
#[derive(Clone, Debug, Default)]
pub struct SplitAverage {
    eigenvalues: Vec<f64>,
    directions: Vec<f64>,
    batches: usize,
}

impl SplitAverage {
    /// An empty average.
    pub fn new() -> Self {
        SplitAverage::default()
    }

    /// Batches added so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Adds one batch's solve; every batch must have the same shape.
    pub fn add(&mut self, s: &SplitDirections) {
        let c = s.eigenvalues.len();
        if self.batches == 0 {
            self.eigenvalues = vec![0.0; c];
            self.directions = vec![0.0; s.directions.len()];
        }
        assert!(
            self.eigenvalues.len() == c && self.directions.len() == s.directions.len(),
            "SplitAverage::add: shape changed between batches"
        );
        let d = s.directions.len().checked_div(c).unwrap_or(0);
        for ch in 0..c {
            let (acc, v) = (
                &mut self.directions[ch * d..(ch + 1) * d],
                &s.directions[ch * d..(ch + 1) * d],
            );
            let agree: f64 = acc.iter().zip(v).map(|(a, v)| a * *v as f64).sum();
            let sign = if agree < 0.0 { -1.0 } else { 1.0 };
            for (a, v) in acc.iter_mut().zip(v) {
                *a += sign * *v as f64;
            }
            self.eigenvalues[ch] += s.eigenvalues[ch] as f64;
        }
        self.batches += 1;
    }

    /// Mean eigenvalues and normalised mean directions (`None` before any batch).
    pub fn mean(&self) -> Option<SplitDirections> {
        if self.batches == 0 {
            return None;
        }
        let c = self.eigenvalues.len();
        let d = self.directions.len().checked_div(c).unwrap_or(0);
        let mut directions = vec![0.0f32; self.directions.len()];
        for ch in 0..c {
            let acc = &self.directions[ch * d..(ch + 1) * d];
            let norm = libm::sqrt(acc.iter().map(|a| a * a).sum());
            if norm > 0.0 {
                for (o, a) in directions[ch * d..(ch + 1) * d].iter_mut().zip(acc) {
                    *o = (a / norm) as f32;
                }
            }
        }
        Some(SplitDirections {
            eigenvalues: self
                .eigenvalues
                .iter()
                .map(|e| (e / self.batches as f64) as f32)
                .collect(),
            directions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_eigenpair_of_3x3() {
        // Eigenvalues of [[2, 1, 0], [1, 2, 1], [0, 1, 2]]: 2 - sqrt 2, 2, 2 + sqrt 2.
        let mut a = [[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]];
        let y = min_eigenpair(&mut a, 3);
        let h = libm::sqrt(0.5);
        let want = [0.5, -h, 0.5];
        let cos: f64 = y.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!((cos.abs() - 1.0).abs() < 1e-12, "{y:?}");
        let min = (0..3).map(|i| a[i][i]).fold(f64::INFINITY, f64::min);
        assert!((min - (2.0 - 2.0 * h)).abs() < 1e-12, "{min}");
    }

    #[test]
    fn min_eigenpair_of_smaller_blocks() {
        let mut a = [[1.0, 3.0, 9.0], [3.0, 1.0, 9.0], [9.0, 9.0, 9.0]];
        let y = min_eigenpair(&mut a, 2);
        assert!((y[0] + y[1]).abs() < 1e-12 && y[2] == 0.0, "{y:?}");
        let mut a = [[-4.0, 0.0, 0.0]; 3];
        assert_eq!(min_eigenpair(&mut a, 1), [1.0, 0.0, 0.0]);
    }

    #[test]
    fn softplus_curvature_peaks_at_the_kink() {
        assert!((relu_curvature(0.0) - SOFTPLUS_BETA / 4.0).abs() < 1e-7);
        assert!(relu_curvature(50.0) < 1e-30 && relu_curvature(-50.0) < 1e-30);
        // Far from the kink the value stays accurate on both sides.
        let far = 3.0 * libm::expf(-30.0);
        assert!((relu_curvature(10.0) / far - 1.0).abs() < 1e-5);
        assert!((relu_curvature(-10.0) / far - 1.0).abs() < 1e-5);
        assert!((relu_curvature(0.3) - relu_curvature(-0.3)).abs() < 1e-7);
    }
}
