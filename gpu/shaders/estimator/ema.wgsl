// Eq. (1) per channel, DeltaL = 1/S * sum_s [u_s + u_s^2 / (4 L_hat)], folded
// into the channel's moving average (the first batch initialises it).
// Skipped when the batch loss is not usable.

struct Params { n: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> hp: Hyper;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> ema: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg) * WG + lid;
    let l = loss[0];
    if (ch >= p.c || !(usable_loss(l) && l > 0.0)) {
        return;
    }
    var total = 0.0;
    for (var s = 0u; s < p.n; s++) {
        let v = u[s * p.c + ch];
        total += v + v * v / (4.0 * l);
    }
    let delta = total * (1.0 / f32(p.n));
    if (hp.ema_first != 0u) {
        ema[ch] = delta;
    } else {
        ema[ch] = (1.0 - hp.ema_alpha) * ema[ch] + hp.ema_alpha * delta;
    }
}
