// First-order term of a prune per sample and channel: Delta_a = -a, so
// u = -S * sum(a * dL/da).

struct Params { planes: u32, plane: u32, s: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> grad_a: array<f32>;
@group(0) @binding(3) var<storage, read_write> u: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let pl = group_index(wid, nwg) * WG + lid;
    if (pl >= p.planes) {
        return;
    }
    var dot = 0.0;
    for (var j = pl * p.plane; j < (pl + 1u) * p.plane; j++) {
        dot += a[j] * grad_a[j];
    }
    u[pl] = -bits(p.s) * dot;
}
