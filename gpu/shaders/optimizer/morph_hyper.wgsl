// The morphism phase's settings (MorphHyper on the host, 12 words), shared by
// the Adam, trust-region, moving-average and cross-term kernels.
struct Hyper {
    step: f32, c2: f32, beta1: f32, beta2: f32,
    eps: f32, ema_alpha: f32, ema_first: u32, theta_max: f32,
    cross_first: u32, pad0: u32, pad1: u32, pad2: u32,
}
