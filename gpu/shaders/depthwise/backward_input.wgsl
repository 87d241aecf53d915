// Input gradient of the depthwise 3x3 conv: one invocation per input element.

struct Params {
    n: u32, c: u32, stride: u32, ih: u32,
    iw: u32, oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let iplane = p.ih * p.iw;
    if (i >= p.n * p.c * iplane) {
        return;
    }
    let ix = i % p.iw;
    let iy = (i / p.iw) % p.ih;
    let plane = i / iplane;
    let ch = plane % p.c;
    let obase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var ky = 0u; ky < 3u; ky++) {
        let ty = i32(iy) + 1 - i32(ky);
        if (ty < 0 || u32(ty) % p.stride != 0u) {
            continue;
        }
        let oy = u32(ty) / p.stride;
        if (oy >= p.oh) {
            continue;
        }
        for (var kx = 0u; kx < 3u; kx++) {
            let tx = i32(ix) + 1 - i32(kx);
            if (tx < 0 || u32(tx) % p.stride != 0u) {
                continue;
            }
            let ox = u32(tx) / p.stride;
            if (ox >= p.ow) {
                continue;
            }
            acc += dy[obase + oy * p.ow + ox] * k[ch * 9u + ky * 3u + kx];
        }
    }
    dx[i] = acc;
}
