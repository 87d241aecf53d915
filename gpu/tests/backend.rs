//! Whole steps on the GPU backend against the CPU backend: training (loss,
//! updated weights, running statistics, momentum), evaluation, calibration
//! and the morphism step (estimates, theta and Adam state, with the joint
//! estimate its cross terms), on both presets at tiny widths.

mod common;

use common::{close, close_to_max, gpu_available};
use sprout_core::arch::{Arch, Family, Role};
use sprout_core::backend::{Backend, CpuBackend};
use sprout_core::learn::{Curvature, MorphConfig, MorphMethod, MorphState};
use sprout_core::network::Network;
use sprout_core::optim::Sgd;
use sprout_core::rng::Rng;
use sprout_gpu::GpuBackend;

const BATCH: usize = 4;

/// The backend, or `None` (the test skips) without an adapter.
fn gpu_backend() -> Option<GpuBackend> {
    std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    if !gpu_available() {
        return None;
    }
    Some(GpuBackend::new(BATCH, None).expect("a GPU adapter (lavapipe on CI)"))
}

fn vgg() -> Arch {
    let widths = (0..16).map(|l| 4 + l % 3).collect();
    Arch::new(Family::Vgg19, [1, 32, 32], 10, widths).unwrap()
}

fn mobilenet() -> Arch {
    let widths = (0..14).map(|l| 4 + (l * 5) % 5).collect();
    Arch::new(Family::MobilenetV1, [3, 16, 16], 10, widths).unwrap()
}

/// A network with BN parameters and running statistics moved off their
/// initial values, so every term of the BN kernels matters.
fn network(arch: &Arch, seed: u64) -> Network {
    let mut net = Network::init(arch, seed);
    let mut rng = Rng::new(seed + 1);
    for (spec, t) in arch.param_specs().iter().zip(net.tensors.iter_mut()) {
        if let Role::BatchNorm { .. } = spec.role {
            let var = spec.name.ends_with("running_var");
            for v in t.iter_mut() {
                *v += if var {
                    0.5 * rng.uniform()
                } else {
                    0.2 * rng.normal()
                };
            }
        }
    }
    net
}

fn batch(arch: &Arch, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let len: usize = arch.input.iter().product();
    let images = (0..BATCH * len).map(|_| rng.normal()).collect();
    let labels = (0..BATCH).map(|_| rng.below(arch.classes) as u32).collect();
    (images, labels)
}

/// Every tensor within `rtol` of its largest entry, or within `atol`
/// (gradients of BN parameters can be tiny cancelling sums).
fn same_tensors(what: &str, arch: &Arch, gpu: &[Vec<f32>], cpu: &[Vec<f32>], rtol: f32, atol: f32) {
    for ((spec, g), c) in arch.param_specs().iter().zip(gpu).zip(cpu) {
        if let Err(e) = close_to_max(&format!("{what} {}", spec.name), g, c, rtol, atol) {
            panic!("{e}");
        }
    }
}

fn training_parity(arch: Arch) {
    let net = network(&arch, 3);
    let mut cpu = CpuBackend::new(BATCH);
    let Some(mut gpu) = gpu_backend() else {
        return;
    };
    cpu.load(&net, None).unwrap();
    gpu.load(&net, None).unwrap();
    let sgd = Sgd::paper(0.05);
    for step in 0..2 {
        let (x, y) = batch(&arch, 10 + step);
        let c = cpu.train_batch(&x, &y, BATCH, &sgd).unwrap();
        let g = gpu.train_batch(&x, &y, BATCH, &sgd).unwrap();
        close("loss", &[g.loss], &[c.loss], 1e-4).unwrap();
        assert_eq!(g.correct, c.correct);
        assert_eq!(g.samples, BATCH);
        // After the first step the gradients (in the momentum) agree closely;
        // rounding differences then grow through BN on 2x2 planes of 4 samples.
        let rtol = if step == 0 { 1e-3 } else { 3e-2 };
        same_tensors(
            "momentum",
            &arch,
            &gpu.momentum().unwrap(),
            &cpu.momentum().unwrap(),
            rtol,
            1e-5,
        );
    }
    let (gn, cn) = (gpu.network().unwrap(), cpu.network().unwrap());
    same_tensors(
        "after two steps",
        &arch,
        &gn.tensors,
        &cn.tensors,
        1e-3,
        1e-6,
    );
    // The weights moved: the comparison above is not between two copies of the start.
    assert_ne!(gn.tensors, net.tensors);

    let (x, y) = batch(&arch, 99);
    let (c, g) = (
        cpu.eval_batch(&x, &y, BATCH).unwrap(),
        gpu.eval_batch(&x, &y, BATCH).unwrap(),
    );
    close("eval loss", &[g.loss], &[c.loss], 1e-4).unwrap();
    assert_eq!(g.correct, c.correct);

    cpu.calibrate_batch(&x, &y, BATCH).unwrap();
    gpu.calibrate_batch(&x, &y, BATCH).unwrap();
    same_tensors(
        "calibrated",
        &arch,
        &gpu.network().unwrap().tensors,
        &cpu.network().unwrap().tensors,
        1e-3,
        1e-6,
    );

    // A smaller last batch replays its own recorded step.
    let c = cpu.eval_batch(&x, &y, 3).unwrap();
    let g = gpu.eval_batch(&x, &y, 3).unwrap();
    close("partial batch loss", &[g.loss], &[c.loss], 1e-4).unwrap();
    assert_eq!(g.samples, 3);
}

#[test]
fn vgg_training_step_matches_cpu() {
    training_parity(vgg());
}

#[test]
fn mobilenet_training_step_matches_cpu() {
    training_parity(mobilenet());
}

/// The joint estimate's `K x K` cross terms of both backends: the same
/// shape, within `rtol` of the largest entry, and not all zero.
fn same_cross(what: &str, gpu: &MorphState, cpu: &MorphState, rtol: f32) {
    let k = cpu.joint_len();
    assert_eq!(cpu.cross.len(), k * k, "{what}: cpu cross terms");
    assert_eq!(gpu.cross.len(), k * k, "{what}: gpu cross terms");
    if let Err(e) = close_to_max(what, &gpu.cross, &cpu.cross, rtol, 0.0) {
        panic!("{e}");
    }
    assert!(cpu.cross.iter().any(|v| v.abs() > 0.0), "{what}: all zero");
    // The average of products u_i u_j: symmetric, with a non-negative diagonal.
    for i in 0..k {
        assert!(gpu.cross[i * k + i] >= 0.0);
        for j in 0..i {
            assert_eq!(gpu.cross[i * k + j], gpu.cross[j * k + i]);
        }
    }
}

/// Both backends loaded with `arch`'s test network (seed `net_seed`), in a
/// morphism phase from the same state (theta from `theta_seed`); `None`
/// (the test skips) without an adapter.
fn both_in_phase(
    arch: &Arch,
    net_seed: u64,
    theta_seed: u64,
) -> Option<(Network, MorphState, CpuBackend, GpuBackend)> {
    let net = network(arch, net_seed);
    let mut cpu = CpuBackend::new(BATCH);
    let mut gpu = gpu_backend()?;
    cpu.load(&net, None).unwrap();
    gpu.load(&net, None).unwrap();
    let state = MorphState::new(&net, 0.3, &mut Rng::new(theta_seed));
    cpu.begin_morph(state.clone()).unwrap();
    gpu.begin_morph(state.clone()).unwrap();
    Some((net, state, cpu, gpu))
}

fn morph_parity(arch: Arch, theta_max: Option<f32>, joint: bool) {
    let Some((net, state, mut cpu, mut gpu)) = both_in_phase(&arch, 5, 8) else {
        return;
    };
    let cfg = MorphConfig {
        theta_max,
        joint,
        ..MorphConfig::paper(BATCH, 40)
    };
    for step in 0..3 {
        let (x, y) = batch(&arch, 20 + step);
        let c = cpu.morph_batch(&x, &y, BATCH, &cfg).unwrap();
        let g = gpu.morph_batch(&x, &y, BATCH, &cfg).unwrap();
        close("morph loss", &[g.loss], &[c.loss], 1e-4).unwrap();
    }
    let (c, g) = (cpu.end_morph().unwrap(), gpu.end_morph().unwrap());
    assert_eq!(g.steps, c.steps);
    for l in 0..arch.layers() {
        close(
            &format!("split estimates {l}"),
            &g.split_ema[l],
            &c.split_ema[l],
            2e-3,
        )
        .unwrap();
        close(
            &format!("prune estimates {l}"),
            &g.prune_ema[l],
            &c.prune_ema[l],
            2e-3,
        )
        .unwrap();
        close(&format!("theta {l}"), &g.theta[l], &c.theta[l], 2e-3).unwrap();
        close(&format!("adam m {l}"), &g.adam_m[l], &c.adam_m[l], 5e-3).unwrap();
    }
    if joint {
        same_cross("cross terms", &g, &c, 2e-3);
    } else {
        assert!(g.cross.is_empty() && c.cross.is_empty());
    }
    // Theta was learned, and some split is estimated to change the loss.
    assert_ne!(g.theta, state.theta);
    assert!(g.split_ema.iter().flatten().any(|v| v.abs() > 0.0));
    // The model itself did not move.
    assert_eq!(gpu.network().unwrap().tensors, net.tensors);
}

#[test]
fn vgg_morph_step_matches_cpu() {
    morph_parity(vgg(), None, false);
}

#[test]
fn mobilenet_morph_step_matches_cpu() {
    morph_parity(mobilenet(), Some(0.35), false);
}

#[test]
fn vgg_joint_morph_step_matches_cpu() {
    morph_parity(vgg(), None, true);
}

#[test]
fn mobilenet_joint_morph_step_matches_cpu() {
    morph_parity(mobilenet(), Some(0.35), true);
}

/// Splitting steepest descent: the GPU's products drive the same eigen-solver
/// to the same eigenvalues and (up to sign) directions as the CPU's.
fn splitting_parity(arch: Arch) {
    let Some((_, _, mut cpu, mut gpu)) = both_in_phase(&arch, 7, 10) else {
        return;
    };
    let cfg = MorphConfig {
        method: MorphMethod::Splitting { iterations: 4 },
        ..MorphConfig::paper(BATCH, 40)
    };
    for step in 0..2 {
        let (x, y) = batch(&arch, 40 + step);
        let c = cpu.morph_batch(&x, &y, BATCH, &cfg).unwrap();
        let g = gpu.morph_batch(&x, &y, BATCH, &cfg).unwrap();
        close("splitting loss", &[g.loss], &[c.loss], 1e-4).unwrap();
    }
    let (c, g) = (cpu.end_morph().unwrap(), gpu.end_morph().unwrap());
    assert_eq!(g.steps, c.steps);
    for l in 0..arch.layers() {
        close_to_max(
            &format!("eigenvalues {l}"),
            &g.split_ema[l],
            &c.split_ema[l],
            2e-3,
            1e-7,
        )
        .unwrap();
        // With 4 samples the matrices have low rank: eigenvalues near zero
        // are degenerate and their eigenvectors arbitrary, so directions are
        // compared where the eigenvalue stands out.
        let d = g.theta[l].len() / g.split_ema[l].len();
        let top = c.split_ema[l].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (ch, (gv, cv)) in g.theta[l].chunks(d).zip(c.theta[l].chunks(d)).enumerate() {
            let cos: f32 = gv.iter().zip(cv).map(|(a, b)| a * b).sum();
            let lambda = c.split_ema[l][ch];
            assert!(
                lambda.abs() <= 0.05 * top || cos.abs() > 0.98,
                "layer {l} channel {ch}: |cos| {cos}, eigenvalue {lambda} of at most {top}"
            );
        }
        assert!(g.prune_ema[l].iter().all(|v| *v == 0.0));
    }
    assert!(c.split_ema.iter().flatten().any(|v| v.abs() > 0.0));
}

#[test]
fn vgg_splitting_step_matches_cpu() {
    splitting_parity(vgg());
}

#[test]
fn mobilenet_splitting_step_matches_cpu() {
    splitting_parity(mobilenet());
}

/// Scoring every split with theta fixed: the same eq. (1) per candidate as
/// the CPU, ranked the same, with theta and the averages untouched.
fn scoring_parity(arch: Arch) {
    let Some((_, state, mut cpu, mut gpu)) = both_in_phase(&arch, 6, 9) else {
        return;
    };
    for seed in [30, 31] {
        let (x, y) = batch(&arch, seed);
        let c = cpu.score_batch(&x, &y, BATCH, Curvature::RankOne).unwrap();
        let g = gpu.score_batch(&x, &y, BATCH, Curvature::RankOne).unwrap();
        assert_eq!(g.len(), arch.layers());
        for l in 0..arch.layers() {
            close(&format!("scores {l}"), &g[l], &c[l], 2e-3).unwrap();
        }
        assert!(c.iter().flatten().any(|v| v.abs() > 0.0));
    }
    let g = gpu.end_morph().unwrap();
    assert_eq!(
        (g.theta, g.split_ema, g.steps),
        (state.theta, state.split_ema, 0)
    );
}

#[test]
fn vgg_scores_match_cpu() {
    scoring_parity(vgg());
}

#[test]
fn mobilenet_scores_match_cpu() {
    scoring_parity(mobilenet());
}

/// The joint estimate switched on mid-phase starts its cross terms on its
/// first batch, and a phase begun from a state with cross terms continues
/// their average, as on the CPU.
#[test]
fn joint_cross_terms_start_late_and_continue() {
    let arch = mobilenet();
    let Some((_, _, mut cpu, mut gpu)) = both_in_phase(&arch, 6, 9) else {
        return;
    };
    let plain = MorphConfig::paper(BATCH, 40);
    let joint = MorphConfig {
        joint: true,
        ..plain
    };
    for (step, cfg) in [plain, joint, plain, joint].iter().enumerate() {
        let (x, y) = batch(&arch, 30 + step as u64);
        cpu.morph_batch(&x, &y, BATCH, cfg).unwrap();
        gpu.morph_batch(&x, &y, BATCH, cfg).unwrap();
    }
    let (c, g) = (cpu.end_morph().unwrap(), gpu.end_morph().unwrap());
    same_cross("cross terms begun mid-phase", &g, &c, 2e-3);

    // The next phase goes on from the CPU's state on both backends.
    cpu.begin_morph(c.clone()).unwrap();
    gpu.begin_morph(c.clone()).unwrap();
    let (x, y) = batch(&arch, 40);
    cpu.morph_batch(&x, &y, BATCH, &joint).unwrap();
    gpu.morph_batch(&x, &y, BATCH, &joint).unwrap();
    let (c2, g2) = (cpu.end_morph().unwrap(), gpu.end_morph().unwrap());
    same_cross("continued cross terms", &g2, &c2, 2e-3);
    assert_ne!(c2.cross, c.cross);
    // A phase with the joint estimate off hands uploaded cross terms back unchanged.
    gpu.begin_morph(c2.clone()).unwrap();
    gpu.morph_batch(&x, &y, BATCH, &plain).unwrap();
    assert_eq!(gpu.end_morph().unwrap().cross, c2.cross);
}

#[test]
fn bad_batches_and_phases_are_errors() {
    let arch = mobilenet();
    let Some(mut gpu) = gpu_backend() else {
        return;
    };
    let (x, y) = batch(&arch, 1);
    assert!(gpu.eval_batch(&x, &y, BATCH).is_err(), "nothing loaded");
    gpu.load(&network(&arch, 1), None).unwrap();
    assert!(gpu.eval_batch(&x, &y, BATCH + 1).is_err());
    assert!(gpu.eval_batch(&x, &[10, 0, 0, 0], BATCH).is_err());
    assert!(gpu
        .morph_batch(&x, &y, BATCH, &MorphConfig::paper(4, 40))
        .is_err());
    assert!(gpu.end_morph().is_err());
}

#[test]
fn a_width_over_the_device_limits_is_an_error_that_says_what_to_do() {
    let Some(mut gpu) = gpu_backend() else {
        return;
    };
    // One activation of the first layer needs BATCH * 16384 * 32 * 32 * 4
    // bytes (256 MiB), over the 128 MiB one buffer may hold under the
    // portable limits the backend asks for.
    let mut widths = vec![4; 16];
    widths[0] = 16384;
    let arch = Arch::new(Family::Vgg19, [1, 32, 32], 10, widths).unwrap();
    let e = gpu.load(&Network::init(&arch, 0), None).unwrap_err();
    assert!(
        matches!(
            e,
            sprout_core::Error::Backend {
                remedy: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("MiB") && !msg.contains('\n'), "{msg}");
    // The backend stays usable for a network that fits.
    gpu.load(&network(&vgg(), 1), None).unwrap();
}
