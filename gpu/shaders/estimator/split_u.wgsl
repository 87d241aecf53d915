// First-order term of a split per sample and channel (one plane each):
// u = (S / 2) * sum(Delta_a * dL/da), Delta_a = a(+d) + a(-d) - 2 a.

struct Params { planes: u32, plane: u32, half_s: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a_plus: array<f32>;
@group(0) @binding(2) var<storage, read> a_minus: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> grad_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> u: array<f32>;

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
        dot += (a_plus[j] + a_minus[j] - 2.0 * a[j]) * grad_a[j];
    }
    u[pl] = bits(p.half_s) * dot;
}
