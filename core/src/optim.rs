//! Optimizers: SGD with Nesterov momentum and weight decay for model
//! parameters, Adam for morphism parameters, and a step learning-rate schedule.

use alloc::vec::Vec;

/// SGD with (Nesterov) momentum and L2 weight decay, PyTorch semantics:
/// `g += wd * p; buf = mu * buf + g; p -= lr * (g + mu * buf)` (Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Sgd {
    /// The paper's settings: Nesterov momentum 0.9, weight decay 1e-4.
    pub fn paper(lr: f32) -> Sgd {
        Sgd {
            lr,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: true,
        }
    }

    /// One step on one tensor with its momentum buffer.
    pub fn step(&self, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
        let (lr, mu, wd) = (self.lr, self.momentum, self.weight_decay);
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let g = g + wd * *p;
            *b = mu * *b + g;
            let d = if self.nesterov { g + mu * *b } else { *b };
            *p -= lr * d;
        }
    }

    /// One step on every learnable tensor.
    pub fn step_all(
        &self,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
        bufs: &mut [Vec<f32>],
        learnable: &[bool],
    ) {
        for i in 0..params.len() {
            if learnable[i] {
                self.step(&mut params[i], &grads[i], &mut bufs[i]);
            }
        }
    }
}

/// Adam (Kingma & Ba) with bias correction.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
}

impl Adam {
    /// The paper's morphism optimizer: Adam with learning rate 1e-2.
    pub fn paper() -> Adam {
        Adam {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// One step at (1-based) step count `t` on one tensor with moments `m`, `v`.
    pub fn step(&self, t: u32, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - libm::powf(b1, t as f32);
        let c2 = 1.0 - libm::powf(b2, t as f32);
        let step = self.lr / c1;
        for i in 0..p.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            p[i] -= step * m[i] / (libm::sqrtf(v[i] / c2) + self.eps);
        }
    }
}

/// Step schedule: `base * gamma^k` after the k-th milestone epoch.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StepSchedule {
    /// Learning rate before the first milestone.
    pub base: f32,
    /// Epochs after which the rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Factor at each milestone.
    pub gamma: f32,
}

impl StepSchedule {
    /// The same rate at every epoch.
    pub fn constant(lr: f32) -> Self {
        StepSchedule {
            base: lr,
            milestones: Vec::new(),
            gamma: 1.0,
        }
    }
    /// Learning rate for 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f32 {
        let k = self.milestones.iter().filter(|&&m| epoch >= m).count();
        self.base * libm::powf(self.gamma, k as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesterov_matches_hand_computation() {
        let sgd = Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
        };
        let mut p = [1.0f32];
        let mut b = [0.0f32];
        sgd.step(&mut p, &[0.5], &mut b);
        // g = 0.5 + 0.01 = 0.51; buf = 0.51; d = 0.51 + 0.9 * 0.51 = 0.969
        assert!((p[0] - (1.0 - 0.0969)).abs() < 1e-6);
        sgd.step(&mut p, &[0.5], &mut b);
        let g = 0.5 + 0.01 * (1.0 - 0.0969);
        let buf = 0.9 * 0.51 + g;
        assert!((p[0] - (1.0 - 0.0969 - 0.1 * (g + 0.9 * buf))).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_is_lr_sized() {
        let adam = Adam::paper();
        let (mut p, mut m, mut v) = ([0.0f32], [0.0f32], [0.0f32]);
        adam.step(1, &mut p, &[3.0], &mut m, &mut v);
        assert!((p[0] + 0.01).abs() < 1e-5);
    }

    #[test]
    fn schedule_steps_at_milestones() {
        let s = StepSchedule {
            base: 0.1,
            milestones: alloc::vec![2, 4],
            gamma: 0.1,
        };
        assert!((s.lr_at(1) - 0.1).abs() < 1e-7);
        assert!((s.lr_at(2) - 0.01).abs() < 1e-7);
        assert!((s.lr_at(5) - 0.001).abs() < 1e-8);
    }
}
