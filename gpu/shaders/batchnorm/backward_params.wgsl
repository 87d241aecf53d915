// Parameter gradients of BN + ReLU: per channel, with m = [a > 0],
// dbeta = sum(m * da) and dgamma = sum(m * da * (y - mean)) / sqrt(var + eps).
// One workgroup per channel; `grads` is [dgamma | dbeta], each `st` long.
// `V` is f32 or, where planes are multiples of 4, vec4<f32>.

struct Params { n: u32, c: u32, plane: u32, st: u32, running: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read> a: array<V>;
@group(0) @binding(3) var<storage, read> da: array<V>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read> bn: array<f32>;
@group(0) @binding(6) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg);
    let live = ch < p.c;
    let c = select(0u, ch, live);
    var mean = stats[c];
    var v = stats[p.st + c];
    if (p.running != 0u) {
        mean = bn[2u * p.st + c];
        v = bn[3u * p.st + c];
    }
    let pv = p.plane / VEC;
    let count = select(0u, p.n * pv, live);
    var sg = V(0.0);
    var sgx = V(0.0);
    for (var j = lid; j < count; j += LANES) {
        let i = ((j / pv) * p.c + c) * pv + j % pv;
        let g = select(V(0.0), da[i], a[i] > V(0.0));
        sg += g;
        sgx += g * (y[i] - mean);
    }
    let s1 = workgroup_sum(lid, hsum(sg));
    let s2 = workgroup_sum(lid, hsum(sgx));
    if (live && lid == 0u) {
        grads[c] = s2 / sqrt(v + BN_EPS);
        grads[p.st + c] = s1;
    }
}
