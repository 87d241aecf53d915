// Gradient of eq. (1) with respect to Delta_a:
// g = (1 + u / (2 L_hat)) / S * (S / 2) * dL/da, u of the element's plane.

struct Params { total: u32, plane: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> grad_a: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> g: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let coef = 0.5 * (1.0 + u[i / p.plane] / (2.0 * loss[0]));
    g[i] = coef * grad_a[i];
}
