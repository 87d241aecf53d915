//! Shared fixtures of sprout's cross-crate tests (the tests live in tests/).

use sprout_core::arch::{BnPart, Role};
use sprout_core::engine::Mode;
use sprout_core::model::Model;
use sprout_core::rng::Rng;
use sprout_core::{Arch, Network};

/// Gives every BN layer random affine parameters (gamma in [0.5, 1.5), beta in
/// [`beta_low`, 0.5)) and running statistics close to the batch statistics of
/// random images, then perturbed: evaluation mode then sees activations of
/// about unit scale with a good share of ReLUs on (a network whose ReLUs are
/// all off would pass any check), and a morphism that forgot to copy a BN
/// tensor changes the function.
pub fn randomize_bn(net: &mut Network, rng: &mut Rng, beta_low: f32) {
    let specs = net.arch.param_specs();
    for (spec, t) in specs.iter().zip(net.tensors.iter_mut()) {
        if let Role::BatchNorm { part, .. } = spec.role {
            for v in t.iter_mut() {
                match part {
                    BnPart::Gamma => *v = rng.uniform_in(0.5, 1.5),
                    BnPart::Beta => *v = rng.uniform_in(beta_low, 0.5),
                    _ => {}
                }
            }
        }
    }
    // Batch statistics of 16 images, folded in until the initial running
    // statistics have decayed away (0.9^80 < 2e-4).
    let n = 16;
    let len = n * net.arch.input.iter().product::<usize>();
    let images: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
    let mut model = Model::new(&net.arch, n);
    model.forward(net, &images, n, Mode::Train);
    for _ in 0..80 {
        model.update_running_stats(net);
    }
    for (spec, t) in specs.iter().zip(net.tensors.iter_mut()) {
        if let Role::BatchNorm { part, .. } = spec.role {
            for v in t.iter_mut() {
                match part {
                    BnPart::RunningMean => *v += rng.uniform_in(-0.2, 0.2),
                    BnPart::RunningVar => *v *= rng.uniform_in(0.7, 1.4),
                    _ => {}
                }
            }
        }
    }
}

/// A network from `seed` with random BN state ([`randomize_bn`]), `n` random
/// images and the model after an eval-mode forward, loss and backward on
/// them: what the estimator tests start from. Returns the network, the
/// images, the model and the mean loss.
pub fn evaluated_network(arch: Arch, seed: u64, n: usize) -> (Network, Vec<f32>, Model, f32) {
    let mut rng = Rng::new(seed);
    let mut net = Network::init(&arch, rng.next_u64());
    randomize_bn(&mut net, &mut rng, -0.1);
    let len = n * arch.input.iter().product::<usize>();
    let images: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(arch.classes) as u32).collect();
    let mut model = Model::new(&arch, n);
    model.forward(&net, &images, n, Mode::Eval);
    let (loss, _) = model.loss(&labels);
    let mut grads = net.zeros_like();
    model.backward(&net, &mut grads);
    (net, images, model, loss)
}
