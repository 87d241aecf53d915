// Input gradient of BN + ReLU, g = [a > 0] * da:
// train: dy = gamma * inv / m * (m * g - dbeta - (y - mean) * inv * dgamma),
// eval:  dy = g * gamma * inv (fixed statistics), inv = 1 / sqrt(var + eps).
// In train mode `grads` holds [dgamma | dbeta] from backward_params.
// `V` is f32 or, where planes are multiples of 4, vec4<f32>.

struct Params { total: u32, c: u32, plane: u32, st: u32, running: u32, count: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read> a: array<V>;
@group(0) @binding(3) var<storage, read> da: array<V>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read> bn: array<f32>;
@group(0) @binding(6) var<storage, read> grads: array<f32>;
@group(0) @binding(7) var<storage, read_write> dy: array<V>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.total / VEC) {
        return;
    }
    let ch = (i / (p.plane / VEC)) % p.c;
    let g = select(V(0.0), da[i], a[i] > V(0.0));
    if (p.running != 0u) {
        dy[i] = g * (bn[ch] / sqrt(bn[3u * p.st + ch] + BN_EPS));
        return;
    }
    let inv = 1.0 / sqrt(stats[p.st + ch] + BN_EPS);
    let m = f32(p.count);
    let k = bn[ch] * inv / m;
    dy[i] = k * (m * g - grads[p.st + ch] - (y[i] - stats[ch]) * inv * grads[ch]);
}
