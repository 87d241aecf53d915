//! One layer's Gauss-Newton estimate and its splitting matrix's products
//! written once over [`EstimatorOps`], for engines that compose kernels
//! (the CPU runs its fused equivalents in [`crate::estimator`] and
//! [`crate::splitting`] on a [`crate::estimator::LayerBatch`]).
//!
//! Per layer, with `d = conv(x, theta)` and the frozen sigma (BN at its
//! running statistics, shared by both split halves):
//! `Delta_a = sigma(y + d) + sigma(y - d) - 2 sigma(y)`,
//! `u = (S / 2) * sum(Delta_a * dL/da)` per sample and channel (eq. 1's
//! first-order term), and eq. (1)'s gradient pushed back through both
//! branches of sigma and the theta conv (docs/conventions.md, "The estimator").

use crate::arch::Post;
use crate::engine::{Act, Buf, EstimatorOps, Mode, MorphBuf};
use crate::walk::Walk;

fn depthwise(walk: &Walk, l: usize) -> (usize, [usize; 4]) {
    walk.index.units[l]
        .depthwise
        .expect("a depthwise unit has depthwise parameters (ParamIndex)")
}

/// Layer `l`'s split and prune `u` into `U { layer: l, .. }`, and with
/// `grad` eq. (1)'s gradient with respect to theta into `ThetaGrad(l)`.
pub fn estimate_layer<E: EstimatorOps + ?Sized>(
    e: &mut E,
    walk: &Walk,
    l: usize,
    n: usize,
    grad: bool,
) -> Result<(), E::Error> {
    let u = &walk.units[l];
    let p = walk.index.units[l];
    let at = |a: Act| Buf::Unit(l, a);
    let m = Buf::Morph;
    let shifted = |i: usize, a: Act| Buf::Morph(MorphBuf::Shifted(i, a));
    let (c, plane) = (u.cout, u.out_hw.0 * u.out_hw.1);
    let (x, a0) = (walk.input(l), walk.output(l));
    let (geom, g) = (u.conv_geom(), u.bn_geom(n, false));
    e.conv(&geom, n, x, m(MorphBuf::Theta(l)), m(MorphBuf::D))?;
    // sigma(y + d) and sigma(y - d).
    for (i, sign) in [1.0f32, -1.0].into_iter().enumerate() {
        e.shifted_bn_relu(
            &g,
            p.bn,
            at(Act::Y),
            m(MorphBuf::D),
            sign,
            shifted(i, Act::H),
        )?;
        match u.post {
            Post::None => {}
            Post::MaxPool => {
                e.max_pool(n * c, u.conv_hw, shifted(i, Act::H), shifted(i, Act::A))?
            }
            Post::Depthwise { stride } => {
                let (dk, dbn) = depthwise(walk, l);
                e.depthwise(
                    &u.dw_geom(stride),
                    n,
                    shifted(i, Act::H),
                    Buf::Param(dk),
                    shifted(i, Act::Z),
                )?;
                e.bn_relu(
                    &u.bn_geom(n, true),
                    Mode::Eval,
                    dbn,
                    shifted(i, Act::Z),
                    at(Act::DwStats),
                    shifted(i, Act::A),
                )?;
            }
        }
    }
    let branch = |i: usize| match u.post {
        Post::None => shifted(i, Act::H),
        _ => shifted(i, Act::A),
    };
    let u_of = |prune| m(MorphBuf::U { layer: l, prune });
    e.split_u(
        n,
        n * c,
        plane,
        branch(0),
        branch(1),
        a0,
        at(Act::DA),
        u_of(false),
    )?;
    e.prune_u(n, n * c, plane, a0, at(Act::DA), u_of(true))?;
    if !grad {
        return Ok(());
    }
    // dDeltaL/dy through each branch of the frozen sigma.
    e.estimate_grad(
        n * u.out_len(),
        plane,
        u_of(false),
        at(Act::DA),
        m(MorphBuf::G),
    )?;
    for i in 0..2 {
        let gh = match u.post {
            Post::None => m(MorphBuf::G),
            Post::MaxPool => {
                e.max_pool_backward(
                    n * c,
                    u.conv_hw,
                    shifted(i, Act::H),
                    m(MorphBuf::G),
                    m(MorphBuf::GH),
                )?;
                m(MorphBuf::GH)
            }
            Post::Depthwise { stride } => {
                let (dk, dbn) = depthwise(walk, l);
                e.bn_relu_backward(
                    &u.bn_geom(n, true),
                    Mode::Eval,
                    dbn,
                    shifted(i, Act::Z),
                    shifted(i, Act::A),
                    m(MorphBuf::G),
                    at(Act::DwStats),
                    m(MorphBuf::GZ),
                    false,
                )?;
                e.depthwise_backward(
                    &u.dw_geom(stride),
                    n,
                    shifted(i, Act::H),
                    Buf::Param(dk),
                    m(MorphBuf::GZ),
                    m(MorphBuf::GH),
                    None,
                )?;
                m(MorphBuf::GH)
            }
        };
        e.bn_relu_backward(
            &g,
            Mode::Eval,
            p.bn,
            at(Act::Y),
            shifted(i, Act::H),
            gh,
            at(Act::Stats),
            m(MorphBuf::GY(i)),
            false,
        )?;
    }
    e.sub(
        n * u.conv_len(),
        m(MorphBuf::GY(0)),
        m(MorphBuf::GY(1)),
        m(MorphBuf::D),
    )?;
    e.conv_backward(
        &geom,
        n,
        x,
        m(MorphBuf::Theta(l)),
        m(MorphBuf::D),
        None,
        Some(m(MorphBuf::ThetaGrad(l))),
    )
}

/// Layer `l`'s splitting curvature weights into `Curvature`: `g = dL/dh` at
/// the unit's own BN + ReLU output (through what follows it: the max-pool,
/// or the next block's frozen depthwise conv, BN and ReLU), times
/// `sigma''(y)` ([`crate::splitting`]'s conventions).
pub fn splitting_weights<E: EstimatorOps + ?Sized>(
    e: &mut E,
    walk: &Walk,
    l: usize,
    n: usize,
) -> Result<(), E::Error> {
    let u = &walk.units[l];
    let p = walk.index.units[l];
    let at = |a: Act| Buf::Unit(l, a);
    let m = Buf::Morph;
    let g = match u.post {
        Post::None => at(Act::DA),
        Post::MaxPool => {
            e.max_pool_backward(
                n * u.cout,
                u.conv_hw,
                at(Act::H),
                at(Act::DA),
                m(MorphBuf::GH),
            )?;
            m(MorphBuf::GH)
        }
        Post::Depthwise { stride } => {
            let (dk, dbn) = depthwise(walk, l);
            e.bn_relu_backward(
                &u.bn_geom(n, true),
                Mode::Eval,
                dbn,
                at(Act::Z),
                at(Act::A),
                at(Act::DA),
                at(Act::DwStats),
                m(MorphBuf::GZ),
                false,
            )?;
            e.depthwise_backward(
                &u.dw_geom(stride),
                n,
                at(Act::H),
                Buf::Param(dk),
                m(MorphBuf::GZ),
                m(MorphBuf::GH),
                None,
            )?;
            m(MorphBuf::GH)
        }
    };
    e.splitting_curvature(
        &u.bn_geom(n, false),
        p.bn,
        g,
        at(Act::Y),
        m(MorphBuf::Curvature),
    )
}

/// `S V` of layer `l` for every channel after [`splitting_weights`]: `V`
/// in `Theta(l)`, the products into `ThetaGrad(l)` (`conv(x, V)` scaled by
/// the curvature weights, then the conv's weight gradient).
pub fn splitting_products<E: EstimatorOps + ?Sized>(
    e: &mut E,
    walk: &Walk,
    l: usize,
    n: usize,
) -> Result<(), E::Error> {
    let u = &walk.units[l];
    let geom = u.conv_geom();
    let (x, m) = (walk.input(l), Buf::Morph);
    e.conv(&geom, n, x, m(MorphBuf::Theta(l)), m(MorphBuf::D))?;
    e.scale_by(n * u.conv_len(), m(MorphBuf::Curvature), m(MorphBuf::D))?;
    e.conv_backward(
        &geom,
        n,
        x,
        m(MorphBuf::Theta(l)),
        m(MorphBuf::D),
        None,
        Some(m(MorphBuf::ThetaGrad(l))),
    )
}
