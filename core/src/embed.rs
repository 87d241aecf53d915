//! Feeding the estimator from buffers computed elsewhere: constructors of
//! [`FrozenSigma`] from BN running statistics and a checked [`LayerBatch`]
//! from slices or (feature `ndarray`) from ndarray views. The README's
//! "Embedding the estimator" shows them in use.

use crate::arch::UnitShape;
use crate::error::{Error, Result};
use crate::estimator::{FrozenDepthwise, FrozenSigma, LayerBatch, Sigma};
use crate::kernels::batchnorm::fold;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// `scale`/`shift` of BN at the given statistics, checking the lengths.
fn folded(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = gamma.len();
    for (name, v) in [
        ("beta", beta),
        ("running mean", mean),
        ("running variance", var),
    ] {
        if v.len() != c {
            return Err(Error::shape(
                format!("BN {name} channels (gamma's)"),
                c,
                v.len(),
            ));
        }
    }
    let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
    fold(gamma, beta, mean, var, &mut scale, &mut shift);
    Ok((scale, shift))
}

impl FrozenSigma {
    /// The frozen map `relu(scale * y + shift)` of a BN given by its affine
    /// parameters and running statistics (per channel, eps `1e-5` as in
    /// PyTorch): `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
    pub fn from_batch_norm(
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
    ) -> Result<FrozenSigma> {
        let (scale, shift) = folded(gamma, beta, running_mean, running_var)?;
        Ok(FrozenSigma {
            scale,
            shift,
            depthwise: None,
            maxpool: false,
        })
    }

    /// The same map followed by a 2x2 max-pool, stride 2.
    pub fn with_maxpool(self) -> FrozenSigma {
        FrozenSigma {
            maxpool: true,
            depthwise: None,
            ..self
        }
    }

    /// The same map followed by a depthwise 3x3 conv (pad 1, kernel
    /// `[c, 1, 3, 3]`), its frozen BN and ReLU (a MobileNet block).
    pub fn with_depthwise(
        self,
        stride: usize,
        kernel: &[f32],
        gamma: &[f32],
        beta: &[f32],
        running_mean: &[f32],
        running_var: &[f32],
    ) -> Result<FrozenSigma> {
        let c = self.scale.len();
        if kernel.len() != c * 9 {
            return Err(Error::shape(
                format!("depthwise 3x3 kernel after {c} channels"),
                c * 9,
                kernel.len(),
            ));
        }
        if gamma.len() != c {
            return Err(Error::shape(
                format!("depthwise BN channels after {c} channels"),
                c,
                gamma.len(),
            ));
        }
        let (scale, shift) = folded(gamma, beta, running_mean, running_var)?;
        Ok(FrozenSigma {
            depthwise: Some(FrozenDepthwise {
                stride,
                kernel: kernel.to_vec(),
                scale,
                shift,
            }),
            maxpool: false,
            ..self
        })
    }
}

fn need(name: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::shape(name, want, len))
    }
}

impl<'a> LayerBatch<'a> {
    /// One layer's mini-batch of `n` samples from slices computed elsewhere,
    /// all NCHW and row-major: the layer input `x` `[n, cin, H, W]`, the
    /// pre-activation `y` `[n, cout, Hc, Wc]`, the unit output
    /// `a = sigma(y)` `[n, cout, Ho, Wo]` at the frozen `sigma`, `grad_a` the
    /// gradient of the mean mini-batch loss `loss` with respect to `a`.
    /// Checks every length against `unit` and `sigma`; eq. (1) (no head).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        unit: UnitShape,
        n: usize,
        x: &'a [f32],
        y: &'a [f32],
        a: &'a [f32],
        grad_a: &'a [f32],
        sigma: Sigma<'a>,
        loss: f32,
    ) -> Result<LayerBatch<'a>> {
        need("layer input x", x.len(), n * unit.in_len())?;
        need("pre-activation y", y.len(), n * unit.conv_len())?;
        need("unit output a", a.len(), n * unit.out_len())?;
        need("dL/da", grad_a.len(), n * unit.out_len())?;
        need("sigma scale", sigma.scale.len(), unit.cout)?;
        need("sigma shift", sigma.shift.len(), unit.cout)?;
        if !(loss.is_finite() && loss > 0.0) {
            return Err(Error::Mismatch(format!(
                "loss {loss} is not positive and finite"
            )));
        }
        Ok(LayerBatch {
            unit,
            n,
            x,
            y,
            a,
            grad_a,
            sigma,
            loss,
            head: None,
        })
    }
}

#[cfg(feature = "ndarray")]
mod views {
    use super::*;
    use ndarray::ArrayView4;

    /// The contiguous row-major slice of `v`, checked against `[n, c, h, w]`.
    fn slice<'a>(name: &str, v: &ArrayView4<'a, f32>, want: [usize; 4]) -> Result<&'a [f32]> {
        let dim = v.dim();
        if [dim.0, dim.1, dim.2, dim.3] != want {
            return Err(Error::Mismatch(format!(
                "{name} is {dim:?}, expected {want:?}"
            )));
        }
        v.to_slice()
            .ok_or_else(|| Error::Mismatch(format!("{name} is not contiguous row-major (NCHW)")))
    }

    impl<'a> LayerBatch<'a> {
        /// [`LayerBatch::new`] from ndarray views (feature `ndarray`): `x`
        /// `[n, cin, H, W]`, `y` `[n, cout, Hc, Wc]`, `a` and `grad_a`
        /// `[n, cout, Ho, Wo]`, each in standard (row-major) layout so that it
        /// is read in place; `n` is `x`'s first axis.
        pub fn from_views(
            unit: UnitShape,
            x: ArrayView4<'a, f32>,
            y: ArrayView4<'a, f32>,
            a: ArrayView4<'a, f32>,
            grad_a: ArrayView4<'a, f32>,
            sigma: Sigma<'a>,
            loss: f32,
        ) -> Result<LayerBatch<'a>> {
            let n = x.dim().0;
            let u = unit;
            let x = slice("layer input x", &x, [n, u.cin, u.in_hw.0, u.in_hw.1])?;
            let y = slice(
                "pre-activation y",
                &y,
                [n, u.cout, u.conv_hw.0, u.conv_hw.1],
            )?;
            let out = [n, u.cout, u.out_hw.0, u.out_hw.1];
            let a = slice("unit output a", &a, out)?;
            let grad_a = slice("dL/da", &grad_a, out)?;
            LayerBatch::new(unit, n, x, y, a, grad_a, sigma, loss)
        }
    }
}
