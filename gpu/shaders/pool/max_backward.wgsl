// Backward of the 2x2 max-pool: each output gradient goes to the first
// maximum of its window in row-major order. One invocation per window
// (rounded up), writing its 4 input gradients: zero where no gradient
// arrives (including a leftover row or column).

struct Params { planes: u32, ih: u32, iw: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> da: array<f32>;
@group(0) @binding(3) var<storage, read_write> dh: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let wh = (p.ih + 1u) / 2u;
    let ww = (p.iw + 1u) / 2u;
    if (i >= p.planes * wh * ww) {
        return;
    }
    let ox = i % ww;
    let oy = (i / ww) % wh;
    let plane = i / (wh * ww);
    let oh = p.ih / 2u;
    let ow = p.iw / 2u;
    let b = plane * p.ih * p.iw + 2u * oy * p.iw + 2u * ox;
    if (oy < oh && ox < ow) {
        let xs = vec4<f32>(h[b], h[b + 1u], h[b + p.iw], h[b + p.iw + 1u]);
        var best = 0u;
        var top = xs.x;
        if (xs.y > top) { best = 1u; top = xs.y; }
        if (xs.z > top) { best = 2u; top = xs.z; }
        if (xs.w > top) { best = 3u; }
        let g = da[(plane * oh + oy) * ow + ox];
        dh[b] = select(0.0, g, best == 0u);
        dh[b + 1u] = select(0.0, g, best == 1u);
        dh[b + p.iw] = select(0.0, g, best == 2u);
        dh[b + p.iw + 1u] = select(0.0, g, best == 3u);
        return;
    }
    // A window cut by the last row or column: its inputs get no gradient.
    let right = 2u * ox + 1u < p.iw;
    let below = 2u * oy + 1u < p.ih;
    dh[b] = 0.0;
    if (right) { dh[b + 1u] = 0.0; }
    if (below) { dh[b + p.iw] = 0.0; }
    if (right && below) { dh[b + p.iw + 1u] = 0.0; }
}
