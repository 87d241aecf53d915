// The frozen sigma's first stage on a shifted pre-activation:
// h = relu(scale * (y + sign * d) + shift), BN at its running statistics
// (`bn` holds gamma, beta, running mean and variance, each `st` long).

struct Params { total: u32, c: u32, plane: u32, st: u32, sign: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> d: array<f32>;
@group(0) @binding(3) var<storage, read> bn: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

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
    h[i] = max(scale * (y[i] + bits(p.sign) * d[i]) + shift, 0.0);
}
