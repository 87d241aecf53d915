// dx = conv^T(dy, w): one invocation gathers, for four input channels (one
// vec4 accumulator, clamped at the last channel) of PX_TILE consecutive input
// pixels in a row, every output position and tap that read them.

struct Params {
    n: u32, cin: u32, cout: u32, k: u32,
    stride: u32, pad: u32, ih: u32, iw: u32,
    oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

override WG: u32 = 64u;
// Input pixels per invocation along a row (at most 4).
override PX_TILE: u32 = 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let tiles = (p.cin + 3u) / 4u;
    let row_tiles = (p.iw + PX_TILE - 1u) / PX_TILE;
    let per_sample = tiles * p.ih * row_tiles;
    if (i >= p.n * per_sample) {
        return;
    }
    let s = i / per_sample;
    let r = i % per_sample;
    let t = r / (p.ih * row_tiles);
    let iy = (r / row_tiles) % p.ih;
    let ix0 = (r % row_tiles) * PX_TILE;
    let kk = p.k * p.k;
    let last = p.cin - 1u;
    // Kernel offsets of the tile's four input channels (repeating the last one past cin).
    let wo = vec4<u32>(min(4u * t, last), min(4u * t + 1u, last), min(4u * t + 2u, last), min(4u * t + 3u, last)) * kk;
    let oplane = p.oh * p.ow;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var ky = 0u; ky < p.k; ky++) {
        let ty = i32(iy + p.pad) - i32(ky);
        if (ty < 0 || u32(ty) % p.stride != 0u || u32(ty) / p.stride >= p.oh) {
            continue;
        }
        let oy = u32(ty) / p.stride;
        for (var kx = 0u; kx < p.k; kx++) {
            for (var co = 0u; co < p.cout; co++) {
                let wb = co * p.cin * kk + ky * p.k + kx;
                let wv = vec4<f32>(w[wb + wo.x], w[wb + wo.y], w[wb + wo.z], w[wb + wo.w]);
                let drow = (s * p.cout + co) * oplane + oy * p.ow;
                for (var j = 0u; j < PX_TILE; j++) {
                    let tx = i32(ix0 + j + p.pad) - i32(kx);
                    let ox = u32(max(tx, 0)) / p.stride;
                    let ok = tx >= 0 && u32(tx) % p.stride == 0u && ox < p.ow;
                    let g = select(0.0, dy[drow + min(ox, p.ow - 1u)], ok);
                    acc[j] += g * wv;
                }
            }
        }
    }
    let iplane = p.ih * p.iw;
    for (var j = 0u; j < PX_TILE; j++) {
        let ix = ix0 + j;
        if (ix < p.iw) {
            let base = s * p.cin * iplane + iy * p.iw + ix;
            for (var c = 0u; c < 4u; c++) {
                let ci = 4u * t + c;
                if (ci < p.cin) {
                    dx[base + ci * iplane] = acc[j][c];
                }
            }
        }
    }
}
