// Trust region on theta: each channel's theta is scaled back to at most
// `theta_max` times its incoming kernel's norm. One invocation per channel.

struct Params { c: u32, fan: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> hp: Hyper;
@group(0) @binding(2) var<storage, read> w_norms: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> theta: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg) * WG + lid;
    let l = loss[0];
    if (ch >= p.c || hp.theta_max < 0.0 || !(usable_loss(l) && l > 0.0)) {
        return;
    }
    var sq = 0.0;
    for (var j = 0u; j < p.fan; j++) {
        let t = theta[ch * p.fan + j];
        sq += t * t;
    }
    let norm = sqrt(sq);
    let cap = hp.theta_max * w_norms[ch];
    if (norm > cap) {
        for (var j = 0u; j < p.fan; j++) {
            theta[ch * p.fan + j] = theta[ch * p.fan + j] * (cap / norm);
        }
    }
}
