// Kernel gradient of the depthwise 3x3 conv: one workgroup per (channel,
// tap), lanes striding over batch x output positions, then a workgroup sum.

struct Params {
    n: u32, c: u32, stride: u32, ih: u32,
    iw: u32, oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dk: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let live = g < p.c * 9u;
    let gi = select(0u, g, live);
    let ch = gi / 9u;
    let ky = (gi % 9u) / 3u;
    let kx = gi % 3u;
    let oplane = p.oh * p.ow;
    let count = select(0u, p.n * oplane, live);
    var acc = 0.0;
    for (var j = lid; j < count; j += LANES) {
        let s = j / oplane;
        let pos = j % oplane;
        let oy = pos / p.ow;
        let ox = pos % p.ow;
        let iy = i32(oy * p.stride + ky) - 1;
        let ix = i32(ox * p.stride + kx) - 1;
        if (iy >= 0 && iy < i32(p.ih) && ix >= 0 && ix < i32(p.iw)) {
            let plane = s * p.c + ch;
            acc += dy[plane * oplane + pos] * x[(plane * p.ih + u32(iy)) * p.iw + u32(ix)];
        }
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        dk[g] = sum;
    }
}
