// y = conv(x, w): NCHW, groups 1, no bias. One invocation computes CO_TILE
// output channels of one output pixel, so each input value is read once per tile.

struct Params {
    n: u32, cin: u32, cout: u32, k: u32,
    stride: u32, pad: u32, ih: u32, iw: u32,
    oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;
// Output channels per invocation (at most 8).
override CO_TILE: u32 = 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let tiles = (p.cout + CO_TILE - 1u) / CO_TILE;
    let plane = p.oh * p.ow;
    if (i >= p.n * tiles * plane) {
        return;
    }
    let pos = i % plane;
    let ox = pos % p.ow;
    let oy = pos / p.ow;
    let t = (i / plane) % tiles;
    let s = i / (plane * tiles);
    let co0 = t * CO_TILE;
    let kk = p.k * p.k;
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var ci = 0u; ci < p.cin; ci++) {
        let xbase = (s * p.cin + ci) * p.ih * p.iw;
        for (var ky = 0u; ky < p.k; ky++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            if (iy < 0 || iy >= i32(p.ih)) {
                continue;
            }
            for (var kx = 0u; kx < p.k; kx++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (ix < 0 || ix >= i32(p.iw)) {
                    continue;
                }
                let xv = x[xbase + u32(iy) * p.iw + u32(ix)];
                let tap = ci * kk + ky * p.k + kx;
                for (var j = 0u; j < CO_TILE; j++) {
                    let co = co0 + j;
                    if (co < p.cout) {
                        acc[j] += xv * w[co * p.cin * kk + tap];
                    }
                }
            }
        }
    }
    for (var j = 0u; j < CO_TILE; j++) {
        let co = co0 + j;
        if (co < p.cout) {
            y[(s * p.cout + co) * plane + pos] = acc[j];
        }
    }
}
