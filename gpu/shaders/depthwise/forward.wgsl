// Depthwise 3x3 conv, padding 1, any stride: one invocation per output.

struct Params {
    n: u32, c: u32, stride: u32, ih: u32,
    iw: u32, oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let oplane = p.oh * p.ow;
    if (i >= p.n * p.c * oplane) {
        return;
    }
    let ox = i % p.ow;
    let oy = (i / p.ow) % p.oh;
    let plane = i / oplane;
    let ch = plane % p.c;
    let xbase = plane * p.ih * p.iw;
    var acc = 0.0;
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(oy * p.stride + ky) - 1;
        if (iy < 0 || iy >= i32(p.ih)) {
            continue;
        }
        for (var kx = 0u; kx < 3u; kx++) {
            let ix = i32(ox * p.stride + kx) - 1;
            if (ix < 0 || ix >= i32(p.iw)) {
                continue;
            }
            acc += x[xbase + u32(iy) * p.iw + u32(ix)] * k[ch * 9u + ky * 3u + kx];
        }
    }
    y[i] = acc;
}
