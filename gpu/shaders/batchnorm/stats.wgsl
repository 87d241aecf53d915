// Per-channel batch mean and biased variance: one workgroup per channel.
// Squares are taken around the channel's first value, as the CPU kernel
// does, so the variance stays well conditioned. stats = [mean | var], each
// block `st` long.

struct Params { n: u32, c: u32, plane: u32, st: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg);
    let live = ch < p.c;
    let count = select(0u, p.n * p.plane, live);
    let shift = y[select(0u, ch * p.plane, live)];
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = lid; j < count; j += LANES) {
        let v = y[((j / p.plane) * p.c + ch) * p.plane + j % p.plane];
        s1 += v;
        s2 += (v - shift) * (v - shift);
    }
    let sum = workgroup_sum(lid, s1);
    let sq = workgroup_sum(lid, s2);
    if (live && lid == 0u) {
        let m = f32(count);
        let mean = sum / m;
        let d = mean - shift;
        stats[ch] = mean;
        stats[p.st + ch] = max(sq / m - d * d, 0.0);
    }
}
