// Parameter gradients of BN + ReLU: per channel, with m = [a > 0],
// dbeta = sum(m * da) and dgamma = sum(m * da * (y - mean)) / sqrt(var + eps).
// One workgroup per channel; `grads` is [dgamma | dbeta], each `st` long.

struct Params { n: u32, c: u32, plane: u32, st: u32, running: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> da: array<f32>;
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
    let count = select(0u, p.n * p.plane, live);
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid; j < count; j += LANES) {
        let i = ((j / p.plane) * p.c + c) * p.plane + j % p.plane;
        if (a[i] > 0.0) {
            sg += da[i];
            sgx += da[i] * (y[i] - mean);
        }
    }
    let s1 = workgroup_sum(lid, sg);
    let s2 = workgroup_sum(lid, sgx);
    if (live && lid == 0u) {
        grads[c] = s2 / sqrt(v + BN_EPS);
        grads[p.st + c] = s1;
    }
}
