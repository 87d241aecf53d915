//! The operations the network walk ([`crate::walk`]) and the morphism step
//! are written in, and the buffers they name. An engine provides kernels
//! only: the CPU engine runs each operation as it is called, the GPU engine
//! records it as a dispatch into a per-architecture plan that it replays.
//!
//! Buffers are named by role ([`Buf`]), never by memory, so the same walk
//! drives both: each engine maps a name to its own storage. Every buffer
//! holds the engine's batch capacity; operations work on the first `n`
//! samples. Layouts are NCHW; a BN's statistics are `[mean | var]` as the
//! forward pass used them (docs/conventions.md).

use crate::arch::{BnGeom, ConvGeom, DwGeom};

/// Whether BN uses batch statistics (and backward differentiates through
/// them) or the running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Batch statistics in BN; running statistics updated separately.
    Train,
    /// Running statistics in BN (frozen sigma).
    Eval,
}

/// A unit's activation buffers (docs/conventions.md, "The estimator").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// Conv output: the pre-activation `y`.
    Y,
    /// `relu(bn(y))`: the unit output itself when nothing follows.
    H,
    /// Depthwise conv output (MobileNet units).
    Z,
    /// Unit output after the max-pool or depthwise block.
    A,
    /// `dL/da` of the unit output.
    DA,
    /// `dL/dy`.
    DY,
    /// `[mean | var]` the BN used in the last forward.
    Stats,
    /// `[mean | var]` of the depthwise block's BN.
    DwStats,
}

/// A buffer an engine holds, named by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The batch of images.
    Images,
    /// Network tensor `i` (the order of `Arch::param_specs`).
    Param(usize),
    /// Gradient of network tensor `i`.
    Grad(usize),
    /// Activation buffer of unit `l`.
    Unit(usize, Act),
    /// Pooled features of a global-average head, and their gradient.
    Features,
    /// `dL/d features`.
    FeaturesGrad,
    /// Logits, and `dL/dlogits` after the loss.
    Logits,
    /// `dL/dlogits`.
    LogitsGrad,
    /// Scratch gradient at a unit's BN + ReLU output (largest conv output).
    ScratchH,
    /// Scratch gradient at a unit's depthwise output (largest unit output).
    ScratchZ,
    /// A morphism phase's buffer.
    Morph(MorphBuf),
}

/// The buffers of a morphism phase ([`crate::layer_estimate`]); the
/// per-layer scratch ones are sized for the largest layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MorphBuf {
    /// Layer `l`'s theta, stacked like its conv kernel.
    Theta(usize),
    /// Layer `l`'s theta gradient (the splitting products' `S V`).
    ThetaGrad(usize),
    /// Layer `l`'s per-sample first-order terms `[n, cout]` of its splits
    /// (`prune` false) or prunes.
    U {
        /// The layer.
        layer: usize,
        /// Prunes rather than splits.
        prune: bool,
    },
    /// `d = conv(x, theta)`, then the gradient of the estimate at `y`.
    D,
    /// Branch `i` (0: `y + d`, 1: `y - d`) of the frozen sigma: its BN + ReLU
    /// output ([`Act::H`]), depthwise output ([`Act::Z`]) and unit output ([`Act::A`]).
    Shifted(usize, Act),
    /// The estimate's gradient at the unit output, at `h` and at `z`.
    G,
    /// The estimate's gradient at `h`.
    GH,
    /// The estimate's gradient at `z`.
    GZ,
    /// The estimate's gradient at `y` through branch `i`.
    GY(usize),
    /// The splitting matrix's curvature weights `g * sigma''(y)`.
    Curvature,
}

/// The kernels an engine provides. Outputs are overwritten. The BN
/// operations take the four tensor indices of a BN (gamma, beta, running
/// mean, running variance).
pub trait Engine {
    /// What an operation can fail with (never, on the CPU).
    type Error;

    /// `y = conv(x, w)`.
    fn conv(&mut self, g: &ConvGeom, n: usize, x: Buf, w: Buf, y: Buf) -> Result<(), Self::Error>;
    /// From `dy`: the input gradient into `dx` and the kernel gradient
    /// (summed over the batch) into `dw`, each when given.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &mut self,
        g: &ConvGeom,
        n: usize,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        dw: Option<Buf>,
    ) -> Result<(), Self::Error>;
    /// The batch `[mean | var]` of `y` into `stats`.
    fn batch_stats(&mut self, g: &BnGeom, y: Buf, stats: Buf) -> Result<(), Self::Error>;
    /// `out = relu(bn(y))`: in train mode with `stats` (from
    /// [`Engine::batch_stats`]), in eval mode with the running statistics
    /// (`stats` unread). [`Engine::bn_relu_backward`] follows the same rule.
    #[allow(clippy::too_many_arguments)]
    fn bn_relu(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn: [usize; 4],
        y: Buf,
        stats: Buf,
        out: Buf,
    ) -> Result<(), Self::Error>;
    /// `dy` from `dout` through ReLU and BN (`out` the forward output). With
    /// `param_grads`, `dgamma` and `dbeta` into the BN's gradients.
    #[allow(clippy::too_many_arguments)]
    fn bn_relu_backward(
        &mut self,
        g: &BnGeom,
        mode: Mode,
        bn: [usize; 4],
        y: Buf,
        out: Buf,
        dout: Buf,
        stats: Buf,
        dy: Buf,
        param_grads: bool,
    ) -> Result<(), Self::Error>;
    /// Folds the batch statistics `stats` into the BN's running statistics
    /// (momentum `BN_MOMENTUM`, unbiased variance).
    fn update_running(&mut self, g: &BnGeom, bn: [usize; 4], stats: Buf)
        -> Result<(), Self::Error>;
    /// 2x2 max-pool of `planes` planes of size `hw`.
    fn max_pool(
        &mut self,
        planes: usize,
        hw: (usize, usize),
        x: Buf,
        y: Buf,
    ) -> Result<(), Self::Error>;
    /// Routes `dy` to each window's maximum of `x`.
    fn max_pool_backward(
        &mut self,
        planes: usize,
        hw: (usize, usize),
        x: Buf,
        dy: Buf,
        dx: Buf,
    ) -> Result<(), Self::Error>;
    /// Depthwise 3x3 conv of `x` with kernels `k`.
    fn depthwise(
        &mut self,
        g: &DwGeom,
        n: usize,
        x: Buf,
        k: Buf,
        y: Buf,
    ) -> Result<(), Self::Error>;
    /// From `dy`: the input gradient into `dx`, and with `dk` the kernel gradient.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_backward(
        &mut self,
        g: &DwGeom,
        n: usize,
        x: Buf,
        k: Buf,
        dy: Buf,
        dx: Buf,
        dk: Option<Buf>,
    ) -> Result<(), Self::Error>;
    /// Mean of each of `planes` planes of `plane` values.
    fn average_pool(
        &mut self,
        planes: usize,
        plane: usize,
        x: Buf,
        y: Buf,
    ) -> Result<(), Self::Error>;
    /// Spreads `dy` evenly over each plane.
    fn average_pool_backward(
        &mut self,
        planes: usize,
        plane: usize,
        dy: Buf,
        dx: Buf,
    ) -> Result<(), Self::Error>;
    /// `y = x W^T + b` for `n` rows.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        n: usize,
        features: usize,
        classes: usize,
        x: Buf,
        w: Buf,
        b: Buf,
        y: Buf,
    ) -> Result<(), Self::Error>;
    /// From `dy`: the input gradient into `dx` and `(dW, db)` into `grads`, each when given.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        n: usize,
        features: usize,
        classes: usize,
        x: Buf,
        w: Buf,
        dy: Buf,
        dx: Option<Buf>,
        grads: Option<(Buf, Buf)>,
    ) -> Result<(), Self::Error>;
    /// Mean softmax cross-entropy of `logits` against the engine's labels,
    /// `dL/dlogits` into `dlogits`; the engine keeps the loss and the count
    /// of correct samples.
    fn softmax_cross_entropy(
        &mut self,
        n: usize,
        classes: usize,
        logits: Buf,
        dlogits: Buf,
    ) -> Result<(), Self::Error>;
}

/// The kernels of the per-layer Gauss-Newton estimate and the splitting
/// matrix's products ([`crate::layer_estimate`]), beyond the network's own.
/// BN operands are at their running statistics (the frozen sigma).
pub trait EstimatorOps: Engine {
    /// `out = relu(scale * (y + sign * d) + shift)`.
    #[allow(clippy::too_many_arguments)]
    fn shifted_bn_relu(
        &mut self,
        g: &BnGeom,
        bn: [usize; 4],
        y: Buf,
        d: Buf,
        sign: f32,
        out: Buf,
    ) -> Result<(), Self::Error>;
    /// Per sample and channel (`planes = n * channels` planes of `plane`
    /// values): `u = (n / 2) * sum((a_plus + a_minus - 2 a) * grad_a)`.
    #[allow(clippy::too_many_arguments)]
    fn split_u(
        &mut self,
        n: usize,
        planes: usize,
        plane: usize,
        a_plus: Buf,
        a_minus: Buf,
        a: Buf,
        grad_a: Buf,
        u: Buf,
    ) -> Result<(), Self::Error>;
    /// Per sample and channel: `u = -n * sum(a * grad_a)`.
    #[allow(clippy::too_many_arguments)]
    fn prune_u(
        &mut self,
        n: usize,
        planes: usize,
        plane: usize,
        a: Buf,
        grad_a: Buf,
        u: Buf,
    ) -> Result<(), Self::Error>;
    /// Eq. (1)'s gradient at the unit output on `len` values:
    /// `g = 0.5 * (1 + u / (2 L_hat)) * grad_a`, `u` per plane of `plane`,
    /// `L_hat` the batch loss.
    fn estimate_grad(
        &mut self,
        len: usize,
        plane: usize,
        u: Buf,
        grad_a: Buf,
        g: Buf,
    ) -> Result<(), Self::Error>;
    /// `out = a - b` on `len` values.
    fn sub(&mut self, len: usize, a: Buf, b: Buf, out: Buf) -> Result<(), Self::Error>;
    /// `m = grad * scale^2 * relu''(scale * y + shift)` (the splitting
    /// module's softplus surrogate).
    fn splitting_curvature(
        &mut self,
        g: &BnGeom,
        bn: [usize; 4],
        grad: Buf,
        y: Buf,
        m: Buf,
    ) -> Result<(), Self::Error>;
    /// `t *= m` on `len` values.
    fn scale_by(&mut self, len: usize, m: Buf, t: Buf) -> Result<(), Self::Error>;
}
