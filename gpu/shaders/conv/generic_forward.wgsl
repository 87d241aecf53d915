// y = conv(x, w): NCHW, groups 1, no bias. One invocation computes four
// output channels (one vec4 accumulator, clamped at the last channel) of
// PX_TILE consecutive output pixels in a row, so each loaded weight is used
// PX_TILE times and each input value four times.

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
// Output pixels per invocation along a row (at most 4).
override PX_TILE: u32 = 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let tiles = (p.cout + 3u) / 4u;
    let row_tiles = (p.ow + PX_TILE - 1u) / PX_TILE;
    let per_sample = tiles * p.oh * row_tiles;
    if (i >= p.n * per_sample) {
        return;
    }
    let s = i / per_sample;
    let r = i % per_sample;
    let t = r / (p.oh * row_tiles);
    let oy = (r / row_tiles) % p.oh;
    let ox0 = (r % row_tiles) * PX_TILE;
    let kk = p.k * p.k;
    let last = p.cout - 1u;
    // Weight offsets of the tile's four channels (repeating the last one past cout).
    let wo = vec4<u32>(min(4u * t, last), min(4u * t + 1u, last), min(4u * t + 2u, last), min(4u * t + 3u, last)) * (p.cin * kk);
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var ci = 0u; ci < p.cin; ci++) {
        let xbase = (s * p.cin + ci) * p.ih * p.iw;
        for (var ky = 0u; ky < p.k; ky++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad);
            let row_ok = iy >= 0 && iy < i32(p.ih);
            let xrow = xbase + u32(clamp(iy, 0, i32(p.ih) - 1)) * p.iw;
            for (var kx = 0u; kx < p.k; kx++) {
                let tap = ci * kk + ky * p.k + kx;
                let wv = vec4<f32>(w[wo.x + tap], w[wo.y + tap], w[wo.z + tap], w[wo.w + tap]);
                for (var j = 0u; j < PX_TILE; j++) {
                    let ix = i32((ox0 + j) * p.stride + kx) - i32(p.pad);
                    let ok = row_ok && ix >= 0 && ix < i32(p.iw);
                    let xv = select(0.0, x[xrow + u32(clamp(ix, 0, i32(p.iw) - 1))], ok);
                    acc[j] += xv * wv;
                }
            }
        }
    }
    let plane = p.oh * p.ow;
    for (var j = 0u; j < PX_TILE; j++) {
        let ox = ox0 + j;
        if (ox < p.ow) {
            let base = s * p.cout * plane + oy * p.ow + ox;
            for (var c = 0u; c < 4u; c++) {
                let co = 4u * t + c;
                if (co < p.cout) {
                    y[base + co * plane] = acc[j][c];
                }
            }
        }
    }
}
