// dw = sum over samples and output positions of dy * x: one workgroup per
// weight, its lanes striding over batch x space, then a workgroup sum (no
// float atomics).

struct Params {
    n: u32, cin: u32, cout: u32, k: u32,
    stride: u32, pad: u32, ih: u32, iw: u32,
    oh: u32, ow: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let kk = p.k * p.k;
    let total = p.cout * p.cin * kk;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    let live = g < total;
    let gi = select(0u, g, live);
    let kx = gi % p.k;
    let ky = (gi / p.k) % p.k;
    let ci = (gi / kk) % p.cin;
    let co = gi / (kk * p.cin);
    let oplane = p.oh * p.ow;
    let count = select(0u, p.n * oplane, live);
    var acc = 0.0;
    for (var j = lid; j < count; j += LANES) {
        let s = j / oplane;
        let pos = j % oplane;
        let oy = pos / p.ow;
        let ox = pos % p.ow;
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        let ix = i32(ox * p.stride + kx) - i32(p.pad);
        if (iy >= 0 && iy < i32(p.ih) && ix >= 0 && ix < i32(p.iw)) {
            acc += dy[(s * p.cout + co) * oplane + pos]
                * x[((s * p.cin + ci) * p.ih + u32(iy)) * p.iw + u32(ix)];
        }
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        dw[g] = sum;
    }
}
