// a = relu(scale * y + shift), scale = gamma / sqrt(var + eps) and
// shift = beta - mean * scale, with the batch statistics (train) or the
// running statistics (eval). `bn` holds gamma, beta, running mean and
// running variance, each `st` long. `V` is f32 or, where planes are
// multiples of 4, vec4<f32> (VEC values per invocation).

struct Params { total: u32, c: u32, plane: u32, st: u32, running: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read> bn: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> a: array<V>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.total / VEC) {
        return;
    }
    let ch = (i / (p.plane / VEC)) % p.c;
    var mean = stats[ch];
    var v = stats[p.st + ch];
    if (p.running != 0u) {
        mean = bn[2u * p.st + ch];
        v = bn[3u * p.st + ch];
    }
    let scale = bn[ch] / sqrt(v + BN_EPS);
    let shift = bn[p.st + ch] - mean * scale;
    a[i] = max(y[i] * scale + shift, V(0.0));
}
