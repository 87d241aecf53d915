//! The Gauss-Newton estimator's own kernels (docs/conventions.md, "The estimator"): the
//! frozen sigma on a shifted pre-activation, the per-sample per-channel first
//! order terms `u` of splits and prunes, eq. (1) folded into the moving
//! averages, the cross terms of the joint estimate of a set of candidates,
//! and eq. (1)'s gradient with respect to `Delta_a`. The theta conv and its
//! weight gradient are [`super::conv::Conv`]'s.

use crate::context::Gpu;
use crate::kernel::{need, Access, Kernel, Op, Res, View};
use crate::kernels::batchnorm::stride;
use sprout_core::arch::BnGeom;
use sprout_core::error::{Error, Result};

use Access::{Read, Uniform, Write};

const WG: u32 = 64;

/// Pipelines of `gpu/shaders/estimator/`.
#[derive(Debug, Clone)]
pub struct Estimator {
    shifted_bn_relu: Kernel,
    split_u: Kernel,
    prune_u: Kernel,
    ema: Kernel,
    grad_coef: Kernel,
    cross: Kernel,
}

/// Where every candidate's per-sample `u` lies in one buffer: candidate `c`'s
/// value for sample `s` is at `offset + s * stride` of its entry. Uploaded
/// once per phase; the host keeps a copy to check shapes against.
#[derive(Debug, Clone)]
pub struct Slots {
    entries: Vec<(u32, u32)>,
    view: View,
}

impl Slots {
    /// Uploads `(offset, stride)` per candidate, in slot order.
    pub fn new(gpu: &Gpu, entries: &[(usize, usize)]) -> Result<Slots> {
        let entries = entries
            .iter()
            .map(|&(o, s)| Ok((word(o, "slot offset")?, word(s, "slot stride")?)))
            .collect::<Result<Vec<_>>>()?;
        let flat: Vec<u32> = entries.iter().flat_map(|&(o, s)| [o, s]).collect();
        let view = gpu.buffer("joint slots", flat.len())?;
        gpu.write_u32(&view, &flat)?;
        Ok(Slots { entries, view })
    }

    /// Number of candidates `K`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Values of `u` that `n` samples of every candidate reach.
    fn reach(&self, n: usize) -> usize {
        self.entries
            .iter()
            .map(|&(o, s)| o as usize + n.saturating_sub(1) * s as usize + 1)
            .max()
            .unwrap_or(0)
    }
}

fn word(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Mismatch(format!("{what} {v} does not fit in 32 bits")))
}

impl Estimator {
    /// Builds the pipelines on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Estimator> {
        let wg = [("WG", WG as f64)];
        let k = |name, src, acc: &[Access]| Kernel::new(gpu, name, src, acc, &wg, WG);
        Ok(Estimator {
            shifted_bn_relu: k(
                "shifted bn relu",
                include_str!("../../shaders/estimator/shifted_bn_relu.wgsl"),
                &[Uniform, Read, Read, Read, Write],
            )?,
            split_u: k(
                "split u",
                include_str!("../../shaders/estimator/split_u.wgsl"),
                &[Uniform, Read, Read, Read, Read, Write],
            )?,
            prune_u: k(
                "prune u",
                include_str!("../../shaders/estimator/prune_u.wgsl"),
                &[Uniform, Read, Read, Write],
            )?,
            ema: k(
                "estimate ema",
                concat!(
                    include_str!("../../shaders/optimizer/morph_hyper.wgsl"),
                    include_str!("../../shaders/estimator/ema.wgsl")
                ),
                &[Uniform, Uniform, Read, Read, Write],
            )?,
            grad_coef: k(
                "estimate gradient",
                include_str!("../../shaders/estimator/grad_coef.wgsl"),
                &[Uniform, Read, Read, Read, Write],
            )?,
            cross: k(
                "joint cross terms",
                concat!(
                    include_str!("../../shaders/optimizer/morph_hyper.wgsl"),
                    include_str!("../../shaders/estimator/cross.wgsl")
                ),
                &[Uniform, Uniform, Read, Read, Read, Write],
            )?,
        })
    }

    /// `h = relu(scale * (y + sign * d) + shift)`, BN at its running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn shifted_bn_relu(
        &self,
        gpu: &Gpu,
        g: &BnGeom,
        y: &View,
        d: &View,
        sign: f32,
        bn: &View,
        h: &View,
    ) -> Result<Op> {
        let total = g.n * g.channels * g.plane;
        for (name, v) in [
            ("pre-activation", y),
            ("theta conv", d),
            ("shifted output", h),
        ] {
            need(name, v, total)?;
        }
        let st = stride(g.channels);
        need("BN parameters", bn, 3 * st + g.channels)?;
        let w = [
            total as u32,
            g.channels as u32,
            g.plane as u32,
            st as u32,
            sign.to_bits(),
        ];
        let k = &self.shifted_bn_relu;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(y),
                Res::View(d),
                Res::View(bn),
                Res::View(h),
            ],
            k.groups_for(total),
        )
    }

    /// `u[p] = (S / 2) * sum over plane p of (a+ + a- - 2a) * dL/da`, `S = n`.
    #[allow(clippy::too_many_arguments)]
    pub fn split_u(
        &self,
        gpu: &Gpu,
        n: usize,
        planes: usize,
        plane: usize,
        a_plus: &View,
        a_minus: &View,
        a: &View,
        grad_a: &View,
        u: &View,
    ) -> Result<Op> {
        for (name, v) in [
            ("a(+d)", a_plus),
            ("a(-d)", a_minus),
            ("unit output", a),
            ("output gradient", grad_a),
        ] {
            need(name, v, planes * plane)?;
        }
        need("u", u, planes)?;
        let w = [planes as u32, plane as u32, (0.5 * n as f32).to_bits()];
        let k = &self.split_u;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(a_plus),
                Res::View(a_minus),
                Res::View(a),
                Res::View(grad_a),
                Res::View(u),
            ],
            k.groups_for(planes),
        )
    }

    /// `u[p] = -S * sum over plane p of a * dL/da`, `S = n`.
    #[allow(clippy::too_many_arguments)]
    pub fn prune_u(
        &self,
        gpu: &Gpu,
        n: usize,
        planes: usize,
        plane: usize,
        a: &View,
        grad_a: &View,
        u: &View,
    ) -> Result<Op> {
        need("unit output", a, planes * plane)?;
        need("output gradient", grad_a, planes * plane)?;
        need("u", u, planes)?;
        let w = [planes as u32, plane as u32, (n as f32).to_bits()];
        let k = &self.prune_u;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(a),
                Res::View(grad_a),
                Res::View(u),
            ],
            k.groups_for(planes),
        )
    }

    /// Eq. (1) of each of `channels` channels from `u` (`[n, channels]`) and
    /// `loss[0]`, folded into `ema` by the hyper's alpha.
    #[allow(clippy::too_many_arguments)]
    pub fn ema(
        &self,
        gpu: &Gpu,
        hyper: &wgpu::Buffer,
        n: usize,
        channels: usize,
        u: &View,
        loss: &View,
        ema: &View,
    ) -> Result<Op> {
        need("u", u, n * channels)?;
        need("loss", loss, 1)?;
        need("moving averages", ema, channels)?;
        let w = [n as u32, channels as u32];
        let k = &self.ema;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::Uniform(hyper),
                Res::View(u),
                Res::View(loss),
                Res::View(ema),
            ],
            k.groups_for(channels),
        )
    }

    /// `g = 0.5 * (1 + u[plane] / (2 L_hat)) * dL/da` on `total` values.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_coef(
        &self,
        gpu: &Gpu,
        total: usize,
        plane: usize,
        u: &View,
        grad_a: &View,
        loss: &View,
        g: &View,
    ) -> Result<Op> {
        need("output gradient", grad_a, total)?;
        need("estimate gradient", g, total)?;
        need("u", u, total / plane.max(1))?;
        need("loss", loss, 1)?;
        let w = [total as u32, plane as u32];
        let k = &self.grad_coef;
        k.op(
            gpu,
            &[
                Res::Params(&w),
                Res::View(u),
                Res::View(grad_a),
                Res::View(loss),
                Res::View(g),
            ],
            k.groups_for(total),
        )
    }

    /// The joint estimate's cross terms over the `K` candidates of `slots`:
    /// `pairs[i * K + j]` <- moving average of
    /// `sum_s u_i[s] u_j[s] / (4 L_hat n)` (sprout-core's
    /// `MorphState::update_cross`), alpha from the hyper, initialised when its
    /// `cross_first` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn cross(
        &self,
        gpu: &Gpu,
        hyper: &wgpu::Buffer,
        n: usize,
        slots: &Slots,
        u: &View,
        loss: &View,
        pairs: &View,
    ) -> Result<Op> {
        let k = slots.len();
        if n == 0 || k == 0 {
            return Err(Error::Mismatch(format!(
                "joint cross terms of {k} candidates over {n} samples"
            )));
        }
        let kk = k
            .checked_mul(k)
            .filter(|&kk| u32::try_from(kk).is_ok())
            .ok_or_else(|| Error::Mismatch(format!("{k} x {k} cross terms are too many")))?;
        need("u", u, slots.reach(n))?;
        need("loss", loss, 1)?;
        need("cross terms", pairs, kk)?;
        need("slot table", &slots.view, 2 * k)?;
        let w = [k as u32, word(n, "batch")?];
        let kern = &self.cross;
        kern.op(
            gpu,
            &[
                Res::Params(&w),
                Res::Uniform(hyper),
                Res::View(u),
                Res::View(&slots.view),
                Res::View(loss),
                Res::View(pairs),
            ],
            kern.groups_for(kk),
        )
    }
}
