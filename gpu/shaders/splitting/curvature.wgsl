// The splitting matrix's curvature weights (sprout-core's `splitting`):
// m = g * scale^2 * relu''(scale * y + shift) with BN at its running
// statistics (`bn` holds gamma, beta, running mean and variance, each `st`
// long) and relu'' the softplus surrogate's, beta * e / (1 + e)^2 with
// e = exp(-beta |t|).

struct Params { total: u32, c: u32, plane: u32, st: u32, beta: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> bn: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.plane) % p.c;
    let scale = bn[ch] / sqrt(bn[3u * p.st + ch] + BN_EPS);
    let shift = bn[p.st + ch] - bn[2u * p.st + ch] * scale;
    let beta = bits(p.beta);
    let e = exp(-beta * abs(scale * y[i] + shift));
    m[i] = g[i] * scale * scale * (beta * e / ((1.0 + e) * (1.0 + e)));
}
