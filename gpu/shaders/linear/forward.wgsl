// out = f W^T + b, W is [classes, features]: one invocation per output.

struct Params { n: u32, features: u32, classes: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> f: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.n * p.classes) {
        return;
    }
    let r = i / p.classes;
    let k = i % p.classes;
    var acc = 0.0;
    for (var j = 0u; j < p.features; j++) {
        acc += f[r * p.features + j] * w[k * p.features + j];
    }
    out[i] = b[k] + acc;
}
