//! The Gauss-Newton estimator (paper section 3.2, docs/conventions.md, "The estimator")
//! against networks actually expanded with `morph::apply`.
//!
//! - The first-order term `u_s` equals `Delta_z_s . g_s`, with `Delta_z` read
//!   from the expanded network and `g_s = S * dL/dz` from the base network:
//!   this pins the 1/2 of the split, the sign and the per-sample scaling.
//! - Theorem 2 of the paper: for a loss that is least squares in `z` with a
//!   rank-1 Hessian, the estimate is the true loss change for every theta.
//! - `grad_theta` is the derivative of the estimate (central differences).
//! - The estimate is bounded below by `-L_hat`.
//! - At `theta = 0` the gradient is exactly zero, and so is the estimate.
//!
//! Every comparison uses the frozen-sigma convention on both sides: the
//! expanded networks are run in evaluation mode, with BN at the running
//! statistics that the split halves share.

use sprout_core::arch::Pool;
use sprout_core::engine::Mode;
use sprout_core::estimator::{
    gauss_newton, prune_estimates, prune_samples, split_estimates, Curvature, FrozenSigma,
    HeadCurvature, LayerBatch, Workspace,
};
use sprout_core::learn::MorphState;
use sprout_core::model::Model;
use sprout_core::morph::{apply, ChannelMorphism, Morphism};
use sprout_core::rng::Rng;
use sprout_core::select::{joint_delta_loss, Candidate, Kind};
use sprout_core::{Arch, Family, Network};
use sprout_tests::evaluated_network;

/// Samples per batch in the multi-sample checks.
const S: usize = 3;

/// A small network with random weights and BN state, a batch of images and
/// labels, and the model after an eval-mode forward, loss and backward.
struct Fixture {
    net: Network,
    images: Vec<f32>,
    n: usize,
    model: Model,
    loss: f32,
}

impl Fixture {
    fn new(arch: Arch, seed: u64, n: usize) -> Fixture {
        let (net, images, model, loss) = evaluated_network(arch, seed, n);
        Fixture {
            net,
            images,
            n,
            model,
            loss,
        }
    }

    fn vgg(seed: u64) -> Fixture {
        let arch = Arch::new(
            Family::Vgg19,
            [1, 32, 32],
            5,
            vec![3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4],
        )
        .unwrap();
        Fixture::new(arch, seed, S)
    }

    fn mobilenet(seed: u64) -> Fixture {
        let arch = Arch::new(
            Family::MobilenetV1,
            [3, 12, 12],
            4,
            vec![4, 3, 4, 4, 3, 4, 4, 4, 3, 4, 4, 4, 3, 4],
        )
        .unwrap();
        Fixture::new(arch, seed, S)
    }

    fn cout(&self, layer: usize) -> usize {
        self.net.arch.units()[layer].cout
    }

    fn fan_in(&self, layer: usize) -> usize {
        self.net.arch.units()[layer].fan_in()
    }

    /// Split estimates of every channel of `layer` for `theta`, with the
    /// per-sample first-order terms `u[s * cout + c]`.
    fn split(&self, layer: usize, theta: &[f32], grad: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
        self.split_with(layer, theta, grad, Curvature::RankOne)
    }

    /// [`Fixture::split`] with the given curvature (the exact one applies
    /// to the last layer only).
    fn split_with(
        &self,
        layer: usize,
        theta: &[f32],
        grad: Option<&mut [f32]>,
        curvature: Curvature,
    ) -> (Vec<f32>, Vec<f32>) {
        let sigma = FrozenSigma::of(&self.net, layer);
        let mut probs = Vec::new();
        let head = (curvature == Curvature::ExactLogits)
            .then(|| HeadCurvature::from_model(&self.model, &self.net, &mut probs));
        let batch =
            LayerBatch::from_model(&self.model, layer, sigma.view(), self.loss).with_head(head);
        let mut ws = Workspace::default();
        let mut delta_l = vec![f32::NAN; self.cout(layer)];
        split_estimates(&batch, theta, &mut ws, &mut delta_l, grad);
        (delta_l, ws.last_u(self.n, self.cout(layer)).to_vec())
    }

    /// Random theta for every channel of `layer`, each channel's entries
    /// normal with standard deviation `scale` times the RMS of that
    /// channel's incoming kernel.
    fn theta(&self, layer: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
        random_theta(&self.net, layer, scale, rng)
    }
}

fn random_theta(net: &Network, layer: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    let u = net.arch.units()[layer];
    let w = &net.tensors[net.index().units[layer].conv];
    let fan = u.fan_in();
    let mut theta = Vec::with_capacity(w.len());
    for c in 0..u.cout {
        let row = &w[c * fan..(c + 1) * fan];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / fan as f32).sqrt();
        theta.extend((0..fan).map(|_| scale * rms * rng.normal()));
    }
    theta
}

/// The network with channel `c` of `layer` split by `theta_c`.
fn expanded(net: &Network, layer: usize, c: usize, theta_c: &[f32]) -> Network {
    let m = ChannelMorphism {
        layer,
        channel: c,
        morphism: Morphism::Split {
            theta: theta_c.to_vec(),
        },
    };
    apply(net, &[m], &mut []).unwrap()
}

fn pruned(net: &Network, layer: usize, c: usize) -> Network {
    let m = ChannelMorphism {
        layer,
        channel: c,
        morphism: Morphism::Prune,
    };
    apply(net, &[m], &mut []).unwrap()
}

fn eval(net: &Network, images: &[f32], n: usize) -> Model {
    let mut model = Model::new(&net.arch, n);
    model.forward(net, images, n, Mode::Eval);
    model
}

/// `z` of layer `layer`'s morphism: the next conv's pre-activation, or the
/// logits after the last layer.
fn z_of(model: &Model, layer: usize) -> &[f32] {
    if layer + 1 < model.units().len() {
        model.pre_activation(layer + 1)
    } else {
        model.logits()
    }
}

/// Gradient of the mean loss with respect to `z_of(layer)`.
fn z_grad_of(model: &Model, layer: usize) -> &[f32] {
    if layer + 1 < model.units().len() {
        model.pre_activation_grad(layer + 1)
    } else {
        model.logits_grad()
    }
}

/// Checks `u[s, c] = Delta_z_s . g_s` for every sample and channel of the
/// layers given. Returns the worst error as a fraction of its tolerance and
/// the worst relative error among the clear signals.
///
/// Tolerance: both sides are f32 differences of nearby quantities (`z' - z`
/// on the network side, `a+ + a- - 2a` on the estimator side), so each carries
/// rounding of order `eps * sum_i |g_i| |z_i|` even where the difference is
/// small or zero (ReLU leaves `Delta_a` exactly zero where `|d|` stays below
/// the distance to the kink). The bound is `1e-4 |u| + 2e-6 m` with
/// `m = sum_i |g_i| (|z_i| + |z'_i|)`: the floor is about 17 f32 epsilons of
/// the magnitudes that cancel (measured: at most 2.2e-7 m), and where the
/// signal is clear (`|u| > 2e-4 m`, 100 times the floor, required of a good
/// share of the pairs) it is at most 1.01% of `u`. A wrong constant, sign or
/// scaling is an error of order one.
fn check_u_against_expanded(fx: &Fixture, layers: &[usize], seed: u64) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let n = fx.n;
    let (mut worst, mut worst_rel) = (0.0f64, 0.0f64);
    let mut nonzero = 0;
    for &l in layers {
        let (cout, fan) = (fx.cout(l), fx.fan_in(l));
        let scale = rng.uniform_in(0.2, 0.5);
        let mut layer_nonzero = 0;
        let theta = fx.theta(l, scale, &mut rng);
        let (delta_l, u) = fx.split(l, &theta, None);
        let z = z_of(&fx.model, l);
        let g = z_grad_of(&fx.model, l);
        let per = z.len() / n;
        for c in 0..cout {
            let big = expanded(&fx.net, l, c, &theta[c * fan..(c + 1) * fan]);
            let model = eval(&big, &fx.images, n);
            let z2 = z_of(&model, l);
            assert_eq!(z2.len(), z.len(), "layer {l}: z keeps its shape");
            let mut gn = 0.0f64;
            for s in 0..n {
                let r = s * per..(s + 1) * per;
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for i in r {
                    // Per-sample gradient: S times the gradient of the mean loss.
                    let gs = n as f64 * g[i] as f64;
                    want += (z2[i] as f64 - z[i] as f64) * gs;
                    mag += gs.abs() * (z[i].abs() as f64 + z2[i].abs() as f64);
                }
                let got = u[s * cout + c] as f64;
                let tol = 1e-4 * want.abs() + 2e-6 * mag;
                assert!(
                    (got - want).abs() <= tol,
                    "layer {l} channel {c} sample {s}: u = {got}, Delta_z . g = {want} (tol {tol})"
                );
                worst = worst.max((got - want).abs() / tol.max(f64::MIN_POSITIVE));
                if want.abs() > 2e-4 * mag {
                    layer_nonzero += 1;
                    worst_rel = worst_rel.max((got - want).abs() / want.abs());
                }
                gn += gauss_newton(u[s * cout + c], fx.loss) as f64;
            }
            // Eq. (1) assembled from the same u.
            let want = gn / n as f64;
            let got = delta_l[c] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-9,
                "layer {l} channel {c}: DeltaL = {got}, eq. (1) from u gives {want}"
            );
        }
        assert!(layer_nonzero > 0, "layer {l}: no clear first-order signal");
        nonzero += layer_nonzero;
    }
    // A good share of (sample, channel) pairs carry a clear signal, so the
    // check is not passing on zeros. (At this theta scale ReLU keeps many
    // Delta_a exactly zero, most of all in the small late layers.)
    let total: usize = layers.iter().map(|&l| fx.cout(l) * n).sum();
    assert!(
        nonzero * 3 >= total,
        "only {nonzero} of {total} first-order terms are clearly nonzero"
    );
    (worst, worst_rel)
}

#[test]
fn vgg_u_equals_delta_z_dot_g_of_the_expanded_network() {
    let fx = Fixture::vgg(101);
    // First layer, a plain middle one, max-pool ones, and the last (into the head).
    let (worst, rel) = check_u_against_expanded(&fx, &[0, 4, 7, 10, 15], 7);
    eprintln!("vgg u: worst error / tolerance {worst:.3e}, worst relative error {rel:.3e}");
}

#[test]
fn mobilenet_u_equals_delta_z_dot_g_of_the_expanded_network() {
    let fx = Fixture::mobilenet(202);
    // First (3x3) layer, depthwise stride 2 and stride 1 units, the last (into the pool).
    let (worst, rel) = check_u_against_expanded(&fx, &[0, 1, 6, 11, 13], 8);
    eprintln!("mobilenet u: worst error / tolerance {worst:.3e}, worst relative error {rel:.3e}");
}

/// One image, the last layer, and `L(z) = 1/2 (v . z - t)^2` on the logits:
/// least squares with the rank-1 Hessian `v v^T`. `G = dL/da` is computed by
/// hand through the head (`W^T (v . z - t) v`, spread over the pooled
/// positions for a global average pool).
struct RankOne {
    fx: Fixture,
    layer: usize,
    v: Vec<f64>,
    t: f64,
    loss: f64,
    grad_a: Vec<f32>,
}

impl RankOne {
    fn new(arch: Arch, seed: u64) -> RankOne {
        let fx = Fixture::new(arch, seed, 1);
        let mut rng = Rng::new(seed ^ 0x5eed);
        let layer = fx.net.arch.layers() - 1;
        let head = fx.net.arch.head();
        let z = fx.model.logits();
        let v: Vec<f64> = (0..head.classes).map(|_| rng.normal() as f64).collect();
        // Residual r = v . z - t between 0.5 and 2 in magnitude, either sign.
        let r = rng.uniform_in(0.5, 2.0) as f64 * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let t = dot(&v, z) - r;
        let loss = 0.5 * r * r;
        // dL/dfeatures = W^T (r v); features are the flattened NCHW unit
        // output (VGG) or its per-channel means (MobileNet).
        let w = &fx.net.tensors[fx.net.index().head_weight];
        let f = head.features();
        let dfeat: Vec<f64> = (0..f)
            .map(|i| {
                (0..head.classes)
                    .map(|k| w[k * f + i] as f64 * r * v[k])
                    .sum()
            })
            .collect();
        let u = fx.net.arch.units()[layer];
        let plane = u.out_hw.0 * u.out_hw.1;
        let grad_a: Vec<f32> = match head.pool {
            Pool::Flatten => dfeat.iter().map(|g| *g as f32).collect(),
            Pool::GlobalAverage => (0..u.out_len())
                .map(|i| (dfeat[i / plane] / plane as f64) as f32)
                .collect(),
        };
        RankOne {
            fx,
            layer,
            v,
            t,
            loss,
            grad_a,
        }
    }

    fn batch<'a>(&'a self, sigma: &'a FrozenSigma) -> LayerBatch<'a> {
        let m = &self.fx.model;
        LayerBatch {
            unit: self.fx.net.arch.units()[self.layer],
            n: 1,
            x: m.unit_input(self.layer),
            y: m.pre_activation(self.layer),
            a: m.unit_output(self.layer),
            grad_a: &self.grad_a,
            sigma: sigma.view(),
            loss: self.loss as f32,
            head: None,
        }
    }

    /// True loss change of a network computing logits `z2` instead of `z`,
    /// with `v . (z2 - z)` formed from the f32 difference.
    fn true_change(&self, z2: &[f32]) -> f64 {
        let z = self.fx.model.logits();
        let vdz: f64 = self
            .v
            .iter()
            .zip(z2.iter().zip(z))
            .map(|(v, (a, b))| v * (*a as f64 - *b as f64))
            .sum();
        let r = dot(&self.v, z) - self.t;
        // 1/2 (r + v.dz)^2 - 1/2 r^2
        r * vdz + 0.5 * vdz * vdz
    }

    /// Scale of the f32 rounding in the two logit vectors, seen through `v`.
    fn rounding_scale(&self, z2: &[f32]) -> f64 {
        let z = self.fx.model.logits();
        let r = (dot(&self.v, z) - self.t).abs();
        let vz: f64 = self
            .v
            .iter()
            .zip(z2.iter().zip(z))
            .map(|(v, (a, b))| v.abs() * (a.abs() as f64 + b.abs() as f64))
            .sum();
        (r + vz) * vz
    }
}

fn dot(v: &[f64], z: &[f32]) -> f64 {
    v.iter().zip(z).map(|(a, b)| a * *b as f64).sum()
}

/// Theorem 2: with a rank-1 least-squares loss in `z`, eq. (1) with `S = 1`
/// and `L_hat = L` is the exact loss change, for small and large theta alike.
fn check_rank_one_exact(arch: Arch, seed: u64) -> f64 {
    let ro = RankOne::new(arch, seed);
    let fx = &ro.fx;
    let l = ro.layer;
    let (cout, fan) = (fx.cout(l), fx.fan_in(l));
    let sigma = FrozenSigma::of(&fx.net, l);
    let batch = ro.batch(&sigma);
    let mut rng = Rng::new(seed + 1);
    let mut worst = 0.0f64;
    let mut biggest = 0.0f64;
    for scale in [1e-2, 1e-1, 0.5, 2.0, 10.0, 100.0] {
        let theta = fx.theta(l, scale, &mut rng);
        let mut delta_l = vec![f32::NAN; cout];
        split_estimates(
            &batch,
            &theta,
            &mut Workspace::default(),
            &mut delta_l,
            None,
        );
        for c in 0..cout {
            let big = expanded(&fx.net, l, c, &theta[c * fan..(c + 1) * fan]);
            let z2 = eval(&big, &fx.images, 1).logits().to_vec();
            let want = ro.true_change(&z2);
            let got = delta_l[c] as f64;
            // f32 rounding only: relative 1e-5 of the change, plus 1e-6 of the
            // magnitudes that cancel in z' - z.
            let tol = 1e-5 * want.abs() + 1e-6 * ro.rounding_scale(&z2);
            assert!(
                (got - want).abs() <= tol,
                "theta scale {scale}, channel {c}: estimate {got}, true change {want} (tol {tol})"
            );
            if want.abs() > 1e-3 * ro.loss {
                worst = worst.max((got - want).abs() / want.abs());
            }
            biggest = biggest.max(want.abs());
        }
    }
    // Large thetas move the loss by much more than L: the quadratic term,
    // not the first-order one, is what the check exercises there.
    assert!(
        biggest > 10.0 * ro.loss,
        "largest true change {biggest} vs L {}",
        ro.loss
    );

    // Prunes: Delta_a = -a exactly, so the estimate is again exact.
    let mut delta_l = vec![f32::NAN; cout];
    prune_estimates(&batch, &mut delta_l);
    let mut moved = 0;
    for c in 0..cout {
        let small = pruned(&fx.net, l, c);
        let z2 = eval(&small, &fx.images, 1).logits().to_vec();
        let want = ro.true_change(&z2);
        let got = delta_l[c] as f64;
        let tol = 1e-5 * want.abs() + 1e-6 * ro.rounding_scale(&z2);
        assert!(
            (got - want).abs() <= tol,
            "prune channel {c}: estimate {got}, true change {want} (tol {tol})"
        );
        if want.abs() > 1e-3 * ro.loss {
            moved += 1;
            worst = worst.max((got - want).abs() / want.abs());
        }
    }
    assert!(moved > 0, "no prune changes the loss");
    worst
}

#[test]
fn rank_one_least_squares_estimate_is_exact_vgg() {
    let mut worst = 0.0f64;
    for seed in [1, 2, 3] {
        let arch = Arch::new(Family::Vgg19, [1, 32, 32], 4, vec![4; 16]).unwrap();
        worst = worst.max(check_rank_one_exact(arch, seed));
    }
    eprintln!("vgg rank-1: worst relative error {worst:.3e} (changes above 1e-3 L)");
}

#[test]
fn rank_one_least_squares_estimate_is_exact_mobilenet() {
    let arch = Arch::new(Family::MobilenetV1, [3, 12, 12], 3, vec![4; 14]).unwrap();
    let worst = check_rank_one_exact(arch, 4);
    eprintln!("mobilenet rank-1: worst relative error {worst:.3e} (changes above 1e-3 L)");
}

/// Theorem 2 for sets: in the rank-1 least-squares setting the `u` of
/// morphisms of one layer add exactly (sigma is frozen and channelwise), so
/// the joint estimate of `select_joint` (own estimates plus the averaged
/// cross products) is the true change of applying them all at once, where
/// summing the candidates' own estimates is not.
fn check_joint_set_exact(arch: Arch, seed: u64) {
    let ro = RankOne::new(arch, seed);
    let fx = &ro.fx;
    let l = ro.layer;
    let (cout, fan) = (fx.cout(l), fx.fan_in(l));
    let sigma = FrozenSigma::of(&fx.net, l);
    let batch = ro.batch(&sigma);
    let mut rng = Rng::new(seed + 7);
    let mut theta_rng = Rng::new(seed + 8);
    let mut state = MorphState::new(&fx.net, 0.01, &mut theta_rng);
    let theta = fx.theta(l, 2.0, &mut rng);
    state.theta[l].copy_from_slice(&theta);
    let mut ws = Workspace::default();
    let mut split = vec![f32::NAN; cout];
    split_estimates(&batch, &theta, &mut ws, &mut split, None);
    let mut prune_u = vec![f32::NAN; cout];
    prune_samples(&batch, &mut prune_u);
    let mut prune = vec![f32::NAN; cout];
    prune_estimates(&batch, &mut prune);
    state.split_ema[l].copy_from_slice(&split);
    state.prune_ema[l].copy_from_slice(&prune);
    // One sample: the other layers' candidates contribute u = 0.
    let k = state.joint_len();
    let mut u = vec![0.0f32; k];
    let first = state.joint_slot(l, 0, false);
    u[first..first + cout].copy_from_slice(ws.last_u(1, cout));
    u[first + cout..first + 2 * cout].copy_from_slice(&prune_u);
    state.update_cross(&u, 1, ro.loss as f32, 0.5, &mut Vec::new());
    // Split channels 0 and 1, prune channel 2.
    let cand = |c: usize, kind: Kind, dl: f32| Candidate {
        layer: l,
        channel: c,
        kind,
        delta_loss: dl,
        delta_params: 0,
        delta_macs: 0,
        gain: 0.0,
    };
    let chosen = [
        cand(0, Kind::Split, split[0]),
        cand(1, Kind::Split, split[1]),
        cand(2, Kind::Prune, prune[2]),
    ];
    let morphisms = vec![
        ChannelMorphism {
            layer: l,
            channel: 0,
            morphism: Morphism::Split {
                theta: theta[..fan].to_vec(),
            },
        },
        ChannelMorphism {
            layer: l,
            channel: 1,
            morphism: Morphism::Split {
                theta: theta[fan..2 * fan].to_vec(),
            },
        },
        ChannelMorphism {
            layer: l,
            channel: 2,
            morphism: Morphism::Prune,
        },
    ];
    let changed = apply(&fx.net, &morphisms, &mut []).unwrap();
    let z2 = eval(&changed, &fx.images, 1).logits().to_vec();
    let want = ro.true_change(&z2);
    let got = joint_delta_loss(&chosen, &state).unwrap();
    let tol = 1e-4 * want.abs() + 1e-6 * ro.rounding_scale(&z2);
    assert!(
        (got - want).abs() <= tol,
        "joint estimate {got}, true change of the set {want} (tol {tol})"
    );
    let summed: f64 = chosen.iter().map(|c| f64::from(c.delta_loss)).sum();
    assert!(
        (summed - want).abs() > 10.0 * tol,
        "the set's own estimates already add up ({summed} vs {want}): the check is vacuous"
    );
}

#[test]
fn joint_estimate_of_a_set_is_exact_for_rank_one_least_squares() {
    for seed in [5, 6] {
        let arch = Arch::new(Family::Vgg19, [1, 32, 32], 4, vec![4; 16]).unwrap();
        check_joint_set_exact(arch, seed);
    }
    let arch = Arch::new(Family::MobilenetV1, [3, 12, 12], 3, vec![4; 14]).unwrap();
    check_joint_set_exact(arch, 7);
}

/// Central differences of `delta_l[c]` in single entries of `theta[c]`.
///
/// Away from ReLU kinks and max-pool switches the estimate is a quadratic
/// function of theta (sigma is piecewise linear, `d` linear in theta, eq. (1)
/// quadratic in `u`), so a central difference is exact up to f32 rounding.
/// The estimate is sampled at `-h, -h/2, 0, h/2, h`; where those five values
/// do not lie on one parabola (same slope and same curvature from both step
/// sizes), a step crossed a kink, or a kink sits at theta itself and the
/// derivative is one-sided there: such entries are skipped and counted, and
/// most entries must be checked. The step is 2% of the channel's theta RMS:
/// large enough that f32 rounding of the estimate moves the difference by
/// about 1e-4 of the gradient (the parabola test's own noise is below 1e-3
/// of the channel's largest gradient entry, kinks show as 1e-2 and more),
/// small enough that at least half the steps cross no kink. Checked entries
/// must agree to 2%, plus 0.1% of the channel's largest gradient entry for
/// entries near zero (measured: below 5e-4 of it).
fn check_grad_theta(fx: &Fixture, layer: usize, seed: u64, curvature: Curvature) -> f64 {
    let mut rng = Rng::new(seed);
    let (cout, fan) = (fx.cout(layer), fx.fan_in(layer));
    let theta = fx.theta(layer, 0.5, &mut rng);
    let mut grad = vec![f32::NAN; theta.len()];
    let (delta_l, _) = fx.split_with(layer, &theta, Some(&mut grad), curvature);
    let eval_at = |c: usize, j: usize, h: f32| -> f64 {
        let mut th = theta.clone();
        th[c * fan + j] += h;
        fx.split_with(layer, &th, None, curvature).0[c] as f64
    };
    let (mut checked, mut skipped, mut worst) = (0, 0, 0.0f64);
    for c in 0..cout {
        let row = &theta[c * fan..(c + 1) * fan];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / fan as f32).sqrt();
        let h = 2e-2 * rms;
        let gmax = (0..fan)
            .map(|j| grad[c * fan + j].abs())
            .fold(0.0f32, f32::max) as f64;
        assert!(gmax > 0.0, "layer {layer} channel {c}: zero gradient");
        // Up to 8 distinct entries of the channel's kernel.
        let mut entries: Vec<usize> = (0..fan).collect();
        for i in 0..entries.len().min(8) {
            let k = i + rng.below(fan - i);
            entries.swap(i, k);
        }
        for &j in entries.iter().take(8) {
            let f0 = delta_l[c] as f64;
            let (fp, fm) = (eval_at(c, j, h), eval_at(c, j, -h));
            let (fp2, fm2) = (eval_at(c, j, 0.5 * h), eval_at(c, j, -0.5 * h));
            let hd = h as f64;
            let (slope, slope2) = ((fp - fm) / (2.0 * hd), (fp2 - fm2) / hd);
            // Curvature times h, in slope units.
            let (curve, curve2) = ((fp - 2.0 * f0 + fm) / hd, 4.0 * (fp2 - 2.0 * f0 + fm2) / hd);
            let mismatch = (slope - slope2).abs() + (curve - curve2).abs();
            if mismatch > 2e-3 * slope.abs().max(slope2.abs()) + 1e-3 * gmax {
                skipped += 1;
                continue;
            }
            let an = grad[c * fan + j] as f64;
            let tol = 0.02 * slope.abs().max(an.abs()) + 1e-3 * gmax;
            assert!(
                (slope - an).abs() <= tol,
                "layer {layer} channel {c} entry {j}: finite difference {slope} vs grad_theta {an} (tol {tol})"
            );
            if slope.abs() > 0.05 * gmax {
                worst = worst.max((slope - an).abs() / slope.abs());
            }
            checked += 1;
        }
    }
    assert!(
        2 * checked >= checked + skipped,
        "layer {layer}: {skipped} of {} entries met a kink",
        checked + skipped
    );
    eprintln!("layer {layer}: {checked} entries checked, {skipped} skipped at kinks");
    worst
}

#[test]
fn grad_theta_matches_finite_differences_vgg() {
    let fx = Fixture::vgg(303);
    let mut worst = 0.0f64;
    for layer in [9, 11, 15] {
        worst = worst.max(check_grad_theta(
            &fx,
            layer,
            30 + layer as u64,
            Curvature::RankOne,
        ));
    }
    eprintln!("vgg grad_theta: worst relative error {worst:.3e} (entries above 5% of the largest)");
}

#[test]
fn grad_theta_matches_finite_differences_mobilenet_depthwise() {
    let fx = Fixture::mobilenet(404);
    let mut worst = 0.0f64;
    // Units whose sigma ends in a stride-2 and a stride-1 depthwise conv.
    for layer in [3, 6] {
        worst = worst.max(check_grad_theta(
            &fx,
            layer,
            40 + layer as u64,
            Curvature::RankOne,
        ));
    }
    eprintln!(
        "mobilenet grad_theta: worst relative error {worst:.3e} (entries above 5% of the largest)"
    );
}

/// The exact-curvature variant for the layer that feeds the logits
/// (docs/conventions.md, "Exact curvature at the logits") against the
/// second-order expansion of the cross-entropy computed independently from
/// the expanded (or pruned) network's logits: with `Delta_z = z' - z`,
/// `g_s = softmax(z_s) - onehot` and `p_s = softmax(z_s)`,
/// `1/S sum_s [g_s . Delta_z_s + 1/2 Delta_z_s^T (diag p_s - p_s p_s^T) Delta_z_s]`.
/// The head is linear and sigma frozen, so the two agree up to f32 rounding
/// for any theta. Returns the worst relative error among the clear changes.
fn check_exact_logits(fx: &Fixture, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let l = fx.net.arch.layers() - 1;
    let (n, cout, fan) = (fx.n, fx.cout(l), fx.fan_in(l));
    let z = fx.model.logits();
    let k = z.len() / n;
    let g = fx.model.logits_grad();
    let expansion = |z2: &[f32]| -> (f64, f64) {
        let (mut total, mut mag) = (0.0f64, 0.0f64);
        for s in 0..n {
            let zs = &z[s * k..(s + 1) * k];
            let max = zs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = zs.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
            let dz: Vec<f64> = (0..k)
                .map(|i| z2[s * k + i] as f64 - zs[i] as f64)
                .collect();
            let first: f64 = (0..k).map(|i| n as f64 * g[s * k + i] as f64 * dz[i]).sum();
            let pdz: f64 = p.iter().zip(&dz).map(|(a, b)| a * b).sum();
            let quad: f64 = (0..k).map(|i| p[i] * dz[i] * dz[i]).sum::<f64>() - pdz * pdz;
            total += first + 0.5 * quad;
            mag += (0..k)
                .map(|i| (zs[i].abs() + z2[s * k + i].abs()) as f64)
                .sum::<f64>();
        }
        (total / n as f64, mag / n as f64)
    };
    let mut worst = 0.0f64;
    let mut clear = 0;
    for scale in [0.1, 0.5, 2.0] {
        let theta = fx.theta(l, scale, &mut rng);
        let (exact, _) = fx.split_with(l, &theta, None, Curvature::ExactLogits);
        let (rank_one, _) = fx.split(l, &theta, None);
        for c in 0..cout {
            let big = expanded(&fx.net, l, c, &theta[c * fan..(c + 1) * fan]);
            let (want, mag) = expansion(eval(&big, &fx.images, n).logits());
            let got = exact[c] as f64;
            let tol = 1e-4 * want.abs() + 1e-6 * mag;
            assert!(
                (got - want).abs() <= tol,
                "theta scale {scale}, channel {c}: exact estimate {got}, expansion {want} (tol {tol}; rank-1 {})",
                rank_one[c]
            );
            if want.abs() > 1e-3 * mag {
                clear += 1;
                worst = worst.max((got - want).abs() / want.abs());
            }
        }
    }
    let sigma = FrozenSigma::of(&fx.net, l);
    let mut probs = Vec::new();
    let head = HeadCurvature::from_model(&fx.model, &fx.net, &mut probs);
    let batch = LayerBatch::from_model(&fx.model, l, sigma.view(), fx.loss).with_head(Some(head));
    let mut prune = vec![f32::NAN; cout];
    prune_estimates(&batch, &mut prune);
    for (c, &got) in prune.iter().enumerate() {
        let (want, mag) = expansion(eval(&pruned(&fx.net, l, c), &fx.images, n).logits());
        let tol = 1e-4 * want.abs() + 1e-6 * mag;
        assert!(
            (got as f64 - want).abs() <= tol,
            "prune channel {c}: exact estimate {got}, expansion {want} (tol {tol})"
        );
    }
    assert!(clear > cout, "only {clear} clear changes");
    worst
}

#[test]
fn exact_logit_curvature_is_the_second_order_expansion_vgg() {
    let worst = check_exact_logits(&Fixture::vgg(505), 51);
    eprintln!("vgg exact logits: worst relative error {worst:.3e}");
}

#[test]
fn exact_logit_curvature_is_the_second_order_expansion_mobilenet() {
    let worst = check_exact_logits(&Fixture::mobilenet(606), 61);
    eprintln!("mobilenet exact logits: worst relative error {worst:.3e}");
}

#[test]
fn grad_theta_matches_finite_differences_exact_logits() {
    let worst = [
        check_grad_theta(&Fixture::vgg(707), 15, 71, Curvature::ExactLogits),
        // Inputs large enough that the last unit keeps a 2x2 plane, so that
        // few of its channels are dead on every sample.
        check_grad_theta(
            &Fixture::new(
                Arch::new(Family::MobilenetV1, [3, 64, 64], 4, vec![4; 14]).unwrap(),
                808,
                2 * S,
            ),
            13,
            81,
            Curvature::ExactLogits,
        ),
    ]
    .into_iter()
    .fold(0.0f64, f64::max);
    eprintln!("exact logits grad_theta: worst relative error {worst:.3e}");
}

/// `u + u^2 / (4 L_hat) >= -L_hat` for every u, so the estimate of every
/// split (and prune) is at least `-L_hat`, however large theta is.
#[test]
fn estimates_are_bounded_below_by_minus_loss() {
    let mut below = 0;
    for (fx, layers) in [
        (Fixture::vgg(505), vec![0, 3, 8, 14, 15]),
        (Fixture::mobilenet(606), vec![0, 2, 7, 12, 13]),
    ] {
        let mut rng = Rng::new(9);
        let lhat = fx.loss;
        for &l in &layers {
            for scale in [1.0, 5.0, 30.0, 300.0] {
                let theta = fx.theta(l, scale, &mut rng);
                let (delta_l, u) = fx.split(l, &theta, None);
                let cout = fx.cout(l);
                for c in 0..cout {
                    // The bound is reached at u = -2 L_hat; allow its rounding.
                    assert!(
                        delta_l[c] >= -lhat * (1.0 + 1e-6),
                        "layer {l} channel {c} scale {scale}: {} < -{lhat}",
                        delta_l[c]
                    );
                    let first_order: f32 =
                        (0..fx.n).map(|s| u[s * cout + c]).sum::<f32>() / fx.n as f32;
                    if first_order < -lhat {
                        below += 1;
                    }
                }
            }
            let sigma = FrozenSigma::of(&fx.net, l);
            let batch = LayerBatch::from_model(&fx.model, l, sigma.view(), lhat);
            let mut delta_l = vec![f32::NAN; fx.cout(l)];
            prune_estimates(&batch, &mut delta_l);
            assert!(
                delta_l.iter().all(|d| *d >= -lhat * (1.0 + 1e-6)),
                "prunes: {delta_l:?}"
            );
        }
    }
    // The first-order term alone falls below -L_hat for some channels: the
    // bound comes from the quadratic term, so the check has teeth.
    assert!(below > 0, "no first-order estimate fell below -L_hat");
}

/// At theta = 0 the gradient is exactly zero: `d = 0`, so both halves see the
/// same `y` and their sigma' terms cancel exactly (`Delta_a` is even in `d`).
/// The estimate itself is zero up to rounding here; see the exact check below.
#[test]
fn zero_theta_gives_zero_gradient_and_a_rounding_level_estimate() {
    for fx in [Fixture::vgg(707), Fixture::mobilenet(808)] {
        for l in 0..fx.net.arch.layers() {
            let theta = vec![0.0f32; fx.net.arch.units()[l].weight_len()];
            let mut grad = vec![f32::NAN; theta.len()];
            let (delta_l, u) = fx.split(l, &theta, Some(&mut grad));
            assert!(
                grad.iter().all(|v| *v == 0.0),
                "layer {l}: grad_theta not zero"
            );
            // |u_s| <= S/2 sum |Delta_a| |dL/da| with |Delta_a| a few ulps of |a|.
            let (a, ga) = (fx.model.unit_output(l), fx.model.output_grad(l));
            let floor: f32 = 4.0
                * f32::EPSILON
                * fx.n as f32
                * a.iter().zip(ga).map(|(a, g)| (a * g).abs()).sum::<f32>();
            assert!(
                u.iter().all(|v| v.abs() <= floor),
                "layer {l}: u = {u:?} (floor {floor})"
            );
            assert!(
                delta_l.iter().all(|v| v.abs() <= 2.0 * floor),
                "layer {l}: DeltaL = {delta_l:?}"
            );
        }
    }
}

/// At theta = 0 the split is the identity, so `Delta_a`, every `u` and every
/// estimate are exactly zero.
#[test]
fn zero_theta_gives_exactly_zero_estimate() {
    for fx in [Fixture::vgg(707), Fixture::mobilenet(808)] {
        for l in 0..fx.net.arch.layers() {
            let theta = vec![0.0f32; fx.net.arch.units()[l].weight_len()];
            let (delta_l, u) = fx.split(l, &theta, None);
            assert!(u.iter().all(|v| *v == 0.0), "layer {l}: u = {u:?}");
            assert!(
                delta_l.iter().all(|v| *v == 0.0),
                "layer {l}: DeltaL = {delta_l:?}"
            );
        }
    }
}
