//! Choosing which morphisms to apply (paper section 3.3): a morphism is worth
//! it when `-DeltaL > lambda_p * DeltaR_p (+ lambda_f * DeltaR_macs)`; per layer
//! the best candidates by gain are applied, at most a fraction of its channels.

use crate::arch::Arch;
use crate::error::{Error, Field, Result};
use crate::learn::MorphState;
use crate::morph::{ChannelMorphism, Morphism};
use alloc::vec::Vec;

/// Split or prune.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Kind {
    /// Split the channel in two.
    Split,
    /// Remove the channel.
    Prune,
}

/// One scored candidate morphism.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Candidate {
    /// Growable layer.
    pub layer: usize,
    /// Channel of `layer`.
    pub channel: usize,
    /// Split or prune.
    pub kind: Kind,
    /// Estimated change of the training loss (EMA of eq. 1).
    pub delta_loss: f32,
    /// Change of the parameter count.
    pub delta_params: i64,
    /// Change of the multiply-accumulates per image.
    pub delta_macs: i64,
    /// `-DeltaL - lambda_p DeltaR_p - lambda_f DeltaR_macs`.
    pub gain: f64,
}

/// Which candidates are applied, and with what share of their learned theta.
///
/// The paper's rule ([`Selection::Independent`]) applies every candidate
/// whose own estimate beats its price. Each candidate's theta is learned to
/// reach the minimum of its own eq. (1), so a set applied together overshoots
/// that minimum; the other rules use the joint estimate of the set
/// ([`MorphState::cross`]), see `docs/conventions.md` ("Selection").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Selection {
    /// Every candidate with positive own gain, at most the layer budget (paper 3.3).
    Independent,
    /// Best own gain first, kept while its marginal gain under the set's joint
    /// estimate is positive ([`select_joint`]).
    Joint,
    /// The paper's splits with one common factor on their theta, prunes
    /// admitted jointly first ([`select_scaled`], [`split_scale`]).
    Scaled,
    /// Per-candidate scales `t_i in [0, 1]` (prunes `{0, 1}`) minimising the
    /// set's joint estimate plus its price ([`select_box`]).
    #[default]
    Box,
}

impl Selection {
    /// Whether the rule reads the pairwise terms [`MorphState::cross`].
    pub fn needs_cross(self) -> bool {
        self != Selection::Independent
    }
}

/// The loss-resource tradeoff and the per-layer budget.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SelectConfig {
    /// Price of one parameter (lambda_p).
    pub lambda_params: f64,
    /// Price of one multiply-accumulate per image (lambda_f; 0 leaves MACs free).
    pub lambda_macs: f64,
    /// Largest fraction of a layer's channels changed per phase (paper: 0.3).
    pub fraction: f64,
    /// Whether prunes are candidates.
    pub prune: bool,
    /// The selection rule.
    #[cfg_attr(feature = "serde", serde(default))]
    pub selection: Selection,
    /// With [`Selection::Box`]: choose the splits first and admit prunes
    /// afterwards, only where they add to the set's estimate given the splits
    /// (otherwise splits and prunes are optimised together).
    #[cfg_attr(feature = "serde", serde(default))]
    pub prunes_after_splits: bool,
}

impl Default for SelectConfig {
    /// The scaled-down runs' setting: lambda_p 3e-7, MACs free, 30% of a
    /// layer per phase, prunes on, [`Selection::default`].
    fn default() -> SelectConfig {
        SelectConfig {
            lambda_params: 3e-7,
            lambda_macs: 0.0,
            fraction: 0.3,
            prune: true,
            selection: Selection::default(),
            prunes_after_splits: false,
        }
    }
}

impl SelectConfig {
    /// Checks ranges: lambdas finite and non-negative, fraction in (0, 1].
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            (Field::LambdaParams, self.lambda_params),
            (Field::LambdaMacs, self.lambda_macs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(field, "a finite number >= 0", v));
            }
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::config(
                Field::GrowFraction,
                "in (0, 1]",
                self.fraction,
            ));
        }
        Ok(())
    }
}

/// Exact resource change of adding (`+1`) or removing (`-1`) one channel of `layer`.
pub fn channel_cost(arch: &Arch, layer: usize, delta: i64) -> (i64, i64) {
    let mut other = arch.clone();
    other.widths[layer] = (other.widths[layer] as i64 + delta).max(1) as usize;
    (
        other.params() as i64 - arch.params() as i64,
        other.macs() as i64 - arch.macs() as i64,
    )
}

/// Every split and prune candidate with its gain.
pub fn candidates(arch: &Arch, state: &MorphState, cfg: &SelectConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    for l in 0..arch.layers() {
        let (sp, sm) = channel_cost(arch, l, 1);
        let (pp, pm) = channel_cost(arch, l, -1);
        for c in 0..arch.widths[l] {
            let mut push = |kind, dl: f32, dp: i64, dm: i64| {
                let gain =
                    -(dl as f64) - cfg.lambda_params * dp as f64 - cfg.lambda_macs * dm as f64;
                out.push(Candidate {
                    layer: l,
                    channel: c,
                    kind,
                    delta_loss: dl,
                    delta_params: dp,
                    delta_macs: dm,
                    gain,
                });
            };
            push(Kind::Split, state.split_ema[l][c], sp, sm);
            if cfg.prune && arch.widths[l] > 1 {
                push(Kind::Prune, state.prune_ema[l][c], pp, pm);
            }
        }
    }
    out
}

/// Per layer: the better candidate of each channel if its gain is positive,
/// best first, at most `max(1, floor(fraction * width))` of them, never
/// pruning a layer below one channel. Ties break by channel index.
pub fn select(arch: &Arch, cands: &[Candidate], cfg: &SelectConfig) -> Vec<Candidate> {
    let mut chosen = Vec::new();
    for l in 0..arch.layers() {
        let w = arch.widths[l];
        let mut best: Vec<Candidate> = Vec::new();
        for c in 0..w {
            let top = cands
                .iter()
                .filter(|k| k.layer == l && k.channel == c && k.gain > 0.0)
                .max_by(|a, b| a.gain.total_cmp(&b.gain));
            if let Some(t) = top {
                best.push(*t);
            }
        }
        best.sort_by(|a, b| b.gain.total_cmp(&a.gain).then(a.channel.cmp(&b.channel)));
        let budget = layer_budget(w, cfg.fraction);
        let mut prunes = 0;
        for k in best.into_iter().take(budget) {
            if k.kind == Kind::Prune {
                if prunes + 1 >= w {
                    continue;
                }
                prunes += 1;
            }
            chosen.push(k);
        }
    }
    chosen
}

/// Selection with the joint estimate of the chosen set.
///
/// Eq. (1) scores each candidate alone, but every candidate is learned to
/// move the loss toward the same minimum of the quadratic in `u`: applying
/// many at once adds their `u` and overshoots that minimum (measured: the
/// summed estimates of one phase reach several times `-L_hat`, and the grown
/// network's test loss explodes). To first order the `u` of different
/// morphisms add, so eq. (1) for a set `T` is
/// `sum_{i in T} m_i + sum_{i, j in T} Q_ij` with `Q` the averaged
/// `u_i u_j / (4 L_hat)` ([`MorphState::cross`]) and `m_i + Q_ii` the
/// candidate's own estimate. Candidates are taken best own gain first, across
/// layers, and kept while their marginal gain `gain_i - 2 sum_{j in T} Q_ij`
/// stays positive, under the same per-layer budget and pruning limit as
/// [`select`]. Without `state.cross` this is [`select`].
pub fn select_joint(
    arch: &Arch,
    cands: &[Candidate],
    cfg: &SelectConfig,
    state: &MorphState,
) -> Vec<Candidate> {
    let k = state.joint_len();
    if state.cross.len() != k * k {
        return select(arch, cands, cfg);
    }
    let mut order: Vec<&Candidate> = cands.iter().filter(|c| c.gain > 0.0).collect();
    order.sort_by(|a, b| {
        b.gain
            .total_cmp(&a.gain)
            .then(a.layer.cmp(&b.layer))
            .then(a.channel.cmp(&b.channel))
    });
    let layers = arch.layers();
    let mut taken = alloc::vec![0usize; layers];
    let mut prunes = alloc::vec![0usize; layers];
    let mut used: Vec<Vec<bool>> = arch.widths.iter().map(|&w| alloc::vec![false; w]).collect();
    // interaction[j] = sum over the chosen set of Q_ij.
    let mut interaction = alloc::vec![0.0f64; k];
    let mut chosen = Vec::new();
    for cand in order {
        let (l, c) = (cand.layer, cand.channel);
        let w = arch.widths[l];
        if used[l][c] || taken[l] >= layer_budget(w, cfg.fraction) {
            continue;
        }
        let prune = cand.kind == Kind::Prune;
        if prune && prunes[l] + 1 >= w {
            continue;
        }
        let i = state.joint_slot(l, c, prune);
        let marginal = cand.gain - 2.0 * interaction[i];
        if marginal <= 0.0 {
            continue;
        }
        for (acc, q) in interaction.iter_mut().zip(&state.cross[i * k..(i + 1) * k]) {
            *acc += f64::from(*q);
        }
        used[l][c] = true;
        taken[l] += 1;
        prunes[l] += usize::from(prune);
        chosen.push(*cand);
    }
    chosen.sort_by_key(|c| (c.layer, c.channel));
    chosen
}

/// Eq. (1) for the whole set `chosen` under the first-order additivity of
/// [`select_joint`]: `sum_i DeltaL_i + sum_{i != j} Q_ij`. `None` without
/// [`MorphState::cross`].
pub fn joint_delta_loss(chosen: &[Candidate], state: &MorphState) -> Option<f64> {
    SetTerms::of(chosen, state).map(|t| t.estimate(1.0))
}

/// Selection for [`Selection::Scaled`]: prunes cannot be scaled (their
/// `Delta_a = -a` is fixed), so they are admitted as in [`select_joint`], only
/// while each adds to the joint estimate of the prunes chosen before it (the
/// paper's independent rule admitted 20 prunes on the default run whose joint
/// estimate was +7.3 and left the network at chance). Splits are then chosen
/// by their own gain as in [`select`], within what is left of each layer's
/// budget, and [`split_scale`] shrinks them together.
pub fn select_scaled(
    arch: &Arch,
    cands: &[Candidate],
    cfg: &SelectConfig,
    state: &MorphState,
) -> Vec<Candidate> {
    let prune_cands: Vec<Candidate> = cands
        .iter()
        .filter(|c| c.kind == Kind::Prune)
        .copied()
        .collect();
    let mut chosen = select_joint(arch, &prune_cands, cfg, state);
    for l in 0..arch.layers() {
        let pruned: Vec<usize> = chosen
            .iter()
            .filter(|c| c.layer == l)
            .map(|c| c.channel)
            .collect();
        let mut splits: Vec<Candidate> = cands
            .iter()
            .filter(|c| {
                c.layer == l
                    && c.kind == Kind::Split
                    && c.gain > 0.0
                    && !pruned.contains(&c.channel)
            })
            .copied()
            .collect();
        splits.sort_by(|a, b| b.gain.total_cmp(&a.gain).then(a.channel.cmp(&b.channel)));
        let budget = layer_budget(arch.widths[l], cfg.fraction).saturating_sub(pruned.len());
        chosen.extend(splits.into_iter().take(budget));
    }
    chosen.sort_by_key(|c| (c.layer, c.channel));
    chosen
}

/// The common scale of the chosen splits' theta and what the set then costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitScale {
    /// Factor in `[0, 1]` for the `u` (and the theta) of every chosen split.
    pub scale: f64,
    /// Eq. (1) for the whole set with the splits scaled.
    pub delta_loss: f64,
}

/// Eq. (1) for the set `chosen` with the `u` of its splits scaled by a common
/// factor `t`, minimised over `t` in `[0, 1]`.
///
/// With `a_i = m_i - Q_ii` the averaged first-order term of candidate `i` and
/// the `u` of different morphisms adding (as in [`select_joint`]), the set's
/// estimate is `E(t) = t A_S + A_P + t^2 Q_SS + 2 t Q_SP + Q_PP` (`S` the
/// splits, `P` the prunes, `A` sums of `a`, `Q_XY` sums of cross terms), a
/// parabola with its minimum at `t = -(A_S + 2 Q_SP) / (2 Q_SS)`. Applying
/// theta scaled by `t` is conservative: through ReLU (and max-pool) Delta_a is
/// convex and even in theta, so it shrinks at least as fast as theta does and
/// the realised `u` is at most the modelled `t u`. This keeps the paper's
/// independent rule (every candidate with positive own gain) from overshooting
/// the minimum that each candidate was learned to reach alone. `None` without
/// [`MorphState::cross`].
pub fn split_scale(chosen: &[Candidate], state: &MorphState) -> Option<SplitScale> {
    let t = SetTerms::of(chosen, state)?;
    let slope = t.a_s + 2.0 * t.q_sp;
    let scale = if t.q_ss > 0.0 {
        (-slope / (2.0 * t.q_ss)).clamp(0.0, 1.0)
    } else if slope < 0.0 {
        1.0
    } else {
        0.0
    };
    Some(SplitScale {
        scale,
        delta_loss: t.estimate(scale),
    })
}

/// The pieces of a set's eq. (1) with its splits' `u` scaled by `t`:
/// first-order sums `a_s`, `a_p` (`a_i = m_i - Q_ii`) and cross-term sums
/// over split/split, split/prune and prune/prune pairs.
struct SetTerms {
    a_s: f64,
    a_p: f64,
    q_ss: f64,
    q_sp: f64,
    q_pp: f64,
}

impl SetTerms {
    /// `None` without [`MorphState::cross`].
    fn of(chosen: &[Candidate], state: &MorphState) -> Option<SetTerms> {
        let k = state.joint_len();
        if state.cross.len() != k * k {
            return None;
        }
        let slots: Vec<(usize, bool)> = chosen
            .iter()
            .map(|c| {
                let split = c.kind == Kind::Split;
                (state.joint_slot(c.layer, c.channel, !split), split)
            })
            .collect();
        let q = |i: usize, j: usize| f64::from(state.cross[i * k + j]);
        let mut t = SetTerms {
            a_s: 0.0,
            a_p: 0.0,
            q_ss: 0.0,
            q_sp: 0.0,
            q_pp: 0.0,
        };
        for (c, &(i, split)) in chosen.iter().zip(&slots) {
            let first_order = f64::from(c.delta_loss) - q(i, i);
            if split {
                t.a_s += first_order;
            } else {
                t.a_p += first_order;
            }
        }
        for &(i, si) in &slots {
            for &(j, sj) in &slots {
                match (si, sj) {
                    (true, true) => t.q_ss += q(i, j),
                    (false, false) => t.q_pp += q(i, j),
                    (true, false) => t.q_sp += q(i, j),
                    (false, true) => {}
                }
            }
        }
        Some(t)
    }

    /// `E(t) = t A_S + A_P + t^2 Q_SS + 2 t Q_SP + Q_PP`.
    fn estimate(&self, t: f64) -> f64 {
        t * self.a_s + self.a_p + t * t * self.q_ss + 2.0 * t * self.q_sp + self.q_pp
    }
}

/// What a selection rule applies: the chosen candidates, the factor on each
/// one's learned theta (1 for prunes, which cannot be scaled) and eq. (1) for
/// the set as applied.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Selected {
    /// Chosen candidates, by layer and channel.
    pub chosen: Vec<Candidate>,
    /// Per chosen candidate: the factor on its `u` and its theta, in `[0, 1]`.
    pub scales: Vec<f64>,
    /// The set's joint estimate with the scales applied (`None` without
    /// [`MorphState::cross`]).
    pub joint_delta_loss: Option<f64>,
}

impl Selected {
    /// `chosen` at full scale.
    fn unscaled(chosen: Vec<Candidate>, state: &MorphState) -> Selected {
        let joint_delta_loss = joint_delta_loss(&chosen, state);
        Selected {
            scales: alloc::vec![1.0; chosen.len()],
            chosen,
            joint_delta_loss,
        }
    }
}

/// Applies `cfg.selection` to the scored candidates (Algorithm 1's "select").
pub fn choose(
    arch: &Arch,
    cands: &[Candidate],
    cfg: &SelectConfig,
    state: &MorphState,
) -> Selected {
    match cfg.selection {
        Selection::Independent => Selected::unscaled(select(arch, cands, cfg), state),
        Selection::Joint => Selected::unscaled(select_joint(arch, cands, cfg, state), state),
        Selection::Scaled => {
            let chosen = select_scaled(arch, cands, cfg, state);
            match split_scale(&chosen, state) {
                Some(s) => Selected {
                    scales: chosen
                        .iter()
                        .map(|c| if c.kind == Kind::Split { s.scale } else { 1.0 })
                        .collect(),
                    chosen,
                    joint_delta_loss: Some(s.delta_loss),
                },
                None => Selected::unscaled(chosen, state),
            }
        }
        Selection::Box => select_box(arch, cands, cfg, state),
    }
}

/// Per-candidate scales from the box-constrained quadratic of the set's
/// joint estimate.
///
/// The paper's set ([`select`]: per channel the better candidate with
/// positive own gain, at most the layer budget) decides where to grow. With
/// the `u` of candidate `i` scaled by `t_i` and the `u` of different
/// morphisms adding (as in [`select_joint`]), eq. (1) for the set is
/// `E(t) = sum_i t_i a_i + sum_{i,j} t_i t_j Q_ij` (`a_i = m_i - Q_ii` the
/// first-order term), minimised over `t_i in [0, 1]` for splits and
/// `t_i in {0, 1}` (plus its price) for prunes by exact coordinate descent:
/// each step minimises over one `t_i` with the others fixed, so `E` never
/// rises. Splits keep their place in the set at any scale (at 0 they go in
/// at theta's noise level); prunes at 0 are dropped. With
/// [`SelectConfig::prunes_after_splits`] the pool holds the splits only and
/// prunes are admitted afterwards, one by one, best own gain first, where
/// they still pay given the splits. Unlike [`split_scale`]'s common factor,
/// the splits whose learned directions the set needs keep their theta
/// instead of every split's theta being dragged toward zero.
pub fn select_box(
    arch: &Arch,
    cands: &[Candidate],
    cfg: &SelectConfig,
    state: &MorphState,
) -> Selected {
    let k = state.joint_len();
    if state.cross.len() != k * k {
        return Selected::unscaled(select(arch, cands, cfg), state);
    }
    let after = cfg.prunes_after_splits && cfg.prune;
    let pool: Vec<Candidate> = if after {
        let splits: Vec<Candidate> = cands
            .iter()
            .filter(|c| c.kind == Kind::Split)
            .copied()
            .collect();
        select(arch, &splits, cfg)
    } else {
        select(arch, cands, cfg)
    };
    let mut qp = BoxQp::new(pool, state);
    qp.descend(&[]);
    if after {
        // Prunes on channels and budget the splits left, best own gain first.
        let mut order: Vec<&Candidate> = cands
            .iter()
            .filter(|c| c.kind == Kind::Prune && c.gain > 0.0)
            .collect();
        order.sort_by(|a, b| {
            b.gain
                .total_cmp(&a.gain)
                .then(a.layer.cmp(&b.layer))
                .then(a.channel.cmp(&b.channel))
        });
        let fixed = qp.items.len();
        for cand in order {
            let (l, w) = (cand.layer, arch.widths[cand.layer]);
            // Splits are applied at any scale, prunes only at 1.
            let applied = |c: &Candidate, t: f64| c.kind == Kind::Split || t > 0.0;
            let in_layer = |prune: bool| {
                qp.items
                    .iter()
                    .zip(&qp.t)
                    .filter(|(c, t)| {
                        c.layer == l && applied(c, **t) && (!prune || c.kind == Kind::Prune)
                    })
                    .count()
            };
            let taken = qp
                .items
                .iter()
                .zip(&qp.t)
                .any(|(c, t)| c.layer == l && c.channel == cand.channel && applied(c, *t));
            if taken || in_layer(false) >= layer_budget(w, cfg.fraction) || in_layer(true) + 1 >= w
            {
                continue;
            }
            qp.push(*cand, state);
            let i = qp.items.len() - 1;
            if qp.marginal(i) < 0.0 {
                qp.set(i, 1.0);
            }
        }
        // The splits again, with the admitted prunes fixed.
        let prunes: Vec<usize> = (fixed..qp.items.len()).collect();
        qp.descend(&prunes);
    }
    let estimate = qp.estimate();
    // Splits at scale 0 are still applied (at theta's noise level, a
    // function-preserving split); prunes at 0 are not.
    let mut picked: Vec<(Candidate, f64)> = qp
        .items
        .into_iter()
        .zip(qp.t)
        .filter(|(c, t)| *t > 0.0 || c.kind == Kind::Split)
        .collect();
    picked.sort_by_key(|(c, _)| (c.layer, c.channel));
    Selected {
        scales: picked.iter().map(|p| p.1).collect(),
        chosen: picked.into_iter().map(|p| p.0).collect(),
        joint_delta_loss: Some(estimate),
    }
}

/// The box-constrained quadratic of [`select_box`] over a pool of candidates.
struct BoxQp {
    items: Vec<Candidate>,
    /// Pool slots in [`MorphState::cross`].
    slots: Vec<usize>,
    /// First-order terms `a_i`.
    a: Vec<f64>,
    /// Price `lambda_p dR_p + lambda_f dR_f` (negative for a prune).
    price: Vec<f64>,
    /// Dense `Q` over the pool, row-major.
    q: Vec<f64>,
    t: Vec<f64>,
    /// `h = Q t`.
    h: Vec<f64>,
}

impl BoxQp {
    fn new(pool: Vec<Candidate>, state: &MorphState) -> BoxQp {
        let mut qp = BoxQp {
            items: Vec::new(),
            slots: Vec::new(),
            a: Vec::new(),
            price: Vec::new(),
            q: Vec::new(),
            t: Vec::new(),
            h: Vec::new(),
        };
        let mut pool = pool;
        pool.sort_by(|a, b| {
            b.gain
                .total_cmp(&a.gain)
                .then(a.layer.cmp(&b.layer))
                .then(a.channel.cmp(&b.channel))
        });
        for c in pool {
            qp.push(c, state);
        }
        qp
    }

    /// Adds a candidate at `t = 0`.
    fn push(&mut self, c: Candidate, state: &MorphState) {
        let k = state.joint_len();
        let slot = state.joint_slot(c.layer, c.channel, c.kind == Kind::Prune);
        let n = self.items.len();
        let cross = |i: usize, j: usize| f64::from(state.cross[i * k + j]);
        let mut q = Vec::with_capacity((n + 1) * (n + 1));
        for i in 0..n {
            q.extend_from_slice(&self.q[i * n..(i + 1) * n]);
            q.push(cross(self.slots[i], slot));
        }
        q.extend(self.slots.iter().map(|&j| cross(slot, j)));
        q.push(cross(slot, slot));
        // The new column's contribution to h is zero at t = 0.
        self.h.push(
            self.slots
                .iter()
                .zip(&self.t)
                .map(|(&j, &t)| cross(slot, j) * t)
                .sum(),
        );
        self.q = q;
        self.a.push(f64::from(c.delta_loss) - cross(slot, slot));
        self.price.push(-c.gain - f64::from(c.delta_loss));
        self.slots.push(slot);
        self.t.push(0.0);
        self.items.push(c);
    }

    fn n(&self) -> usize {
        self.items.len()
    }

    /// Change of the objective if candidate `i` (now at 0) were applied at full scale.
    fn marginal(&self, i: usize) -> f64 {
        let n = self.n();
        let others = self.h[i] - self.q[i * n + i] * self.t[i];
        self.a[i] + self.q[i * n + i] + 2.0 * others + self.price[i]
    }

    fn set(&mut self, i: usize, t: f64) {
        let n = self.n();
        let d = t - self.t[i];
        if d != 0.0 {
            for (h, q) in self.h.iter_mut().zip(&self.q[i * n..(i + 1) * n]) {
                *h += q * d;
            }
            self.t[i] = t;
        }
    }

    /// The best `t_i` with the others fixed, price included.
    fn best(&self, i: usize) -> f64 {
        let n = self.n();
        let qii = self.q[i * n + i];
        let g = self.a[i] + 2.0 * (self.h[i] - qii * self.t[i]);
        if self.items[i].kind == Kind::Prune {
            return if g + qii + self.price[i] < 0.0 {
                1.0
            } else {
                0.0
            };
        }
        let t = if qii > 0.0 {
            (-g / (2.0 * qii)).clamp(0.0, 1.0)
        } else if g < 0.0 {
            1.0
        } else {
            0.0
        };
        // A split's price was paid by its own gain when it entered the pool:
        // here only its share of the set's estimate is chosen.
        t
    }

    /// Coordinate descent over every candidate not in `fixed`.
    fn descend(&mut self, fixed: &[usize]) {
        for _ in 0..200 {
            let mut moved = 0.0f64;
            for i in 0..self.n() {
                if fixed.contains(&i) {
                    continue;
                }
                let t = self.best(i);
                moved = moved.max((t - self.t[i]).abs());
                self.set(i, t);
            }
            if moved < 1e-9 {
                break;
            }
        }
    }

    /// `E(t) = sum_i t_i a_i + t . Q t`.
    fn estimate(&self) -> f64 {
        self.t
            .iter()
            .zip(&self.a)
            .zip(&self.h)
            .map(|((t, a), h)| t * a + t * h)
            .sum()
    }
}

/// Per-layer budget: at most `max(1, floor(fraction * width))` channels.
pub fn layer_budget(width: usize, fraction: f64) -> usize {
    (libm::floor(fraction * width as f64) as usize).max(1)
}

/// Baselines that do not estimate: splits scored with zero estimated change.
/// `per_layer`: every layer gets its budget of channels drawn uniformly
/// (uniform widening, width ratios kept up to rounding). Otherwise the same
/// total is drawn uniformly from all channels of all layers (Net2Net-style
/// random growth).
pub fn random_splits(
    arch: &Arch,
    cfg: &SelectConfig,
    per_layer: bool,
    rng: &mut crate::rng::Rng,
) -> Vec<Candidate> {
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    if per_layer {
        for l in 0..arch.layers() {
            let mut channels: Vec<usize> = (0..arch.widths[l]).collect();
            rng.shuffle(&mut channels);
            chosen.extend(
                channels
                    .into_iter()
                    .take(layer_budget(arch.widths[l], cfg.fraction))
                    .map(|c| (l, c)),
            );
        }
    } else {
        let total: usize = arch
            .widths
            .iter()
            .map(|&w| layer_budget(w, cfg.fraction))
            .sum();
        let mut all: Vec<(usize, usize)> = (0..arch.layers())
            .flat_map(|l| (0..arch.widths[l]).map(move |c| (l, c)))
            .collect();
        rng.shuffle(&mut all);
        chosen.extend(all.into_iter().take(total));
    }
    unscored_splits(arch, chosen)
}

/// Baselines sized by parameters: random splits added while the
/// architecture stays at or below `target` parameters, each channel at most
/// once. `per_layer` (uniform widening): rounds of one new channel per layer,
/// in a random layer order each round, so widths grow together; otherwise
/// (random growth) channels drawn uniformly from all channels of all layers.
/// Matches another run's size where the per-layer budget's minimum of one
/// channel per layer would overshoot it.
pub fn random_splits_to(
    arch: &Arch,
    target: u64,
    per_layer: bool,
    rng: &mut crate::rng::Rng,
) -> Vec<Candidate> {
    let mut grown = arch.clone();
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    let fits = |grown: &mut Arch, l: usize| {
        let (dp, _) = channel_cost(grown, l, 1);
        let ok = grown.params() as i64 + dp <= target as i64;
        if ok {
            grown.widths[l] += 1;
        }
        ok
    };
    if per_layer {
        let mut free: Vec<Vec<usize>> = arch
            .widths
            .iter()
            .map(|&w| {
                let mut c: Vec<usize> = (0..w).collect();
                rng.shuffle(&mut c);
                c
            })
            .collect();
        loop {
            let mut order: Vec<usize> = (0..arch.layers()).collect();
            rng.shuffle(&mut order);
            let mut added = false;
            for l in order {
                if !free[l].is_empty() && fits(&mut grown, l) {
                    chosen.push((l, free[l].pop().expect("not empty")));
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
    } else {
        let mut all: Vec<(usize, usize)> = (0..arch.layers())
            .flat_map(|l| (0..arch.widths[l]).map(move |c| (l, c)))
            .collect();
        rng.shuffle(&mut all);
        for (l, c) in all {
            if fits(&mut grown, l) {
                chosen.push((l, c));
            }
        }
    }
    unscored_splits(arch, chosen)
}

/// The baselines' draw as split candidates with no estimate, by layer and channel.
fn unscored_splits(arch: &Arch, mut chosen: Vec<(usize, usize)>) -> Vec<Candidate> {
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|(l, c)| {
            let (dp, dm) = channel_cost(arch, l, 1);
            Candidate {
                layer: l,
                channel: c,
                kind: Kind::Split,
                delta_loss: 0.0,
                delta_params: dp,
                delta_macs: dm,
                gain: 0.0,
            }
        })
        .collect()
}

/// The morphisms that apply `chosen`, splits with their learned theta.
pub fn to_morphisms(arch: &Arch, chosen: &[Candidate], state: &MorphState) -> Vec<ChannelMorphism> {
    let units = arch.units();
    chosen
        .iter()
        .map(|k| {
            let morphism = match k.kind {
                Kind::Split => {
                    let fan = units[k.layer].fan_in();
                    Morphism::Split {
                        theta: state.theta[k.layer][k.channel * fan..(k.channel + 1) * fan]
                            .to_vec(),
                    }
                }
                Kind::Prune => Morphism::Prune,
            };
            ChannelMorphism {
                layer: k.layer,
                channel: k.channel,
                morphism,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;
    use crate::rng::Rng;

    /// Lambda_p, budget fraction and prunes; MACs free, independent selection.
    fn config(lambda_params: f64, fraction: f64, prune: bool) -> SelectConfig {
        SelectConfig {
            lambda_params,
            lambda_macs: 0.0,
            fraction,
            prune,
            selection: Selection::Independent,
            prunes_after_splits: false,
        }
    }

    fn state_with(
        arch: &Arch,
        split: impl Fn(usize, usize) -> f32,
        prune: impl Fn(usize, usize) -> f32,
    ) -> MorphState {
        let net = Network::init(arch, 0);
        let mut s = MorphState::new(&net, 0.01, &mut Rng::new(0));
        for l in 0..arch.layers() {
            for c in 0..arch.widths[l] {
                s.split_ema[l][c] = split(l, c);
                s.prune_ema[l][c] = prune(l, c);
            }
        }
        s
    }

    #[test]
    fn picks_the_best_positive_gains_within_the_budget() {
        let arch = Arch::vgg19(10, [1, 32, 32], 10).unwrap();
        // Channel c of every layer: split gain grows with c; channel 0 is better pruned.
        let st = state_with(
            &arch,
            |_, c| -0.001 * c as f32,
            |_, c| if c == 0 { -0.5 } else { 0.1 },
        );
        let cfg = config(1e-7, 0.3, true);
        let cands = candidates(&arch, &st, &cfg);
        let chosen = select(&arch, &cands, &cfg);
        for l in 0..arch.layers() {
            let mut mine: Vec<(usize, Kind)> = chosen
                .iter()
                .filter(|k| k.layer == l)
                .map(|k| (k.channel, k.kind))
                .collect();
            mine.sort();
            // Budget 3: the prune of channel 0 (gain ~0.5), then the splits of channels 9 and 8.
            assert_eq!(
                mine,
                alloc::vec![(0, Kind::Prune), (8, Kind::Split), (9, Kind::Split)],
                "layer {l}"
            );
        }
        assert!(chosen.iter().all(|k| k.gain > 0.0));
    }

    #[test]
    fn joint_selection_stops_at_the_minimum_of_the_set_estimate() {
        let arch = Arch::vgg19(10, [1, 32, 32], 10).unwrap();
        // One sample with L_hat = 1; every split of layer 0 has u = -1, so
        // each alone is estimated at -1 + 1/4 and any k of them at
        // -k + k^2 / 4: the set's minimum -1 is at k = 2.
        let mut st = state_with(&arch, |l, _| if l == 0 { -0.75 } else { 0.0 }, |_, _| 0.0);
        let mut u = alloc::vec![0.0f32; st.joint_len()];
        for c in 0..10 {
            u[st.joint_slot(0, c, false)] = -1.0;
        }
        st.update_cross(&u, 1, 1.0, 0.5, &mut Vec::new());
        let cfg = SelectConfig {
            selection: Selection::Joint,
            ..config(0.0, 1.0, false)
        };
        let cands = candidates(&arch, &st, &cfg);
        assert_eq!(select(&arch, &cands, &cfg).len(), 10);
        let chosen = select_joint(&arch, &cands, &cfg, &st);
        let picked: Vec<(usize, usize)> = chosen.iter().map(|k| (k.layer, k.channel)).collect();
        assert_eq!(picked, alloc::vec![(0, 0), (0, 1)]);
        let joint = joint_delta_loss(&chosen, &st).unwrap();
        assert!((joint + 1.0).abs() < 1e-6, "joint estimate {joint}");
        // Without the cross products the rule is the independent one.
        st.cross.clear();
        assert_eq!(select_joint(&arch, &cands, &cfg, &st).len(), 10);
        assert!(joint_delta_loss(&chosen, &st).is_none());
    }

    #[test]
    fn split_scale_lands_the_set_at_the_minimum_of_its_estimate() {
        let arch = Arch::vgg19(10, [1, 32, 32], 10).unwrap();
        // One sample, L_hat = 1: ten splits of layer 0 with u = -1 and one
        // prune of layer 1 with u = -1/2. With the splits scaled by t the
        // set's u is U = -10 t - 1/2 and eq. (1) is U + U^2 / 4, smallest
        // (-1) at U = -2, i.e. t = 0.15.
        let mut st = state_with(
            &arch,
            |l, _| if l == 0 { -0.75 } else { 0.0 },
            |l, c| if l == 1 && c == 0 { -0.4375 } else { 0.0 },
        );
        let mut u = alloc::vec![0.0f32; st.joint_len()];
        for c in 0..10 {
            u[st.joint_slot(0, c, false)] = -1.0;
        }
        u[st.joint_slot(1, 0, true)] = -0.5;
        st.update_cross(&u, 1, 1.0, 0.5, &mut Vec::new());
        let cfg = SelectConfig {
            selection: Selection::Scaled,
            ..config(0.0, 1.0, true)
        };
        let cands = candidates(&arch, &st, &cfg);
        let chosen = select_scaled(&arch, &cands, &cfg, &st);
        let splits = chosen.iter().filter(|k| k.kind == Kind::Split).count();
        let prunes: Vec<(usize, usize)> = chosen
            .iter()
            .filter(|k| k.kind == Kind::Prune)
            .map(|k| (k.layer, k.channel))
            .collect();
        assert_eq!((splits, prunes), (10, alloc::vec![(1, 0)]));
        let s = split_scale(&chosen, &st).unwrap();
        assert!((s.scale - 0.15).abs() < 1e-6, "scale {}", s.scale);
        assert!(
            (s.delta_loss + 1.0).abs() < 1e-6,
            "estimate {}",
            s.delta_loss
        );
        // Unscaled, the same set is the joint estimate of [`select_joint`].
        let whole = joint_delta_loss(&chosen, &st).unwrap();
        assert!(
            (whole - (-10.5 + 10.5 * 10.5 / 4.0)).abs() < 1e-4,
            "{whole}"
        );
        // Splits that would raise the loss are not scaled up past zero.
        let bad = [Candidate {
            delta_loss: 2.0,
            ..chosen[0]
        }];
        assert_eq!(split_scale(&bad, &st).unwrap().scale, 0.0);
        st.cross.clear();
        assert!(split_scale(&chosen, &st).is_none());
    }

    #[test]
    fn scaled_selection_admits_prunes_jointly_and_splits_by_own_gain() {
        let arch = Arch::vgg19(10, [1, 32, 32], 10).unwrap();
        // Every prune of layer 0 has u = -1 (own estimate -0.75): jointly only
        // two of them help. Every split has a positive own gain.
        let mut st = state_with(
            &arch,
            |_, c| -0.01 * (c + 1) as f32,
            |l, _| if l == 0 { -0.75 } else { 1.0 },
        );
        let mut u = alloc::vec![0.0f32; st.joint_len()];
        for c in 0..10 {
            u[st.joint_slot(0, c, true)] = -1.0;
        }
        st.update_cross(&u, 1, 1.0, 0.5, &mut Vec::new());
        let cfg = SelectConfig {
            selection: Selection::Scaled,
            ..config(0.0, 0.5, true)
        };
        let cands = candidates(&arch, &st, &cfg);
        let chosen = select_scaled(&arch, &cands, &cfg, &st);
        let of = |l: usize, kind: Kind| -> Vec<usize> {
            chosen
                .iter()
                .filter(|k| k.layer == l && k.kind == kind)
                .map(|k| k.channel)
                .collect()
        };
        // Layer 0: two prunes, then the three best splits of the others
        // (budget 5); other layers: the five best splits.
        assert_eq!(of(0, Kind::Prune).len(), 2);
        assert_eq!(of(0, Kind::Split).len(), 3);
        assert!(of(0, Kind::Split)
            .iter()
            .all(|c| !of(0, Kind::Prune).contains(c)));
        for l in 1..arch.layers() {
            assert_eq!(of(l, Kind::Prune), alloc::vec![]);
            assert_eq!(of(l, Kind::Split), alloc::vec![5, 6, 7, 8, 9], "layer {l}");
        }
    }

    #[test]
    fn box_selection_gives_each_split_its_share_of_the_set_minimum() {
        let arch = Arch::vgg19(10, [1, 32, 32], 10).unwrap();
        // One sample, L_hat = 1: ten splits of layer 0 with u = -1 (own
        // estimate -0.75). E(t) = -sum t + (sum t)^2 / 4 is smallest (-1) at
        // sum t = 2: coordinate descent from t = 0, best gain first, puts the
        // first two at full scale and the rest at 0, which stay in the set.
        // A prune of layer 1 pushing the same way (own estimate -0.74) would
        // overshoot the minimum: dropped.
        let mut st = state_with(
            &arch,
            |l, c| if l == 0 { -0.75 + 1e-4 * c as f32 } else { 0.0 },
            |l, c| if l == 1 && c == 0 { -0.74 } else { 0.0 },
        );
        let mut u = alloc::vec![0.0f32; st.joint_len()];
        for c in 0..10 {
            u[st.joint_slot(0, c, false)] = -1.0;
        }
        u[st.joint_slot(1, 0, true)] = -1.0;
        st.update_cross(&u, 1, 1.0, 0.5, &mut Vec::new());
        let cfg = SelectConfig {
            selection: Selection::Box,
            ..config(0.0, 1.0, true)
        };
        let cands = candidates(&arch, &st, &cfg);
        let sel = choose(&arch, &cands, &cfg, &st);
        assert!(sel
            .chosen
            .iter()
            .all(|k| k.kind == Kind::Split && k.layer == 0));
        assert_eq!(sel.chosen.len(), 10);
        let full: Vec<usize> = sel
            .chosen
            .iter()
            .zip(&sel.scales)
            .filter(|(_, &t)| t > 0.0)
            .map(|(k, _)| k.channel)
            .collect();
        // Channels 0 and 1 have the best own estimates and go first.
        assert_eq!(full, alloc::vec![0, 1]);
        assert!(sel
            .scales
            .iter()
            .all(|&t| t == 0.0 || (t - 1.0).abs() < 1e-3));
        let e = sel.joint_delta_loss.unwrap();
        assert!((e + 1.0).abs() < 1e-3, "set estimate {e}");

        // Two samples: splits 0 and 1 of layer 0 act on the first (u = -1),
        // the prune on the second (u = -1); each alone is estimated at
        // -0.375. Together E = (-1 + (-1 + 1/4)) / 2 = -0.875: the prune
        // is kept at scale 1, chosen with the splits or after them.
        let mut st = state_with(
            &arch,
            |l, c| if l == 0 && c < 2 { -0.375 } else { 0.0 },
            |l, c| if l == 1 && c == 0 { -0.375 } else { 0.0 },
        );
        let k = st.joint_len();
        let mut u = alloc::vec![0.0f32; 2 * k];
        for c in 0..2 {
            u[st.joint_slot(0, c, false)] = -1.0;
        }
        u[k + st.joint_slot(1, 0, true)] = -1.0;
        st.update_cross(&u, 2, 1.0, 0.5, &mut Vec::new());
        for after in [false, true] {
            let cfg = SelectConfig {
                prunes_after_splits: after,
                ..cfg
            };
            let sel = choose(&arch, &candidates(&arch, &st, &cfg), &cfg, &st);
            let picked: Vec<(usize, usize, Kind, f64)> = sel
                .chosen
                .iter()
                .zip(&sel.scales)
                .map(|(k, &t)| (k.layer, k.channel, k.kind, t))
                .collect();
            assert_eq!(
                picked,
                alloc::vec![
                    (0, 0, Kind::Split, 1.0),
                    (0, 1, Kind::Split, 1.0),
                    (1, 0, Kind::Prune, 1.0)
                ],
                "after {after}"
            );
            let e = sel.joint_delta_loss.unwrap();
            assert!((e + 0.875).abs() < 1e-4, "after {after}: {e}");
        }
        // A channel whose split is in the set (at any scale) is never also
        // pruned, and prunes admitted afterwards respect the layer budget.
        let mut st = state_with(&arch, |_, _| -0.1, |_, _| -0.2);
        let mut u = alloc::vec![0.0f32; st.joint_len()];
        for l in 0..arch.layers() {
            for c in 0..10 {
                u[st.joint_slot(l, c, false)] = -1.0;
                u[st.joint_slot(l, c, true)] = if c % 2 == 0 { -0.1 } else { 0.1 };
            }
        }
        st.update_cross(&u, 1, 1.0, 0.5, &mut Vec::new());
        let cfg = SelectConfig {
            selection: Selection::Box,
            prunes_after_splits: true,
            ..config(0.0, 0.3, true)
        };
        let splits_only = SelectConfig {
            prune: false,
            ..cfg
        };
        let sel = choose(&arch, &candidates(&arch, &st, &cfg), &cfg, &st);
        let pool = select(&arch, &candidates(&arch, &st, &splits_only), &splits_only);
        for l in 0..arch.layers() {
            let mine: Vec<usize> = sel
                .chosen
                .iter()
                .filter(|k| k.layer == l)
                .map(|k| k.channel)
                .collect();
            let mut uniq = mine.clone();
            uniq.dedup();
            assert_eq!(mine, uniq, "layer {l}: a channel chosen twice");
            assert!(mine.len() <= layer_budget(10, 0.3), "layer {l}: {mine:?}");
            assert_eq!(
                sel.chosen
                    .iter()
                    .filter(|k| k.layer == l && k.kind == Kind::Split)
                    .count(),
                pool.iter().filter(|k| k.layer == l).count()
            );
        }
    }

    #[test]
    fn price_and_prune_floor_are_respected() {
        let arch = Arch::vgg19(2, [1, 32, 32], 10).unwrap();
        // Pruning both channels of a layer looks great, but one must stay.
        let st = state_with(&arch, |_, _| 0.0, |_, _| -1.0);
        let cfg = config(0.0, 1.0, true);
        let chosen = select(&arch, &candidates(&arch, &st, &cfg), &cfg);
        for l in 0..arch.layers() {
            assert_eq!(
                chosen.iter().filter(|k| k.layer == l).count(),
                1,
                "layer {l}"
            );
        }
        // A split that lowers the loss by less than its price is not applied.
        let st = state_with(&arch, |_, _| -1e-6, |_, _| 1.0);
        let cfg = config(1e-6, 1.0, false);
        assert!(select(&arch, &candidates(&arch, &st, &cfg), &cfg).is_empty());
    }

    #[test]
    fn growth_to_a_parameter_target_stops_at_it() {
        let arch = Arch::vgg19(4, [1, 32, 32], 10).unwrap();
        let target = arch.params() + 1500;
        for per_layer in [true, false] {
            let chosen = random_splits_to(&arch, target, per_layer, &mut Rng::new(3));
            let mut grown = arch.clone();
            for k in &chosen {
                grown.widths[k.layer] += 1;
            }
            let p = grown.params();
            assert!(p <= target, "{per_layer}: {p} > {target}");
            // No further channel of any layer would still fit... unless its
            // layer is used up (uniform: every channel at most once).
            let smallest = (0..arch.layers())
                .map(|l| channel_cost(&grown, l, 1).0)
                .min()
                .unwrap();
            assert!(
                p as i64 + smallest > target as i64,
                "{per_layer}: room left"
            );
            let mut seen = chosen
                .iter()
                .map(|k| (k.layer, k.channel))
                .collect::<Vec<_>>();
            seen.dedup();
            assert_eq!(seen.len(), chosen.len(), "a channel split twice");
            if per_layer {
                let added: Vec<usize> = (0..16).map(|l| grown.widths[l] - arch.widths[l]).collect();
                let (lo, hi) = (added.iter().min().unwrap(), added.iter().max().unwrap());
                assert!(hi - lo <= 1, "uniform widths drift apart: {added:?}");
            }
        }
    }

    #[test]
    fn uniform_widening_takes_each_layers_budget_and_random_the_same_total() {
        let arch = Arch::new(
            crate::arch::Family::Vgg19,
            [1, 32, 32],
            10,
            (0..16).map(|i| 8 + i).collect(),
        )
        .unwrap();
        let cfg = config(0.0, 0.25, true);
        let uni = random_splits(&arch, &cfg, true, &mut Rng::new(4));
        for l in 0..16 {
            assert_eq!(
                uni.iter().filter(|k| k.layer == l).count(),
                layer_budget(arch.widths[l], 0.25)
            );
        }
        let rnd = random_splits(&arch, &cfg, false, &mut Rng::new(4));
        assert_eq!(rnd.len(), uni.len());
        assert!(rnd
            .iter()
            .all(|k| k.kind == Kind::Split && k.channel < arch.widths[k.layer]));
        let per_layer: Vec<usize> = (0..16)
            .map(|l| rnd.iter().filter(|k| k.layer == l).count())
            .collect();
        assert_ne!(
            per_layer,
            (0..16)
                .map(|l| layer_budget(arch.widths[l], 0.25))
                .collect::<Vec<_>>()
        );
    }
}
