// Per-channel batch mean and biased variance: one workgroup per channel.
// Squares are taken around the channel's first value, as the CPU kernel
// does, so the variance stays well conditioned. stats = [mean | var], each
// block `st` long. `V` is f32 or, where planes are multiples of 4, vec4<f32>.

struct Params { n: u32, c: u32, plane: u32, st: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg);
    let live = ch < p.c;
    let pv = p.plane / VEC;
    let count = select(0u, p.n * pv, live);
    let shift = first(y[select(0u, ch * pv, live)]);
    var s1 = V(0.0);
    var s2 = V(0.0);
    for (var j = lid; j < count; j += LANES) {
        let v = y[((j / pv) * p.c + ch) * pv + j % pv];
        s1 += v;
        s2 += (v - shift) * (v - shift);
    }
    let sum = workgroup_sum(lid, hsum(s1));
    let sq = workgroup_sum(lid, hsum(s2));
    if (live && lid == 0u) {
        let m = f32(count * VEC);
        let mean = sum / m;
        let d = mean - shift;
        stats[ch] = mean;
        stats[p.st + ch] = max(sq / m - d * d, 0.0);
    }
}
