// dW = dout^T f and db = sum of dout over rows: one invocation per weight,
// then one per bias.

struct Params { n: u32, features: u32, classes: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> f: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
@group(0) @binding(4) var<storage, read_write> db: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let weights = p.classes * p.features;
    if (i < weights) {
        let k = i / p.features;
        let j = i % p.features;
        var acc = 0.0;
        for (var r = 0u; r < p.n; r++) {
            acc += dout[r * p.classes + k] * f[r * p.features + j];
        }
        dw[i] = acc;
    } else if (i < weights + p.classes) {
        let k = i - weights;
        var acc = 0.0;
        for (var r = 0u; r < p.n; r++) {
            acc += dout[r * p.classes + k];
        }
        db[k] = acc;
    }
}
