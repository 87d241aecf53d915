// dx = conv^T(dy, w): one invocation per input element, gathering every
// output position and tap that read it.

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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let iplane = p.ih * p.iw;
    if (i >= p.n * p.cin * iplane) {
        return;
    }
    let ix = i % p.iw;
    let iy = (i / p.iw) % p.ih;
    let ci = (i / iplane) % p.cin;
    let s = i / (iplane * p.cin);
    let kk = p.k * p.k;
    let oplane = p.oh * p.ow;
    var acc = 0.0;
    for (var ky = 0u; ky < p.k; ky++) {
        let ty = i32(iy + p.pad) - i32(ky);
        if (ty < 0 || u32(ty) % p.stride != 0u) {
            continue;
        }
        let oy = u32(ty) / p.stride;
        if (oy >= p.oh) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let tx = i32(ix + p.pad) - i32(kx);
            if (tx < 0 || u32(tx) % p.stride != 0u) {
                continue;
            }
            let ox = u32(tx) / p.stride;
            if (ox >= p.ow) {
                continue;
            }
            for (var co = 0u; co < p.cout; co++) {
                acc += dy[(s * p.cout + co) * oplane + oy * p.ow + ox]
                    * w[(co * p.cin + ci) * kk + ky * p.k + kx];
            }
        }
    }
    dx[i] = acc;
}
