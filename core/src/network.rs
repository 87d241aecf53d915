//! A network: an [`Arch`] plus its parameter tensors, in the order of
//! [`Arch::param_specs`].

use crate::arch::{Arch, BnPart, ParamSpec, Post, Role};
use crate::error::{Error, Result};
use crate::rng::Rng;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Indices into the tensor list of one unit's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitParams {
    /// The conv kernel.
    pub conv: usize,
    /// gamma, beta, running mean, running variance.
    pub bn: [usize; 4],
    /// Next-block depthwise kernel and its BN (MobileNet).
    pub depthwise: Option<(usize, [usize; 4])>,
}

/// Indices of every tensor by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamIndex {
    /// Per growable layer.
    pub units: Vec<UnitParams>,
    /// The head's linear weight.
    pub head_weight: usize,
    /// The head's bias.
    pub head_bias: usize,
}

impl ParamIndex {
    /// The index of `arch`'s tensors.
    pub fn new(arch: &Arch) -> ParamIndex {
        let specs = arch.param_specs();
        let mut units: Vec<UnitParams> = arch
            .units()
            .iter()
            .map(|_| UnitParams {
                conv: usize::MAX,
                bn: [usize::MAX; 4],
                depthwise: None,
            })
            .collect();
        let (mut hw, mut hb) = (usize::MAX, usize::MAX);
        for (i, s) in specs.iter().enumerate() {
            match s.role {
                Role::ConvWeight { layer } => units[layer].conv = i,
                Role::BatchNorm {
                    layer,
                    part,
                    depthwise: false,
                } => units[layer].bn[part as usize] = i,
                Role::BatchNorm {
                    layer,
                    part,
                    depthwise: true,
                } => {
                    units[layer]
                        .depthwise
                        .get_or_insert((usize::MAX, [usize::MAX; 4]))
                        .1[part as usize] = i
                }
                Role::DepthwiseWeight { layer } => {
                    units[layer]
                        .depthwise
                        .get_or_insert((usize::MAX, [usize::MAX; 4]))
                        .0 = i
                }
                Role::HeadWeight => hw = i,
                Role::HeadBias => hb = i,
            }
        }
        ParamIndex {
            units,
            head_weight: hw,
            head_bias: hb,
        }
    }
}

/// An architecture and its parameters (NCHW f32 kernels, BN affine parameters
/// and running statistics, linear weight and bias).
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// The architecture the tensors belong to.
    pub arch: Arch,
    /// One tensor per [`ParamSpec`], row-major.
    pub tensors: Vec<Vec<f32>>,
}

impl Network {
    /// Deterministic PyTorch-like initialisation from `seed`: Kaiming-normal
    /// (fan-out, ReLU gain) conv and depthwise kernels, BN gamma 1 and beta 0
    /// with running mean 0 and variance 1, and the default linear init
    /// (uniform in +-1/sqrt(features) for weight and bias).
    pub fn init(arch: &Arch, seed: u64) -> Network {
        let mut rng = Rng::new(seed);
        let features = arch.head().features();
        let tensors = arch
            .param_specs()
            .iter()
            .map(|s| init_tensor(s, features, &mut rng))
            .collect();
        Network {
            arch: arch.clone(),
            tensors,
        }
    }

    /// Builds a network from tensors, checking count and every shape.
    pub fn from_tensors(arch: Arch, tensors: Vec<Vec<f32>>) -> Result<Network> {
        arch.validate()?;
        let specs = arch.param_specs();
        if specs.len() != tensors.len() {
            return Err(Error::shape(
                "the architecture's parameter tensors",
                specs.len(),
                tensors.len(),
            ));
        }
        for (s, t) in specs.iter().zip(&tensors) {
            if s.len() != t.len() {
                return Err(Error::shape(
                    format!("tensor {} {:?} values", s.name, s.shape),
                    s.len(),
                    t.len(),
                ));
            }
            if t.iter().any(|v| !v.is_finite()) {
                // Weights read from files are checked by their loaders; a
                // non-finite value here comes from training.
                return Err(Error::NonFinite(format!(
                    "non-finite weights: tensor {} holds NaN or infinite values",
                    s.name
                )));
            }
        }
        Ok(Network { arch, tensors })
    }

    /// Name, shape and role of every tensor.
    pub fn specs(&self) -> Vec<ParamSpec> {
        self.arch.param_specs()
    }

    /// Indices of the tensors by role.
    pub fn index(&self) -> ParamIndex {
        ParamIndex::new(&self.arch)
    }

    /// A zero tensor set shaped like this network's (gradients, momentum).
    pub fn zeros_like(&self) -> Vec<Vec<f32>> {
        self.tensors.iter().map(|t| vec![0.0; t.len()]).collect()
    }

    /// Whether unit `l` carries a next-block depthwise conv.
    pub fn has_depthwise(&self, l: usize) -> bool {
        matches!(self.arch.units()[l].post, Post::Depthwise { .. })
    }
}

fn init_tensor(s: &ParamSpec, head_features: usize, rng: &mut Rng) -> Vec<f32> {
    let n = s.len();
    match s.role {
        Role::ConvWeight { .. } | Role::DepthwiseWeight { .. } => {
            // kaiming_normal_(mode="fan_out", nonlinearity="relu"): fan_out = shape[0] * k * k.
            let fan_out = s.shape[0] * s.shape[2] * s.shape[3];
            let std = libm::sqrtf(2.0 / fan_out as f32);
            (0..n).map(|_| rng.normal() * std).collect()
        }
        Role::BatchNorm { part, .. } => match part {
            BnPart::Gamma | BnPart::RunningVar => vec![1.0; n],
            BnPart::Beta | BnPart::RunningMean => vec![0.0; n],
        },
        Role::HeadWeight | Role::HeadBias => {
            // nn.Linear's default: weight and bias uniform in +-1/sqrt(fan_in).
            let bound = 1.0 / libm::sqrtf(head_features as f32);
            (0..n).map(|_| rng.uniform_in(-bound, bound)).collect()
        }
    }
}
