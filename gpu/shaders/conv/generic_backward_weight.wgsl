// dw = sum over samples and output positions of dy * x: one workgroup per
// weight, its lanes striding over the output rows of the batch, then a
// workgroup sum (no float atomics).

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
    // Lanes take whole output rows, so the inner loop needs no division.
    let rows = select(0u, p.n * p.oh, live);
    var acc = 0.0;
    for (var r = lid; r < rows; r += LANES) {
        let s = r / p.oh;
        let oy = r % p.oh;
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.ih)) {
            continue;
        }
        let xrow = ((s * p.cin + ci) * p.ih + u32(iy)) * p.iw;
        let drow = (s * p.cout + co) * oplane + oy * p.ow;
        for (var ox = 0u; ox < p.ow; ox++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad);
            if (ix >= 0 && ix < i32(p.iw)) {
                acc += dy[drow + ox] * x[xrow + u32(ix)];
            }
        }
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        dw[g] = sum;
    }
}
