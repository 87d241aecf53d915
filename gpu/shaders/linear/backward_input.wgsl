// df = dout W: one invocation per feature of each row.

struct Params { n: u32, features: u32, classes: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> df: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.n * p.features) {
        return;
    }
    let r = i / p.features;
    let j = i % p.features;
    var acc = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        acc += dout[r * p.classes + k] * w[k * p.features + j];
    }
    df[i] = acc;
}
