//! Function preservation of channel morphisms (paper section 3.1,
//! docs/conventions.md "The estimator"): splitting channels with `theta = 0`, and
//! pruning channels whose outgoing weights are zero, leaves the network's
//! outputs unchanged, in evaluation mode (BN running statistics) and in
//! training mode (BN batch statistics: both halves of a split see the same
//! statistics). Also: the morphed architecture's size, the optimizer state
//! carried through a split, and the inputs `morph::apply` must refuse.
//!
//! Proptest draws the architecture, the batch size and a seed; everything
//! else (weights, BN state, images, which channels to morph) comes from the
//! seeded generator of sprout-core, so a failing case is reproduced by its
//! printed case.

use proptest::prelude::*;
use sprout_core::engine::Mode;
use sprout_core::model::Model;
use sprout_core::morph::{apply, ChannelMorphism, Morphism};
use sprout_core::rng::Rng;
use sprout_core::{Arch, Family, Network};
use sprout_tests::randomize_bn;

/// Cases per property: each case builds, morphs and runs two real (small)
/// networks in both modes, a few milliseconds, so 32 keeps the file around a
/// second while covering both families, single-channel layers and batches
/// of one.
const CASES: u32 = 32;

/// Logits may differ by float rounding only: the next layer sums
/// `w/2 * a + w/2 * a` where it summed `w * a`, so its accumulation order
/// changes, and the difference travels through up to 16 more layers. Bounds
/// are relative to the largest logit, plus an absolute floor for networks
/// whose logits are all near zero. Measured over 2,000 random cases: at most
/// 1.9e-5 in evaluation mode. In training mode BN divides by batch standard
/// deviations, which amplifies rounding where a channel's few batch values
/// nearly coincide; with MobileNet on 12x12 inputs (1x1 planes at the end,
/// statistics over n values) a case moved the logits by 8.9e-4, so cases use
/// at least two samples and MobileNet 32x32 inputs (2x2 planes at the end).
/// A morphism that drops the halving, a BN copy or a channel moves the
/// logits by a sizeable fraction of their scale.
const REL_TOL_EVAL: f32 = 1e-4;
const REL_TOL_TRAIN: f32 = 1e-3;
const ABS_TOL: f32 = 1e-6;

#[derive(Clone, Debug)]
struct Case {
    family: Family,
    input: [usize; 3],
    classes: usize,
    widths: Vec<usize>,
    n: usize,
    seed: u64,
}

impl Case {
    fn arch(&self) -> Arch {
        Arch::new(self.family, self.input, self.classes, self.widths.clone()).unwrap()
    }
}

/// VGG-19 (1..6 channels per layer) on 1x32x32 or 2x32x32, or MobileNetV1
/// (1..6 per layer) on 3x12x12; 2..5 classes, 1..4 images.
fn case() -> impl Strategy<Value = Case> {
    let vgg = (
        1usize..=2,
        2usize..=5,
        prop::collection::vec(1usize..=6, 16),
        2usize..=4,
        any::<u64>(),
    )
        .prop_map(|(c, classes, widths, n, seed)| Case {
            family: Family::Vgg19,
            input: [c, 32, 32],
            classes,
            widths,
            n,
            seed,
        });
    let mobilenet = (
        2usize..=5,
        prop::collection::vec(1usize..=6, 14),
        2usize..=4,
        any::<u64>(),
    )
        .prop_map(|(classes, widths, n, seed)| Case {
            family: Family::MobilenetV1,
            input: [3, 32, 32],
            classes,
            widths,
            n,
            seed,
        });
    prop_oneof![vgg, mobilenet]
}

/// Index of the tensor called `name`.
fn tensor_index(arch: &Arch, name: &str) -> usize {
    arch.param_specs()
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

/// A network with random weights and BN state, and `n` random images.
fn network_and_images(case: &Case, rng: &mut Rng) -> (Network, Vec<f32>) {
    let arch = case.arch();
    let mut net = Network::init(&arch, rng.next_u64());
    randomize_bn(&mut net, rng, -0.2);
    let len = case.n * case.input.iter().product::<usize>();
    let images = (0..len).map(|_| rng.normal()).collect();
    (net, images)
}

struct Run {
    logits: Vec<f32>,
    /// Whether any value of the last unit's output is nonzero: a network whose
    /// ReLUs are all off computes a constant and would preserve anything.
    alive: bool,
}

fn run(net: &Network, images: &[f32], n: usize, mode: Mode) -> Run {
    let mut model = Model::new(&net.arch, n);
    model.forward(net, images, n, mode);
    let last = net.arch.layers() - 1;
    Run {
        logits: model.logits().to_vec(),
        alive: model.unit_output(last).iter().any(|v| *v != 0.0),
    }
}

/// Largest logit difference and the bound it must stay under.
fn logit_error(before: &[f32], after: &[f32], rel_tol: f32) -> (f32, f32) {
    assert_eq!(before.len(), after.len());
    let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = before
        .iter()
        .zip(after)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    (err, rel_tol * scale + ABS_TOL)
}

/// Random channel picks: `(layer, channel)` pairs, distinct, 1..=8 of them.
fn random_channels(arch: &Arch, rng: &mut Rng) -> Vec<(usize, usize)> {
    let count = 1 + rng.below(8);
    let mut picks: Vec<(usize, usize)> = Vec::new();
    for _ in 0..count {
        let layer = rng.below(arch.layers());
        let channel = rng.below(arch.widths[layer]);
        if !picks.contains(&(layer, channel)) {
            picks.push((layer, channel));
        }
    }
    picks
}

fn zero_split(arch: &Arch, layer: usize, channel: usize) -> ChannelMorphism {
    let fan_in = arch.units()[layer].fan_in();
    ChannelMorphism {
        layer,
        channel,
        morphism: Morphism::Split {
            theta: vec![0.0; fan_in],
        },
    }
}

/// Sets the weights through which channel `c` of `layer` reaches the rest of
/// the network to zero: the next conv's input-channel slice, or the head's
/// columns for the last layer.
fn silence_outgoing(net: &mut Network, layer: usize, c: usize) {
    let arch = net.arch.clone();
    let units = arch.units();
    let idx = net.index();
    let width = units[layer].cout;
    if layer + 1 < units.len() {
        let next = units[layer + 1];
        let kk = next.kernel * next.kernel;
        let t = &mut net.tensors[idx.units[layer + 1].conv];
        for o in 0..next.cout {
            t[(o * width + c) * kk..][..kk].fill(0.0);
        }
    } else {
        let head = arch.head();
        let t = &mut net.tensors[idx.head_weight];
        for k in 0..head.classes {
            t[k * head.features() + c * head.positions..][..head.positions].fill(0.0);
        }
    }
}

/// Checks the morphed network's architecture: widths moved by the splits and
/// prunes of each layer, and parameters and MACs those of a freshly built
/// architecture with the new widths.
fn check_arch(
    before: &Arch,
    after: &Network,
    morphisms: &[ChannelMorphism],
) -> Result<(), TestCaseError> {
    let mut widths = before.widths.clone();
    for m in morphisms {
        match m.morphism {
            Morphism::Split { .. } => widths[m.layer] += 1,
            Morphism::Prune => widths[m.layer] -= 1,
        }
    }
    prop_assert_eq!(&after.arch.widths, &widths);
    let fresh = Arch::new(before.family, before.input, before.classes, widths).unwrap();
    prop_assert_eq!(after.arch.params(), fresh.params());
    prop_assert_eq!(after.arch.macs(), fresh.macs());
    prop_assert_eq!(&after.arch, &fresh);
    let specs = fresh.param_specs();
    prop_assert_eq!(after.tensors.len(), specs.len());
    for (t, s) in after.tensors.iter().zip(&specs) {
        prop_assert_eq!(t.len(), s.len(), "{}", s.name);
    }
    Ok(())
}

/// Runs `before` and `after` on the same images in both BN modes and checks
/// that the logits agree.
fn check_same_function(
    case: &Case,
    before: &Network,
    after: &Network,
    images: &[f32],
) -> Result<(), TestCaseError> {
    for mode in [Mode::Eval, Mode::Train] {
        let a = run(before, images, case.n, mode);
        let b = run(after, images, case.n, mode);
        let rel_tol = match mode {
            Mode::Eval => REL_TOL_EVAL,
            Mode::Train => REL_TOL_TRAIN,
        };
        let (err, bound) = logit_error(&a.logits, &b.logits, rel_tol);
        prop_assert!(
            err <= bound,
            "{:?} mode: logits moved by {} (bound {})\nbefore {:?}\nafter  {:?}",
            mode,
            err,
            bound,
            a.logits,
            b.logits
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Splits with `theta = 0` in random layers leave the logits unchanged.
    #[test]
    fn zero_theta_splits_preserve_the_function(case in case()) {
        let mut rng = Rng::new(case.seed);
        let (net, images) = network_and_images(&case, &mut rng);
        prop_assume!(run(&net, &images, case.n, Mode::Eval).alive);
        let morphisms: Vec<ChannelMorphism> = random_channels(&net.arch, &mut rng)
            .into_iter()
            .map(|(l, c)| zero_split(&net.arch, l, c))
            .collect();
        let grown = apply(&net, &morphisms, &mut []).unwrap();
        check_arch(&net.arch, &grown, &morphisms)?;
        check_same_function(&case, &net, &grown, &images)?;
    }

    /// Zero-theta splits and prunes of channels whose outgoing weights are
    /// zero, in one call, leave the logits unchanged.
    #[test]
    fn splits_and_prunes_of_silent_channels_preserve_the_function(case in case()) {
        let mut rng = Rng::new(case.seed);
        let (mut net, images) = network_and_images(&case, &mut rng);
        let arch = net.arch.clone();
        let mut morphisms = Vec::new();
        for (l, c) in random_channels(&arch, &mut rng) {
            morphisms.push(zero_split(&arch, l, c));
        }
        // Up to width - 1 prunes per layer, in random layers, on channels not split.
        for _ in 0..1 + rng.below(8) {
            let l = rng.below(arch.layers());
            let c = rng.below(arch.widths[l]);
            let taken = morphisms.iter().any(|m| m.layer == l && m.channel == c);
            let prunes = morphisms
                .iter()
                .filter(|m| m.layer == l && m.morphism == Morphism::Prune)
                .count();
            if !taken && prunes + 1 < arch.widths[l] {
                silence_outgoing(&mut net, l, c);
                morphisms.push(ChannelMorphism { layer: l, channel: c, morphism: Morphism::Prune });
            }
        }
        prop_assume!(morphisms.iter().any(|m| m.morphism == Morphism::Prune));
        prop_assume!(run(&net, &images, case.n, Mode::Eval).alive);
        let grown = apply(&net, &morphisms, &mut []).unwrap();
        check_arch(&arch, &grown, &morphisms)?;
        check_same_function(&case, &net, &grown, &images)?;
    }
}

/// Distinct, exactly representable values for every entry of every tensor:
/// tensor `i`, entry `j` holds `10_000 i + j + 0.5`.
fn numbered_like(net: &Network) -> Vec<Vec<f32>> {
    net.tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (0..t.len())
                .map(|j| (10_000 * i + j) as f32 + 0.5)
                .collect()
        })
        .collect()
}

/// Rows of a `[outer, channels, inner]` tensor as `[outer][channel] -> inner slice`.
fn block(t: &[f32], channels: usize, inner: usize, o: usize, c: usize) -> &[f32] {
    &t[(o * channels + c) * inner..][..inner]
}

/// Checks every tensor of `after` against `before` for the split of channel
/// `c` of `layer` (new copy at `c + 1`), with `theta` added to the weights
/// (`None` for optimizer state, which gets no theta). `touched` collects the
/// names of the tensors checked here.
fn check_split_tensors(
    before_arch: &Arch,
    before: &[Vec<f32>],
    after_arch: &Arch,
    after: &[Vec<f32>],
    layer: usize,
    c: usize,
    theta: Option<&[f32]>,
    touched: &mut Vec<String>,
) {
    let ub = before_arch.units();
    let width = ub[layer].cout;
    let fan_in = ub[layer].fan_in();
    // New channel j comes from old channel from[j].
    let from: Vec<usize> = (0..=width)
        .map(|j| if j <= c { j } else { j - 1 })
        .collect();
    let sign = |j: usize| -> f32 {
        if j == c {
            1.0
        } else if j == c + 1 {
            -1.0
        } else {
            0.0
        }
    };
    let split_half = |j: usize| j == c || j == c + 1;
    let name = |s: &str| format!("layers.{layer}.{s}");
    // Incoming kernel: w_in[c] + theta and w_in[c] - theta, the rest unchanged.
    let conv = name("conv.weight");
    let (ib, ia) = (
        tensor_index(before_arch, &conv),
        tensor_index(after_arch, &conv),
    );
    assert_eq!(after[ia].len(), (width + 1) * fan_in, "{conv}");
    for j in 0..=width {
        for k in 0..fan_in {
            let th = theta.map_or(0.0, |t| t[k]);
            let want = before[ib][from[j] * fan_in + k] + sign(j) * th;
            assert_eq!(after[ia][j * fan_in + k], want, "{conv}[{j}][{k}]");
        }
    }
    touched.push(conv);
    // Channelwise tensors: BN of the conv, and (MobileNet) the next block's
    // depthwise kernel and its BN, copied to the new channel.
    let mut channelwise: Vec<(String, usize)> = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|p| (name(&format!("bn.{p}")), 1))
        .collect();
    if before_arch
        .param_specs()
        .iter()
        .any(|s| s.name == name("next_depthwise.weight"))
    {
        channelwise.push((name("next_depthwise.weight"), 9));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            channelwise.push((name(&format!("next_depthwise.bn.{p}")), 1));
        }
    }
    for (t, inner) in channelwise {
        let (ib, ia) = (tensor_index(before_arch, &t), tensor_index(after_arch, &t));
        assert_eq!(after[ia].len(), (width + 1) * inner, "{t}");
        for j in 0..=width {
            assert_eq!(
                block(&after[ia], width + 1, inner, 0, j),
                block(&before[ib], width, inner, 0, from[j]),
                "{t} channel {j}"
            );
        }
        touched.push(t);
    }
    // Outgoing weights: halved on both halves of the split.
    let (t, outer, inner) = if layer + 1 < ub.len() {
        let next = ub[layer + 1];
        (
            format!("layers.{}.conv.weight", layer + 1),
            next.cout,
            next.kernel * next.kernel,
        )
    } else {
        let h = before_arch.head();
        ("head.weight".to_string(), h.classes, h.positions)
    };
    let (ib, ia) = (tensor_index(before_arch, &t), tensor_index(after_arch, &t));
    assert_eq!(after[ia].len(), outer * (width + 1) * inner, "{t}");
    for o in 0..outer {
        for j in 0..=width {
            let f = if split_half(j) { 0.5 } else { 1.0 };
            let want: Vec<f32> = block(&before[ib], width, inner, o, from[j])
                .iter()
                .map(|v| v * f)
                .collect();
            assert_eq!(
                block(&after[ia], width + 1, inner, o, j),
                &want[..],
                "{t}[{o}][{j}]"
            );
        }
    }
    touched.push(t);
}

/// Every tensor not in `touched` is unchanged.
fn check_untouched(
    before_arch: &Arch,
    before: &[Vec<f32>],
    after_arch: &Arch,
    after: &[Vec<f32>],
    touched: &[String],
) {
    let specs = after_arch.param_specs();
    for (ia, s) in specs.iter().enumerate() {
        if !touched.contains(&s.name) {
            let ib = tensor_index(before_arch, &s.name);
            assert_eq!(after[ia], before[ib], "{} changed", s.name);
        }
    }
}

/// The weights and a momentum buffer through a split in a middle VGG layer
/// and one in the last (whose outgoing weights are the head's columns).
#[test]
fn vgg_split_copies_weights_and_optimizer_state() {
    let arch = Arch::new(Family::Vgg19, [1, 32, 32], 3, vec![2; 16]).unwrap();
    let mut net = Network::init(&arch, 11);
    randomize_bn(&mut net, &mut Rng::new(12), -0.2);
    let momentum = numbered_like(&net);
    let fan3 = arch.units()[3].fan_in();
    let fan15 = arch.units()[15].fan_in();
    let theta3: Vec<f32> = (0..fan3).map(|k| 0.01 * (k as f32 + 1.0)).collect();
    let theta15: Vec<f32> = (0..fan15).map(|k| -0.02 * (k as f32 + 1.0)).collect();
    let morphisms = [
        ChannelMorphism {
            layer: 3,
            channel: 1,
            morphism: Morphism::Split {
                theta: theta3.clone(),
            },
        },
        ChannelMorphism {
            layer: 15,
            channel: 0,
            morphism: Morphism::Split {
                theta: theta15.clone(),
            },
        },
    ];
    let mut extra = vec![momentum.clone()];
    let grown = apply(&net, &morphisms, &mut extra).unwrap();
    assert_eq!(grown.arch.widths[3], 3);
    assert_eq!(grown.arch.widths[15], 3);

    let mut touched = Vec::new();
    check_split_tensors(
        &arch,
        &net.tensors,
        &grown.arch,
        &grown.tensors,
        3,
        1,
        Some(&theta3),
        &mut touched,
    );
    check_split_tensors(
        &arch,
        &net.tensors,
        &grown.arch,
        &grown.tensors,
        15,
        0,
        Some(&theta15),
        &mut touched,
    );
    check_untouched(&arch, &net.tensors, &grown.arch, &grown.tensors, &touched);

    let mut touched = Vec::new();
    check_split_tensors(
        &arch,
        &momentum,
        &grown.arch,
        &extra[0],
        3,
        1,
        None,
        &mut touched,
    );
    check_split_tensors(
        &arch,
        &momentum,
        &grown.arch,
        &extra[0],
        15,
        0,
        None,
        &mut touched,
    );
    check_untouched(&arch, &momentum, &grown.arch, &extra[0], &touched);

    // Spot values by hand: the new channel's incoming momentum equals the
    // original's, and the outgoing momentum is halved on both halves.
    let (c3, c4) = (
        tensor_index(&arch, "layers.3.conv.weight"),
        tensor_index(&arch, "layers.4.conv.weight"),
    );
    let m = &extra[0];
    assert_eq!(m[c3][2 * fan3 + 5], momentum[c3][fan3 + 5]);
    assert_eq!(m[c3][fan3 + 5], momentum[c3][fan3 + 5]);
    // layers.4.conv.weight was [2, 2, 3, 3] and is [2, 3, 3, 3]: entry
    // [1][1][4] moves to [1][1][4] and [1][2][4], halved; [1][0][4] stays.
    let at = |o: usize, c: usize, cin: usize| (o * cin + c) * 9 + 4;
    assert_eq!(m[c4][at(1, 1, 3)], momentum[c4][at(1, 1, 2)] * 0.5);
    assert_eq!(m[c4][at(1, 2, 3)], momentum[c4][at(1, 1, 2)] * 0.5);
    assert_eq!(m[c4][at(1, 0, 3)], momentum[c4][at(1, 0, 2)]);
    let hw = tensor_index(&arch, "head.weight");
    // head.weight was [3, 2]; row 2 becomes [m/2, m/2, m'].
    assert_eq!(
        &m[hw][6..9],
        &[
            momentum[hw][4] * 0.5,
            momentum[hw][4] * 0.5,
            momentum[hw][5]
        ]
    );
}

/// MobileNet: a split copies the next block's depthwise kernel and its BN (and
/// their momentum); a prune in the same call drops the channel everywhere.
#[test]
fn mobilenet_split_and_prune_carry_optimizer_state() {
    let arch = Arch::new(Family::MobilenetV1, [3, 12, 12], 4, vec![3; 14]).unwrap();
    let mut net = Network::init(&arch, 21);
    randomize_bn(&mut net, &mut Rng::new(22), -0.2);
    let momentum = numbered_like(&net);
    let fan2 = arch.units()[2].fan_in();
    let theta: Vec<f32> = (0..fan2).map(|k| 0.1 - 0.03 * k as f32).collect();
    let split = [ChannelMorphism {
        layer: 2,
        channel: 0,
        morphism: Morphism::Split {
            theta: theta.clone(),
        },
    }];
    let mut extra = vec![momentum.clone(), momentum.clone()];
    let grown = apply(&net, &split, &mut extra).unwrap();
    let mut touched = Vec::new();
    check_split_tensors(
        &arch,
        &net.tensors,
        &grown.arch,
        &grown.tensors,
        2,
        0,
        Some(&theta),
        &mut touched,
    );
    check_untouched(&arch, &net.tensors, &grown.arch, &grown.tensors, &touched);
    for e in &extra {
        let mut touched = Vec::new();
        check_split_tensors(&arch, &momentum, &grown.arch, e, 2, 0, None, &mut touched);
        check_untouched(&arch, &momentum, &grown.arch, e, &touched);
    }
    let dw = tensor_index(&arch, "layers.2.next_depthwise.weight");
    assert_eq!(&extra[0][dw][9..18], &momentum[dw][0..9]);

    // Prune channel 1 of layer 5: every tensor carrying layer 5's channels
    // loses that channel, in the weights and in the momentum.
    let prune = [ChannelMorphism {
        layer: 5,
        channel: 1,
        morphism: Morphism::Prune,
    }];
    let mut extra = vec![momentum.clone()];
    let pruned = apply(&net, &prune, &mut extra).unwrap();
    assert_eq!(pruned.arch.widths[5], 2);
    for (before, after) in [(&net.tensors, &pruned.tensors), (&momentum, &extra[0])] {
        for (ia, s) in pruned.arch.param_specs().iter().enumerate() {
            let ib = tensor_index(&arch, &s.name);
            let (channels, outer, inner) = match s.name.as_str() {
                "layers.5.conv.weight" => (3, 1, 3),
                "layers.5.next_depthwise.weight" => (3, 1, 9),
                "layers.6.conv.weight" => (3, 3, 1),
                n if n.starts_with("layers.5.") => (3, 1, 1),
                _ => {
                    assert_eq!(after[ia], before[ib], "{}", s.name);
                    continue;
                }
            };
            let mut want = Vec::new();
            for o in 0..outer {
                for c in [0, 2] {
                    want.extend_from_slice(block(&before[ib], channels, inner, o, c));
                }
            }
            assert_eq!(after[ia], want, "{}", s.name);
        }
    }
}

fn split(layer: usize, channel: usize, len: usize) -> ChannelMorphism {
    ChannelMorphism {
        layer,
        channel,
        morphism: Morphism::Split {
            theta: vec![0.0; len],
        },
    }
}

fn prune(layer: usize, channel: usize) -> ChannelMorphism {
    ChannelMorphism {
        layer,
        channel,
        morphism: Morphism::Prune,
    }
}

/// Bad morphism sets are refused with an error, and their nearest valid
/// neighbours are accepted (so the refusals are about the flaw, not the call).
#[test]
fn invalid_morphisms_are_errors() {
    let arch = Arch::new(
        Family::Vgg19,
        [1, 32, 32],
        3,
        vec![2, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    )
    .unwrap();
    let net = Network::init(&arch, 3);
    let fan = |l: usize| arch.units()[l].fan_in();
    let ok = |m: &[ChannelMorphism]| apply(&net, m, &mut []).is_ok();
    let err = |m: &[ChannelMorphism]| match apply(&net, m, &mut []) {
        Ok(_) => false,
        Err(e) => !e.to_string().is_empty(),
    };

    // Channel and layer out of range.
    assert!(ok(&[split(1, 2, fan(1))]));
    assert!(err(&[split(1, 3, fan(1))]));
    assert!(err(&[prune(1, 3)]));
    assert!(err(&[split(16, 0, 9)]));
    assert!(err(&[prune(16, 0)]));

    // Two morphisms on one channel.
    assert!(ok(&[split(1, 0, fan(1)), split(1, 1, fan(1))]));
    assert!(err(&[split(1, 0, fan(1)), split(1, 0, fan(1))]));
    assert!(err(&[split(1, 0, fan(1)), prune(1, 0)]));
    assert!(err(&[prune(1, 0), prune(1, 0)]));

    // Theta of the wrong length, including one sized for the input width the
    // layer would have after a split of the layer before it.
    assert!(ok(&[split(2, 0, fan(2))]));
    assert!(err(&[split(2, 0, fan(2) - 1)]));
    assert!(err(&[split(2, 0, fan(2) + 1)]));
    assert!(err(&[split(2, 0, 0)]));
    assert!(err(&[split(1, 0, fan(1)), split(2, 0, fan(2) + 9)]));

    // Pruning every channel of a layer, alone or alongside valid morphisms.
    assert!(ok(&[prune(0, 0)]));
    assert!(ok(&[prune(1, 0), prune(1, 1), split(1, 2, fan(1))]));
    assert!(err(&[prune(0, 0), prune(0, 1)]));
    assert!(err(&[prune(1, 0), prune(1, 1), prune(1, 2)]));
    assert!(err(&[split(3, 0, fan(3)), prune(0, 0), prune(0, 1)]));

    // Optimizer state that does not match the network.
    let mut short = vec![net.zeros_like()];
    short[0].pop();
    assert!(apply(&net, &[split(1, 0, fan(1))], &mut short).is_err());
    let mut fine = vec![net.zeros_like()];
    assert!(apply(&net, &[split(1, 0, fan(1))], &mut fine).is_ok());
}
