//! Architectures: the VGG-19 and MobileNetV1 presets with per-layer widths.
//!
//! A network is a sequence of *units*, one per growable layer. Unit `l` is the
//! growable conv and the channelwise map sigma that follows it up to the input
//! of the next conv (docs/conventions.md, "The estimator"):
//!
//! - VGG-19: conv3x3 -> BN -> ReLU [-> max-pool 2x2 after convs 2, 4, 8, 12, 16].
//! - MobileNetV1: unit 0 is the first conv3x3 -> BN -> ReLU, unit `l >= 1` is the
//!   pointwise conv of block `l` -> BN -> ReLU; every unit but the last then
//!   carries the *next* block's depthwise3x3 -> BN -> ReLU, which is channelwise
//!   in the unit's channels and so part of its sigma.
//!
//! The unit's output `a_l` is exactly what the next conv (or the head) reads.
//! The head is flatten (VGG) or global average pool (MobileNet), then linear.

use crate::error::{Error, Result};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The preset family an architecture belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Family {
    /// VGG-19: sixteen 3x3 convs with BN + ReLU, max-pools, flatten head.
    Vgg19,
    /// MobileNetV1: a 3x3 conv, then depthwise-separable blocks, global-average head.
    MobilenetV1,
}

impl Family {
    /// Number of growable layers.
    pub fn layers(self) -> usize {
        match self {
            Family::Vgg19 => 16,
            Family::MobilenetV1 => 14,
        }
    }

    /// Parses `vgg19` or `mobilenet-v1` (also `mobilenet_v1`).
    pub fn parse(s: &str) -> Result<Family> {
        match s {
            "vgg19" | "vgg-19" => Ok(Family::Vgg19),
            "mobilenet-v1" | "mobilenet_v1" | "mobilenetv1" => Ok(Family::MobilenetV1),
            _ => Err(Error::Arch(format!(
                "unknown architecture '{s}' (expected vgg19 or mobilenet-v1)"
            ))),
        }
    }

    /// The name [`Family::parse`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            Family::Vgg19 => "vgg19",
            Family::MobilenetV1 => "mobilenet-v1",
        }
    }
}

/// What follows a unit's BN + ReLU before the next conv reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    /// Nothing: `a = relu(bn(y))`.
    None,
    /// 2x2 max-pool, stride 2 (floor).
    MaxPool,
    /// The next block's depthwise 3x3 (pad 1) with this stride, then BN + ReLU.
    Depthwise {
        /// Stride of the depthwise conv.
        stride: usize,
    },
}

/// How the head reduces the last unit's output to features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Flatten the last unit's output (channel-major) into the linear layer.
    Flatten,
    /// Average each channel over its positions before the linear layer.
    GlobalAverage,
}

/// Shapes of one unit, derived from an [`Arch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitShape {
    /// Input channels of the conv.
    pub cin: usize,
    /// Output channels of the conv: the layer's width.
    pub cout: usize,
    /// Kernel size `k` of the square `k x k` conv.
    pub kernel: usize,
    /// Conv stride.
    pub stride: usize,
    /// Zero padding on every side of the input.
    pub pad: usize,
    /// Input spatial size (height, width).
    pub in_hw: (usize, usize),
    /// Conv output (pre-activation) spatial size.
    pub conv_hw: (usize, usize),
    /// What follows BN + ReLU in the unit's channelwise map.
    pub post: Post,
    /// Spatial size of the unit output `a`.
    pub out_hw: (usize, usize),
}

impl UnitShape {
    /// The shape of a unit built outside any [`Arch`]: a `kernel x kernel`
    /// conv from `cin` to `cout` channels on an `in_hw` input, then BN +
    /// ReLU and `post`. The conv and output sizes follow (floor division).
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        in_hw: (usize, usize),
        post: Post,
    ) -> UnitShape {
        let conv_hw = conv_out(in_hw, kernel, stride, pad);
        UnitShape {
            cin,
            cout,
            kernel,
            stride,
            pad,
            in_hw,
            conv_hw,
            post,
            out_hw: post_out(conv_hw, post),
        }
    }

    /// Elements of one sample's input `[cin, H, W]`.
    pub fn in_len(&self) -> usize {
        self.cin * self.in_hw.0 * self.in_hw.1
    }
    /// Elements of one sample's pre-activation `[cout, Hc, Wc]`.
    pub fn conv_len(&self) -> usize {
        self.cout * self.conv_hw.0 * self.conv_hw.1
    }
    /// Elements of one sample's output `a` `[cout, Ho, Wo]`.
    pub fn out_len(&self) -> usize {
        self.cout * self.out_hw.0 * self.out_hw.1
    }
    /// Elements of the conv kernel `[cout, cin, k, k]`.
    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * self.kernel * self.kernel
    }
    /// Elements of one channel's incoming kernel `[cin, k, k]`.
    pub fn fan_in(&self) -> usize {
        self.cin * self.kernel * self.kernel
    }

    /// The unit's conv as a kernel geometry.
    pub fn conv_geom(&self) -> ConvGeom {
        ConvGeom {
            cin: self.cin,
            cout: self.cout,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            in_hw: self.in_hw,
            out_hw: self.conv_hw,
        }
    }
    /// The BN over `n` samples of the conv output, or (`depthwise`) of the
    /// depthwise conv's output.
    pub fn bn_geom(&self, n: usize, depthwise: bool) -> BnGeom {
        let hw = if depthwise { self.out_hw } else { self.conv_hw };
        BnGeom {
            n,
            channels: self.cout,
            plane: hw.0 * hw.1,
        }
    }
    /// The depthwise conv a MobileNet unit carries, at `stride`.
    pub fn dw_geom(&self, stride: usize) -> DwGeom {
        DwGeom {
            channels: self.cout,
            stride,
            in_hw: self.conv_hw,
            out_hw: self.out_hw,
        }
    }
}

/// Geometry of a convolution (groups 1, no bias), NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size `k` (square).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Input spatial size (height, width).
    pub in_hw: (usize, usize),
    /// Output spatial size (height, width).
    pub out_hw: (usize, usize),
}

impl ConvGeom {
    /// Rows of the im2col matrix: `cin * k * k`.
    pub fn patch(&self) -> usize {
        self.cin * self.kernel * self.kernel
    }
    /// Values per input plane.
    pub fn in_plane(&self) -> usize {
        self.in_hw.0 * self.in_hw.1
    }
    /// Values per output plane.
    pub fn out_plane(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }
}

/// Geometry of a depthwise 3x3 conv with padding 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwGeom {
    /// Channels (one 3x3 kernel each).
    pub channels: usize,
    /// Stride.
    pub stride: usize,
    /// Input spatial size (height, width).
    pub in_hw: (usize, usize),
    /// Output spatial size (height, width).
    pub out_hw: (usize, usize),
}

impl DwGeom {
    /// Values per input plane.
    pub fn in_plane(&self) -> usize {
        self.in_hw.0 * self.in_hw.1
    }
    /// Values per output plane.
    pub fn out_plane(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }
}

/// Layout of a BN input: `n` samples of `channels` planes of `plane` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnGeom {
    /// Samples.
    pub n: usize,
    /// Channels.
    pub channels: usize,
    /// Values per channel plane (`H * W`).
    pub plane: usize,
}

impl BnGeom {
    /// Values each channel's statistics run over: `n * plane`.
    pub fn count(&self) -> usize {
        self.n * self.plane
    }
}

/// Shape of the classifier head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    /// How the head reduces the last unit's output.
    pub pool: Pool,
    /// Channels of the last unit.
    pub channels: usize,
    /// Spatial positions per channel that the linear layer reads (1 after global pooling).
    pub positions: usize,
    /// Classes: the linear layer's outputs.
    pub classes: usize,
}

impl HeadShape {
    /// Inputs of the linear layer: `channels * positions`.
    pub fn features(&self) -> usize {
        self.channels * self.positions
    }
}

/// An architecture: family, input shape, class count and one width per growable layer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Arch {
    /// The preset family.
    pub family: Family,
    /// Input shape `[channels, height, width]`.
    pub input: [usize; 3],
    /// Classes of the classifier head.
    pub classes: usize,
    /// Output channels of each growable layer.
    pub widths: Vec<usize>,
}

const VGG_POOL_AFTER: [usize; 5] = [1, 3, 7, 11, 15];
/// MobileNetV1 blocks (1-based) whose depthwise conv has stride 2 (CIFAR variant).
const MOBILENET_STRIDE2_BLOCKS: [usize; 4] = [2, 4, 6, 12];

/// Largest width accepted for any layer; guards against absurd flag values.
pub const MAX_WIDTH: usize = 1 << 16;

impl Arch {
    /// Builds and validates an architecture.
    pub fn new(
        family: Family,
        input: [usize; 3],
        classes: usize,
        widths: Vec<usize>,
    ) -> Result<Arch> {
        let arch = Arch {
            family,
            input,
            classes,
            widths,
        };
        arch.validate()?;
        Ok(arch)
    }

    /// VGG-19 with the same width in every conv (seed: 16).
    pub fn vgg19(width: usize, input: [usize; 3], classes: usize) -> Result<Arch> {
        Arch::new(Family::Vgg19, input, classes, vec![width; 16])
    }

    /// MobileNetV1 (CIFAR strides) with the same width everywhere (seed: 32).
    pub fn mobilenet_v1(width: usize, input: [usize; 3], classes: usize) -> Result<Arch> {
        Arch::new(Family::MobilenetV1, input, classes, vec![width; 14])
    }

    /// Checks widths, class count and that every spatial size stays positive.
    pub fn validate(&self) -> Result<()> {
        let n = self.family.layers();
        if self.widths.len() != n {
            return Err(Error::Arch(format!(
                "{} has {} growable layers but {} widths were given",
                self.family.name(),
                n,
                self.widths.len()
            )));
        }
        if let Some((i, w)) = self
            .widths
            .iter()
            .enumerate()
            .find(|(_, &w)| w == 0 || w > MAX_WIDTH)
        {
            return Err(Error::Arch(format!(
                "width of layer {i} is {w}; widths must be between 1 and {MAX_WIDTH}"
            )));
        }
        let [c, h, w] = self.input;
        if c == 0 || h == 0 || w == 0 || c > 64 || h > 4096 || w > 4096 {
            return Err(Error::Arch(format!(
                "input shape {c}x{h}x{w} is not usable (need 1..64 channels, 1..4096 pixels)"
            )));
        }
        if self.classes < 2 || self.classes > 100_000 {
            return Err(Error::Arch(format!(
                "{} classes: need between 2 and 100000",
                self.classes
            )));
        }
        let mut hw = (h, w);
        for l in 0..n {
            let (stride, post) = self.unit_kind(l);
            hw = conv_out(hw, 3, stride, 1);
            let out = post_out(hw, post);
            if out.0 == 0 || out.1 == 0 {
                return Err(Error::Arch(format!(
                    "input {h}x{w} is too small for {}: layer {l} would have no pixels left",
                    self.family.name()
                )));
            }
            hw = out;
        }
        Ok(())
    }

    fn unit_kind(&self, l: usize) -> (usize, Post) {
        match self.family {
            Family::Vgg19 => {
                let post = if VGG_POOL_AFTER.contains(&l) {
                    Post::MaxPool
                } else {
                    Post::None
                };
                (1, post)
            }
            Family::MobilenetV1 => {
                let post = if l + 1 < self.widths.len() {
                    let next_block = l + 1;
                    let stride = if MOBILENET_STRIDE2_BLOCKS.contains(&next_block) {
                        2
                    } else {
                        1
                    };
                    Post::Depthwise { stride }
                } else {
                    Post::None
                };
                (1, post)
            }
        }
    }

    /// Number of growable layers.
    pub fn layers(&self) -> usize {
        self.widths.len()
    }

    /// Per-unit shapes, in order.
    pub fn units(&self) -> Vec<UnitShape> {
        let mut out = Vec::with_capacity(self.widths.len());
        let mut hw = (self.input[1], self.input[2]);
        let mut cin = self.input[0];
        for l in 0..self.widths.len() {
            let (stride, post) = self.unit_kind(l);
            let kernel = match (self.family, l) {
                (Family::MobilenetV1, l) if l > 0 => 1,
                _ => 3,
            };
            let pad = kernel / 2;
            let conv_hw = conv_out(hw, kernel, stride, pad);
            let out_hw = post_out(conv_hw, post);
            out.push(UnitShape {
                cin,
                cout: self.widths[l],
                kernel,
                stride,
                pad,
                in_hw: hw,
                conv_hw,
                post,
                out_hw,
            });
            hw = out_hw;
            cin = self.widths[l];
        }
        out
    }

    /// The classifier head's shape.
    pub fn head(&self) -> HeadShape {
        let last = *self.units().last().expect("an Arch has at least one unit");
        let (pool, positions) = match self.family {
            Family::Vgg19 => (Pool::Flatten, last.out_hw.0 * last.out_hw.1),
            Family::MobilenetV1 => (Pool::GlobalAverage, 1),
        };
        HeadShape {
            pool,
            channels: last.cout,
            positions,
            classes: self.classes,
        }
    }

    /// Learnable parameters: conv and depthwise kernels (no bias), BN affine
    /// parameters (running statistics are not counted), linear weight and bias.
    pub fn params(&self) -> u64 {
        self.param_specs()
            .iter()
            .filter(|s| s.learnable)
            .map(|s| s.len() as u64)
            .sum()
    }

    /// Multiply-accumulates of one forward pass on one image: convs, depthwise
    /// convs and the linear layer (BN, ReLU and pooling are not counted).
    pub fn macs(&self) -> u64 {
        let mut macs = 0u64;
        for u in self.units() {
            macs += (u.weight_len() * u.conv_hw.0 * u.conv_hw.1) as u64;
            if let Post::Depthwise { .. } = u.post {
                macs += (u.cout * 9 * u.out_hw.0 * u.out_hw.1) as u64;
            }
        }
        let h = self.head();
        macs + (h.features() * h.classes) as u64
    }

    /// Floating-point operations of one image's forward pass: two per
    /// multiply-accumulate of [`Arch::macs`].
    pub fn infer_flops(&self) -> u64 {
        2 * self.macs()
    }

    /// Floating-point operations of one image's training step: the forward
    /// pass and the two backward products of every layer (input and weight
    /// gradients), each as many multiply-accumulates as the forward, so three
    /// times [`Arch::infer_flops`]. (The first conv's input gradient, which
    /// is not computed, is counted too.)
    pub fn train_flops(&self) -> u64 {
        3 * self.infer_flops()
    }

    /// Every parameter tensor, in storage order (see [`ParamSpec`]).
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut specs = Vec::new();
        for (l, u) in self.units().iter().enumerate() {
            let p = format!("layers.{l}");
            specs.push(ParamSpec::new(
                format!("{p}.conv.weight"),
                vec![u.cout, u.cin, u.kernel, u.kernel],
                Role::ConvWeight { layer: l },
            ));
            push_bn(&mut specs, &format!("{p}.bn"), u.cout, l, false);
            if let Post::Depthwise { .. } = u.post {
                specs.push(ParamSpec::new(
                    format!("{p}.next_depthwise.weight"),
                    vec![u.cout, 1, 3, 3],
                    Role::DepthwiseWeight { layer: l },
                ));
                push_bn(
                    &mut specs,
                    &format!("{p}.next_depthwise.bn"),
                    u.cout,
                    l,
                    true,
                );
            }
        }
        let h = self.head();
        specs.push(ParamSpec::new(
            "head.weight".into(),
            vec![h.classes, h.features()],
            Role::HeadWeight,
        ));
        specs.push(ParamSpec::new(
            "head.bias".into(),
            vec![h.classes],
            Role::HeadBias,
        ));
        specs
    }
}

fn push_bn(specs: &mut Vec<ParamSpec>, prefix: &str, c: usize, layer: usize, depthwise: bool) {
    for (suffix, stat) in [
        ("weight", BnPart::Gamma),
        ("bias", BnPart::Beta),
        ("running_mean", BnPart::RunningMean),
        ("running_var", BnPart::RunningVar),
    ] {
        let mut s = ParamSpec::new(
            format!("{prefix}.{suffix}"),
            vec![c],
            Role::BatchNorm {
                layer,
                part: stat,
                depthwise,
            },
        );
        s.learnable = matches!(stat, BnPart::Gamma | BnPart::Beta);
        specs.push(s);
    }
}

/// Output size of a conv with kernel `k`, stride and padding.
pub fn conv_out(hw: (usize, usize), k: usize, stride: usize, pad: usize) -> (usize, usize) {
    let f = |n: usize| {
        if n + 2 * pad < k {
            0
        } else {
            (n + 2 * pad - k) / stride + 1
        }
    };
    (f(hw.0), f(hw.1))
}

fn post_out(hw: (usize, usize), post: Post) -> (usize, usize) {
    match post {
        Post::None => hw,
        Post::MaxPool => (hw.0 / 2, hw.1 / 2),
        Post::Depthwise { stride } => conv_out(hw, 3, stride, 1),
    }
}

/// Which BN tensor a [`Role::BatchNorm`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnPart {
    /// BN scale `gamma`.
    Gamma,
    /// BN shift `beta`.
    Beta,
    /// Running mean.
    RunningMean,
    /// Running (unbiased) variance.
    RunningVar,
}

/// What a parameter tensor is, and so how morphisms and optimizers treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `[cout, cin, k, k]` kernel of unit `layer`.
    ConvWeight {
        /// The unit.
        layer: usize,
    },
    /// BN of unit `layer`'s conv output, or (depthwise) of its next-depthwise output.
    BatchNorm {
        /// The unit.
        layer: usize,
        /// Which of the four tensors.
        part: BnPart,
        /// The BN of the next-block depthwise conv rather than of the unit's conv.
        depthwise: bool,
    },
    /// `[c, 1, 3, 3]` next-block depthwise kernel carried by unit `layer`.
    DepthwiseWeight {
        /// The unit.
        layer: usize,
    },
    /// `[classes, features]`.
    HeadWeight,
    /// `[classes]` bias of the head.
    HeadBias,
}

/// A named parameter tensor of an architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name in exported weights, e.g. `layers.3.conv.weight`.
    pub name: String,
    /// Tensor shape, row-major.
    pub shape: Vec<usize>,
    /// What the tensor is.
    pub role: Role,
    /// False for BN running statistics (state, not learned).
    pub learnable: bool,
}

impl ParamSpec {
    fn new(name: String, shape: Vec<usize>, role: Role) -> Self {
        ParamSpec {
            name,
            shape,
            role,
            learnable: true,
        }
    }
    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_vgg19_has_reference_parameter_count() {
        let widths = vec![
            64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512,
        ];
        let a = Arch::new(Family::Vgg19, [3, 32, 32], 10, widths).unwrap();
        assert_eq!(a.params(), 20_035_018);
    }

    #[test]
    fn vgg_seed_shapes() {
        let a = Arch::vgg19(16, [1, 32, 32], 10).unwrap();
        let u = a.units();
        assert_eq!(u[0].in_hw, (32, 32));
        assert_eq!(u[1].out_hw, (16, 16));
        assert_eq!(u[15].out_hw, (1, 1));
        assert_eq!(a.head().features(), 16);
        // conv MACs by hand: 9*16*(1*1024 + 16*1024 + 2*16*256 + 4*16*64 + 4*16*16 + 4*16*4) + 160
        let convs =
            9 * 16 * (1024 + 16 * 1024 + 2 * 16 * 256 + 4 * 16 * 64 + 4 * 16 * 16 + 4 * 16 * 4);
        assert_eq!(a.macs(), convs as u64 + 160);
        assert_eq!(a.infer_flops(), 2 * a.macs());
        assert_eq!(a.train_flops(), 6 * a.macs());
    }

    #[test]
    fn mobilenet_strides_reach_2x2() {
        let a = Arch::mobilenet_v1(32, [3, 32, 32], 10).unwrap();
        let u = a.units();
        assert_eq!(u.len(), 14);
        assert_eq!(u[0].kernel, 3);
        assert_eq!(u[1].kernel, 1);
        assert_eq!(u[1].post, Post::Depthwise { stride: 2 });
        assert_eq!(u[13].post, Post::None);
        assert_eq!(u[13].out_hw, (2, 2));
        assert_eq!(a.head().features(), 32);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Arch::vgg19(16, [1, 16, 16], 10).is_err());
        assert!(Arch::vgg19(0, [1, 32, 32], 10).is_err());
        assert!(Arch::new(Family::Vgg19, [1, 32, 32], 10, vec![16; 3]).is_err());
        assert!(Family::parse("resnet").is_err());
    }
}
