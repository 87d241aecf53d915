//! The estimator fed from buffers computed outside sprout: a conv layer, BN
//! at running statistics, ReLU, a linear head and softmax cross-entropy in
//! plain f64, with the split's true loss change by brute force on the
//! expanded layer (frozen BN, halved head columns).

use ndarray::ArrayView4;
use sprout_core::arch::{Post, UnitShape};
use sprout_core::estimator::{split_estimates, FrozenSigma, LayerBatch, Workspace};

const N: usize = 3;
const CIN: usize = 2;
const COUT: usize = 3;
const HW: usize = 4;
const K: usize = 3;
const CLASSES: usize = 4;
const EPS: f64 = 1e-5;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// 3x3 conv, pad 1, stride 1: `[N, CIN, HW, HW]` with `[COUT, CIN, 3, 3]`.
fn conv(x: &[f64], w: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; N * COUT * HW * HW];
    for s in 0..N {
        for o in 0..COUT {
            for i in 0..HW {
                for j in 0..HW {
                    let mut acc = 0.0;
                    for c in 0..CIN {
                        for ki in 0..K {
                            for kj in 0..K {
                                let (ii, jj) =
                                    (i as isize + ki as isize - 1, j as isize + kj as isize - 1);
                                if ii < 0 || jj < 0 || ii >= HW as isize || jj >= HW as isize {
                                    continue;
                                }
                                acc += x[((s * CIN + c) * HW + ii as usize) * HW + jj as usize]
                                    * w[((o * CIN + c) * K + ki) * K + kj];
                            }
                        }
                    }
                    y[((s * COUT + o) * HW + i) * HW + j] = acc;
                }
            }
        }
    }
    y
}

struct Layer {
    x: Vec<f64>,
    w: Vec<f64>,
    scale: Vec<f64>,
    shift: Vec<f64>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    head: Vec<f64>,
    bias: Vec<f64>,
    labels: Vec<usize>,
}

const P: usize = HW * HW;

impl Layer {
    fn new() -> Layer {
        let gamma: Vec<f32> = values(COUT, 3)
            .iter()
            .map(|v| (1.0 + 0.5 * v) as f32)
            .collect();
        let beta: Vec<f32> = values(COUT, 4).iter().map(|v| (0.2 * v) as f32).collect();
        let mean: Vec<f32> = values(COUT, 5).iter().map(|v| (0.1 * v) as f32).collect();
        let var: Vec<f32> = values(COUT, 6)
            .iter()
            .map(|v| (1.0 + 0.5 * v) as f32)
            .collect();
        let scale: Vec<f64> = (0..COUT)
            .map(|c| gamma[c] as f64 / (var[c] as f64 + EPS).sqrt())
            .collect();
        let shift = (0..COUT)
            .map(|c| beta[c] as f64 - mean[c] as f64 * scale[c])
            .collect();
        Layer {
            x: values(N * CIN * P, 1),
            w: values(COUT * CIN * K * K, 2)
                .iter()
                .map(|v| 0.5 * v)
                .collect(),
            scale,
            shift,
            gamma,
            beta,
            mean,
            var,
            head: values(CLASSES * COUT * P, 7)
                .iter()
                .map(|v| 0.5 * v)
                .collect(),
            bias: values(CLASSES, 8),
            labels: vec![1, 3, 0],
        }
    }

    /// Frozen BN + ReLU of channel `c`.
    fn sigma(&self, c: usize, y: f64) -> f64 {
        (self.scale[c] * y + self.shift[c]).max(0.0)
    }

    /// Logits `[N, CLASSES]` from per-channel head inputs `a` `[N, COUT, P]`
    /// with a column factor per channel.
    fn logits(&self, a: &[f64]) -> Vec<f64> {
        let mut z = vec![0.0; N * CLASSES];
        for s in 0..N {
            for k in 0..CLASSES {
                z[s * CLASSES + k] = self.bias[k]
                    + (0..COUT * P)
                        .map(|f| self.head[k * COUT * P + f] * a[s * COUT * P + f])
                        .sum::<f64>();
            }
        }
        z
    }

    /// Softmax probabilities and the mean cross-entropy.
    fn loss(&self, z: &[f64]) -> (Vec<f64>, f64) {
        let mut p = vec![0.0; z.len()];
        let mut loss = 0.0;
        for s in 0..N {
            let row = &z[s * CLASSES..(s + 1) * CLASSES];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            for k in 0..CLASSES {
                p[s * CLASSES + k] = (row[k] - max).exp() / sum;
            }
            loss -= (p[s * CLASSES + self.labels[s]]).ln();
        }
        (p, loss / N as f64)
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn split_estimates_from_slices_and_views_match_an_independent_computation() {
    let l = Layer::new();
    let y = conv(&l.x, &l.w);
    let a: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(i, &v)| l.sigma((i / P) % COUT, v))
        .collect();
    let z = l.logits(&a);
    let (p, loss) = l.loss(&z);
    // dL/da = W^T (p - onehot) / N.
    let mut grad_a = vec![0.0; a.len()];
    for s in 0..N {
        for f in 0..COUT * P {
            grad_a[s * COUT * P + f] = (0..CLASSES)
                .map(|k| {
                    let t = if k == l.labels[s] { 1.0 } else { 0.0 };
                    l.head[k * COUT * P + f] * (p[s * CLASSES + k] - t) / N as f64
                })
                .sum::<f64>();
        }
    }
    let theta = values(COUT * CIN * K * K, 9)
        .iter()
        .map(|v| 0.2 * v)
        .collect::<Vec<f64>>();

    // Brute force per channel: the expanded layer's logits, loss and the
    // first-order term u_s = Delta_z_s . (p_s - onehot_s).
    let d = conv(&l.x, &theta);
    let mut true_u = [0.0; N * COUT];
    let mut true_dl = [0.0; COUT];
    let mut dz_sq = [0.0; COUT];
    for c in 0..COUT {
        let mut a2 = a.clone();
        for s in 0..N {
            for q in 0..P {
                let i = (s * COUT + c) * P + q;
                // Halves w + theta and w - theta, each with half the head columns.
                a2[i] = 0.5 * (l.sigma(c, y[i] + d[i]) + l.sigma(c, y[i] - d[i]));
            }
        }
        let z2 = l.logits(&a2);
        let (_, loss2) = l.loss(&z2);
        true_dl[c] = loss2 - loss;
        for s in 0..N {
            for k in 0..CLASSES {
                let t = if k == l.labels[s] { 1.0 } else { 0.0 };
                let dz = z2[s * CLASSES + k] - z[s * CLASSES + k];
                true_u[s * COUT + c] += dz * (p[s * CLASSES + k] - t);
                dz_sq[c] += dz * dz / N as f64;
            }
        }
    }

    let unit = UnitShape::new(CIN, COUT, K, 1, 1, (HW, HW), Post::None);
    let sigma = FrozenSigma::from_batch_norm(&l.gamma, &l.beta, &l.mean, &l.var).unwrap();
    let (x32, y32, a32, g32, t32) = (f32s(&l.x), f32s(&y), f32s(&a), f32s(&grad_a), f32s(&theta));
    let from_slices =
        LayerBatch::new(unit, N, &x32, &y32, &a32, &g32, sigma.view(), loss as f32).unwrap();
    let shape = (N, COUT, HW, HW);
    let from_views = LayerBatch::from_views(
        unit,
        ArrayView4::from_shape((N, CIN, HW, HW), &x32).unwrap(),
        ArrayView4::from_shape(shape, &y32).unwrap(),
        ArrayView4::from_shape(shape, &a32).unwrap(),
        ArrayView4::from_shape(shape, &g32).unwrap(),
        sigma.view(),
        loss as f32,
    )
    .unwrap();

    for batch in [from_slices, from_views] {
        let mut ws = Workspace::default();
        let mut delta_l = vec![0.0; COUT];
        split_estimates(&batch, &t32, &mut ws, &mut delta_l, None);
        let u = ws.last_u(N, COUT);
        let mut moved = 0;
        for c in 0..COUT {
            let mut eq1 = 0.0;
            for s in 0..N {
                let (got, want) = (u[s * COUT + c] as f64, true_u[s * COUT + c]);
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "u[{s}, {c}]: {got} vs {want}"
                );
                eq1 += (want + want * want / (4.0 * loss)) / N as f64;
            }
            let got = delta_l[c] as f64;
            assert!(
                (got - eq1).abs() < 1e-4 * (1.0 + eq1.abs()),
                "eq. (1) of channel {c}: {got} vs {eq1}"
            );
            // The first-order term is the true change up to the cross-entropy's
            // curvature: |L' - L - mean u| <= mean |Delta_z|^2 / 4.
            let first: f64 = (0..N).map(|s| true_u[s * COUT + c]).sum::<f64>() / N as f64;
            assert!(
                (true_dl[c] - first).abs() <= 0.25 * dz_sq[c] + 1e-12,
                "channel {c}"
            );
            moved += usize::from(first.abs() > 1e-6);
        }
        assert!(moved > 0, "theta moved no channel across the ReLU");
    }

    // Mismatched buffers are errors that name them.
    let err = LayerBatch::new(unit, N, &x32[1..], &y32, &a32, &g32, sigma.view(), 1.0).unwrap_err();
    assert!(err.to_string().contains("layer input x"), "{err}");
}
