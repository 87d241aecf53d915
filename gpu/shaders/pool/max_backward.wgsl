// Backward of the 2x2 max-pool: each output gradient goes to the first
// maximum of its window in row-major order; one invocation per input
// element, zero where no gradient arrives (including a leftover row or column).

struct Params { planes: u32, ih: u32, iw: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> da: array<f32>;
@group(0) @binding(3) var<storage, read_write> dh: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let iplane = p.ih * p.iw;
    if (i >= p.planes * iplane) {
        return;
    }
    let ix = i % p.iw;
    let iy = (i / p.iw) % p.ih;
    let plane = i / iplane;
    let oh = p.ih / 2u;
    let ow = p.iw / 2u;
    let oy = iy / 2u;
    let ox = ix / 2u;
    if (oy >= oh || ox >= ow) {
        dh[i] = 0.0;
        return;
    }
    let b = plane * iplane + 2u * oy * p.iw + 2u * ox;
    let xs = array<f32, 4>(h[b], h[b + 1u], h[b + p.iw], h[b + p.iw + 1u]);
    var best = 0u;
    for (var t = 1u; t < 4u; t++) {
        if (xs[t] > xs[best]) {
            best = t;
        }
    }
    let me = (iy % 2u) * 2u + ix % 2u;
    dh[i] = select(0.0, da[(plane * oh + oy) * ow + ox], me == best);
}
