//! Splitting steepest descent (Liu et al. 2019) against dense splitting
//! matrices built by brute force.
//!
//! For a unit of a small network, every channel's `S_c` is summed explicitly
//! over samples and positions from im2col patches of the layer input, the
//! gradient at the unit's BN + ReLU output (computed here from the definition:
//! copied, routed through the max-pool windows, or through the frozen
//! depthwise conv, BN and ReLU) and the softplus-surrogate `sigma''`.
//!
//! - `splitting_products` equals `S_c v_c` for random `v`.
//! - `min_eigen` finds the smallest eigenvalue and its eigenvector, checked
//!   against a dense Jacobi eigen-decomposition.
//! - `S` is symmetric: `u^T (S v) = v^T (S u)`.
//! - A channel whose gradient is zero has `S = 0` and eigenvalue 0.

use sprout_core::arch::Post;
use sprout_core::estimator::{FrozenSigma, LayerBatch};
use sprout_core::model::Model;
use sprout_core::rng::Rng;
use sprout_core::splitting::{
    min_eigen, relu_output_grad, splitting_products, SplitAverage, SplitDirections, SplitWorkspace,
    SOFTPLUS_BETA,
};
use sprout_core::{Arch, Family, Network};
use sprout_tests::evaluated_network;

/// A network with random weights and BN state and the model after an
/// eval-mode forward, loss and backward on random images.
struct Fixture {
    net: Network,
    model: Model,
    loss: f32,
}

impl Fixture {
    fn new(arch: Arch, seed: u64, n: usize) -> Fixture {
        let (net, _, model, loss) = evaluated_network(arch, seed, n);
        Fixture { net, model, loss }
    }

    /// The first fixture from `seed` on in which gradient reaches every unit
    /// of `layers` (small random networks in evaluation mode often have a
    /// layer whose ReLUs are all off, and a zero gradient proves nothing).
    fn alive(arch: Arch, seed: u64, layers: &[usize]) -> Fixture {
        (seed..seed + 50)
            .map(|s| Fixture::new(arch.clone(), s, 2))
            .find(|f| {
                layers
                    .iter()
                    .all(|&l| f.model.output_grad(l).iter().any(|g| *g != 0.0))
            })
            .expect("no seed gives a network with gradient everywhere")
    }

    fn vgg(seed: u64, widths: Vec<usize>, layers: &[usize]) -> Fixture {
        let arch = Arch::new(Family::Vgg19, [1, 32, 32], 5, widths).unwrap();
        Fixture::alive(arch, seed, layers)
    }

    fn tiny_vgg(seed: u64) -> Fixture {
        let widths = vec![3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 3];
        Fixture::vgg(seed, widths, &VGG_LAYERS)
    }

    fn tiny_mobilenet(seed: u64) -> Fixture {
        let widths = vec![4, 3, 4, 5, 3, 4, 5, 3, 4, 3, 4, 5, 3, 4];
        let arch = Arch::new(Family::MobilenetV1, [3, 8, 8], 4, widths).unwrap();
        Fixture::alive(arch, seed, &MOBILENET_LAYERS)
    }

    fn sigma(&self, layer: usize) -> FrozenSigma {
        FrozenSigma::of(&self.net, layer)
    }

    fn batch<'a>(&'a self, layer: usize, sigma: &'a FrozenSigma) -> LayerBatch<'a> {
        LayerBatch::from_model(&self.model, layer, sigma.view(), self.loss)
    }
}

/// `dL/dh` at the unit's BN + ReLU output, from the definition.
fn grad_at_h(b: &LayerBatch, fs: &FrozenSigma) -> Vec<f64> {
    let u = b.unit;
    let (n, c) = (b.n, u.cout);
    let (hc, wc) = u.conv_hw;
    let (ho, wo) = u.out_hw;
    let mut g = vec![0.0f64; n * c * hc * wc];
    match u.post {
        Post::None => {
            for (g, a) in g.iter_mut().zip(b.grad_a) {
                *g = *a as f64;
            }
        }
        Post::MaxPool => {
            for s in 0..n {
                for ch in 0..c {
                    let plane = (s * c + ch) * hc * wc;
                    let h = |i: usize| (fs.scale[ch] * b.y[plane + i] + fs.shift[ch]).max(0.0);
                    for oy in 0..ho {
                        for ox in 0..wo {
                            // First maximum of the window in row-major order.
                            let mut best = 2 * oy * wc + 2 * ox;
                            for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                                let i = (2 * oy + dy) * wc + 2 * ox + dx;
                                if h(i) > h(best) {
                                    best = i;
                                }
                            }
                            g[plane + best] += b.grad_a[((s * c + ch) * ho + oy) * wo + ox] as f64;
                        }
                    }
                }
            }
        }
        Post::Depthwise { stride } => {
            let dw = fs.depthwise.as_ref().unwrap();
            assert_eq!(dw.stride, stride);
            for s in 0..n {
                for ch in 0..c {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let o = ((s * c + ch) * ho + oy) * wo + ox;
                            if b.a[o] <= 0.0 {
                                continue;
                            }
                            let gz = b.grad_a[o] as f64 * dw.scale[ch] as f64;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy * stride + ky) as isize - 1;
                                    let ix = (ox * stride + kx) as isize - 1;
                                    if iy < 0 || ix < 0 || iy >= hc as isize || ix >= wc as isize {
                                        continue;
                                    }
                                    let i = ((s * c + ch) * hc + iy as usize) * wc + ix as usize;
                                    g[i] += dw.kernel[ch * 9 + ky * 3 + kx] as f64 * gz;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    g
}

/// `S_c` of every channel as dense `d x d` matrices (row-major), summed over
/// samples and positions of explicit im2col patches.
fn dense_splitting(b: &LayerBatch, fs: &FrozenSigma) -> Vec<Vec<f64>> {
    let u = b.unit;
    let (n, c, k) = (b.n, u.cout, u.kernel);
    let d = u.fan_in();
    let (hi, wi) = u.in_hw;
    let (hc, wc) = u.conv_hw;
    let g = grad_at_h(b, fs);
    let beta = SOFTPLUS_BETA as f64;
    let mut mats = vec![vec![0.0f64; d * d]; c];
    let mut patch = vec![0.0f64; d];
    for s in 0..n {
        for oy in 0..hc {
            for ox in 0..wc {
                for ci in 0..u.cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * u.stride + ky) as isize - u.pad as isize;
                            let ix = (ox * u.stride + kx) as isize - u.pad as isize;
                            let inside = iy >= 0 && ix >= 0 && iy < hi as isize && ix < wi as isize;
                            patch[(ci * k + ky) * k + kx] = if inside {
                                b.x[((s * u.cin + ci) * hi + iy as usize) * wi + ix as usize] as f64
                            } else {
                                0.0
                            };
                        }
                    }
                }
                for ch in 0..c {
                    let i = ((s * c + ch) * hc + oy) * wc + ox;
                    let (scale, shift) = (fs.scale[ch] as f64, fs.shift[ch] as f64);
                    let t = scale * b.y[i] as f64 + shift;
                    let sig = 1.0 / (1.0 + (-beta * t).exp());
                    let coef = g[i] * scale * scale * beta * sig * (1.0 - sig);
                    if coef == 0.0 {
                        continue;
                    }
                    let m = &mut mats[ch];
                    for r in 0..d {
                        let pr = coef * patch[r];
                        for q in 0..d {
                            m[r * d + q] += pr * patch[q];
                        }
                    }
                }
            }
        }
    }
    mats
}

fn mat_vec(m: &[f64], v: &[f32]) -> Vec<f64> {
    let d = v.len();
    (0..d)
        .map(|r| (0..d).map(|q| m[r * d + q] * v[q] as f64).sum())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Eigenvalues (ascending) and eigenvectors (`vecs[i]` for `vals[i]`) of a
/// dense symmetric matrix, by cyclic Jacobi rotations.
fn jacobi_eigen(m: &[f64], d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _ in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-28 * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..d {
                    let (arp, arq) = (a[r * d + p], a[r * d + q]);
                    a[r * d + p] = c * arp - s * arq;
                    a[r * d + q] = s * arp + c * arq;
                }
                for r in 0..d {
                    let (apr, aqr) = (a[p * d + r], a[q * d + r]);
                    a[p * d + r] = c * apr - s * aqr;
                    a[q * d + r] = s * apr + c * aqr;
                }
                for r in 0..d {
                    let (vrp, vrq) = (v[r * d + p], v[r * d + q]);
                    v[r * d + p] = c * vrp - s * vrq;
                    v[r * d + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|i, j| a[i * d + i].total_cmp(&a[j * d + j]));
    let vals = order.iter().map(|&i| a[i * d + i]).collect();
    let vecs = order
        .iter()
        .map(|&i| (0..d).map(|r| v[r * d + i]).collect())
        .collect();
    (vals, vecs)
}

#[test]
fn jacobi_reference_decomposes() {
    let mut rng = Rng::new(5);
    let d = 7;
    let mut m = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let x = rng.normal() as f64;
            m[i * d + j] = x;
            m[j * d + i] = x;
        }
    }
    let (vals, vecs) = jacobi_eigen(&m, d);
    for (l, v) in vals.iter().zip(&vecs) {
        let v32: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        let mv = mat_vec(&m, &v32);
        let res: f64 = mv.iter().zip(v).map(|(a, b)| (a - l * b).powi(2)).sum();
        assert!(res.sqrt() < 1e-6, "residual {res}");
        assert!((norm(v) - 1.0).abs() < 1e-12);
    }
    assert!(vals.windows(2).all(|w| w[0] <= w[1]));
}

/// The layers each check visits: every post kind, the first layer and deep ones.
const VGG_LAYERS: [usize; 6] = [0, 1, 2, 3, 7, 15];
const MOBILENET_LAYERS: [usize; 5] = [0, 1, 2, 5, 13];

fn fixtures() -> Vec<(Fixture, &'static [usize])> {
    vec![
        (Fixture::tiny_vgg(11), &VGG_LAYERS[..]),
        (Fixture::tiny_mobilenet(12), &MOBILENET_LAYERS[..]),
    ]
}

fn random_vectors(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.normal()).collect()
}

#[test]
fn gradient_at_relu_output_matches_definition() {
    for (f, layers) in fixtures() {
        for &layer in layers {
            let fs = f.sigma(layer);
            let b = f.batch(layer, &fs);
            let want = grad_at_h(&b, &fs);
            let mut ws = SplitWorkspace::default();
            let got = relu_output_grad(&b, &mut ws);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            assert!(scale > 0.0, "layer {layer}: no gradient reaches h");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * scale,
                    "layer {layer} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn products_match_dense_splitting_matrices() {
    let mut rng = Rng::new(21);
    for (f, layers) in fixtures() {
        for &layer in layers {
            let fs = f.sigma(layer);
            let b = f.batch(layer, &fs);
            let (c, d) = (b.unit.cout, b.unit.fan_in());
            let mats = dense_splitting(&b, &fs);
            let mut ws = SplitWorkspace::default();
            for _ in 0..3 {
                let v = random_vectors(c * d, &mut rng);
                let mut out = vec![f32::NAN; c * d];
                splitting_products(&b, &v, &mut ws, &mut out);
                let mut nonzero = 0;
                for ch in 0..c {
                    let want = mat_vec(&mats[ch], &v[ch * d..(ch + 1) * d]);
                    let scale = norm(&want);
                    nonzero += usize::from(scale > 0.0);
                    for i in 0..d {
                        let got = out[ch * d + i] as f64;
                        assert!(
                            (got - want[i]).abs() <= 1e-5 * scale + 1e-12,
                            "layer {layer} channel {ch} [{i}]: {got} vs {}",
                            want[i]
                        );
                    }
                }
                assert!(nonzero > 0, "layer {layer}: every S_c v is zero");
            }
        }
    }
}

/// `min_eigen` against the dense decomposition of every channel. Returns how
/// many channels had a well separated smallest eigenvalue (where the
/// eigenvector is checked too).
fn check_min_eigen(b: &LayerBatch, fs: &FrozenSigma, iterations: usize, seed: u64) -> usize {
    let (c, d) = (b.unit.cout, b.unit.fan_in());
    let mats = dense_splitting(b, fs);
    let mut ws = SplitWorkspace::default();
    let got = min_eigen(b, iterations, &mut Rng::new(seed), &mut ws);
    assert_eq!(got.eigenvalues.len(), c);
    assert_eq!(got.directions.len(), c * d);
    let mut separated = 0;
    for ch in 0..c {
        let (vals, vecs) = jacobi_eigen(&mats[ch], d);
        let spread = vals[0].abs().max(vals[d - 1].abs());
        let lambda = got.eigenvalues[ch] as f64;
        let v = &got.directions[ch * d..(ch + 1) * d];
        let vn: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((vn - 1.0).abs() < 1e-5, "channel {ch}: |v| = {vn}");
        assert!(
            (lambda - vals[0]).abs() <= 1e-3 * vals[0].abs() + 1e-6 * spread,
            "layer with d = {d}, channel {ch}: eigenvalue {lambda} vs {} (spectrum {:?})",
            vals[0],
            &vals[..d.min(4)]
        );
        if d > 1 && vals[1] - vals[0] > 1e-2 * spread {
            separated += 1;
            let cos: f64 = v.iter().zip(&vecs[0]).map(|(a, b)| *a as f64 * b).sum();
            assert!(
                cos.abs() > 0.999,
                "layer with d = {d}, channel {ch}: |cos| = {} (spectrum {:?})",
                cos.abs(),
                &vals[..d.min(4)]
            );
        }
    }
    separated
}

#[test]
fn min_eigen_matches_dense_decomposition() {
    let mut separated = 0;
    for (f, layers) in fixtures() {
        for &layer in layers {
            let fs = f.sigma(layer);
            separated += check_min_eigen(&f.batch(layer, &fs), &fs, 60, layer as u64);
        }
    }
    assert!(
        separated >= 10,
        "only {separated} separated channels checked"
    );
}

#[test]
fn min_eigen_converges_on_a_wide_input() {
    // d = 12 * 9 = 108 for layer 1.
    let mut widths = vec![3; 16];
    widths[0] = 12;
    let f = Fixture::vgg(31, widths, &[1]);
    let fs = f.sigma(1);
    let separated = check_min_eigen(&f.batch(1, &fs), &fs, 150, 3);
    assert!(
        separated >= 2,
        "only {separated} separated channels checked"
    );
}

#[test]
fn splitting_matrices_are_symmetric() {
    let mut rng = Rng::new(41);
    for (f, layers) in fixtures() {
        for &layer in layers {
            let fs = f.sigma(layer);
            let b = f.batch(layer, &fs);
            let (c, d) = (b.unit.cout, b.unit.fan_in());
            let mut ws = SplitWorkspace::default();
            let (u, v) = (
                random_vectors(c * d, &mut rng),
                random_vectors(c * d, &mut rng),
            );
            let (mut su, mut sv) = (vec![0.0; c * d], vec![0.0; c * d]);
            splitting_products(&b, &u, &mut ws, &mut su);
            splitting_products(&b, &v, &mut ws, &mut sv);
            for ch in 0..c {
                let r = ch * d..(ch + 1) * d;
                let dot = |a: &[f32], b: &[f32]| -> f64 {
                    a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
                };
                let (usv, vsu) = (
                    dot(&u[r.clone()], &sv[r.clone()]),
                    dot(&v[r.clone()], &su[r.clone()]),
                );
                let scale = dot(&u[r.clone()], &u[r.clone()]).sqrt()
                    * dot(&sv[r.clone()], &sv[r.clone()]).sqrt()
                    + dot(&v[r.clone()], &v[r.clone()]).sqrt() * dot(&su[r.clone()], &su[r]).sqrt();
                assert!(
                    (usv - vsu).abs() <= 1e-5 * scale,
                    "layer {layer} channel {ch}: {usv} vs {vsu}"
                );
            }
        }
    }
}

#[test]
fn channels_without_gradient_have_zero_splitting_matrix() {
    let mut rng = Rng::new(51);
    for (f, layers) in fixtures() {
        for &layer in layers {
            let fs = f.sigma(layer);
            let b = f.batch(layer, &fs);
            let u = b.unit;
            let (c, d) = (u.cout, u.fan_in());
            let po = u.out_hw.0 * u.out_hw.1;
            let dead = [0, c - 1];
            let mut grad_a = b.grad_a.to_vec();
            for s in 0..b.n {
                for &ch in &dead {
                    grad_a[(s * c + ch) * po..(s * c + ch + 1) * po].fill(0.0);
                }
            }
            let b = LayerBatch {
                grad_a: &grad_a,
                ..b
            };
            let mut ws = SplitWorkspace::default();
            let v = random_vectors(c * d, &mut rng);
            let mut out = vec![f32::NAN; c * d];
            splitting_products(&b, &v, &mut ws, &mut out);
            let split = min_eigen(&b, 20, &mut rng, &mut ws);
            for &ch in &dead {
                assert!(
                    out[ch * d..(ch + 1) * d].iter().all(|x| *x == 0.0),
                    "layer {layer} channel {ch}: S v != 0"
                );
                assert_eq!(split.eigenvalues[ch], 0.0, "layer {layer} channel {ch}");
                let vn: f32 = split.directions[ch * d..(ch + 1) * d]
                    .iter()
                    .map(|x| x * x)
                    .sum();
                assert!((vn - 1.0).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn split_average_aligns_signs() {
    let a = SplitDirections {
        eigenvalues: vec![-2.0, 0.5],
        directions: vec![0.6, 0.8, 1.0, 0.0],
    };
    let b = SplitDirections {
        eigenvalues: vec![-4.0, 0.5],
        directions: vec![-0.6, -0.8, 0.0, 1.0],
    };
    let mut avg = SplitAverage::new();
    assert!(avg.mean().is_none());
    avg.add(&a);
    avg.add(&b);
    assert_eq!(avg.batches(), 2);
    let m = avg.mean().unwrap();
    assert_eq!(m.eigenvalues, vec![-3.0, 0.5]);
    let h = 0.5f32.sqrt();
    let want = [0.6, 0.8, h, h];
    for (g, w) in m.directions.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{:?}", m.directions);
    }
}
