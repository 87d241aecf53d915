// Partial kernel gradient of the depthwise 3x3 conv (pad 1): one invocation
// per (channel, chunk of the batch's output rows) accumulates all 9 taps,
// reading 3 input values per kernel row and output pixel (S = 2) or
// sliding them along the row (S = 1); reduce.wgsl sums the chunks.

struct Params {
    n: u32, c: u32, ih: u32, iw: u32,
    oh: u32, ow: u32, chunk_rows: u32, chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;

override WG: u32 = 64u;
// Stride: 1 or 2.
override S: u32 = 1u;

// x at column ix of the row starting at `row` (zero outside the image).
fn at(row: u32, ok: bool, ix: i32) -> f32 {
    let v = x[row + u32(clamp(ix, 0, i32(p.iw) - 1))];
    return select(0.0, v, ok && ix >= 0 && ix < i32(p.iw));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.c * p.chunks) {
        return;
    }
    let ch = i / p.chunks;
    let chunk = i % p.chunks;
    let rows = p.n * p.oh;
    let r0 = chunk * p.chunk_rows;
    let r1 = min(r0 + p.chunk_rows, rows);
    let iplane = p.ih * p.iw;
    let oplane = p.oh * p.ow;
    let hl = i32(p.ih) - 1;
    var a0 = vec3<f32>(0.0);
    var a1 = vec3<f32>(0.0);
    var a2 = vec3<f32>(0.0);
    var s = r0 / p.oh;
    var oy = r0 % p.oh;
    for (var r = r0; r < r1; r++) {
        let plane = s * p.c + ch;
        let y0 = i32(oy * S) - 1;
        let xb = plane * iplane;
        let q0 = xb + u32(clamp(y0, 0, hl)) * p.iw;
        let q1 = xb + u32(clamp(y0 + 1, 0, hl)) * p.iw;
        let q2 = xb + u32(clamp(y0 + 2, 0, hl)) * p.iw;
        let k0 = y0 >= 0 && y0 <= hl;
        let k1 = y0 + 1 >= 0 && y0 + 1 <= hl;
        let k2 = y0 + 2 >= 0 && y0 + 2 <= hl;
        let drow = plane * oplane + oy * p.ow;
        // Columns ox * S - 1 + (0, 1, 2) of the three input rows.
        var w0 = vec3<f32>(0.0, 0.0, at(q0, k0, 0));
        var w1 = vec3<f32>(0.0, 0.0, at(q1, k1, 0));
        var w2 = vec3<f32>(0.0, 0.0, at(q2, k2, 0));
        for (var ox = 0u; ox < p.ow; ox++) {
            let ix = i32(ox * S) + 1;
            if (S == 1u) {
                w0 = vec3<f32>(w0.yz, at(q0, k0, ix));
                w1 = vec3<f32>(w1.yz, at(q1, k1, ix));
                w2 = vec3<f32>(w2.yz, at(q2, k2, ix));
            } else {
                w0 = vec3<f32>(at(q0, k0, ix - 2), at(q0, k0, ix - 1), at(q0, k0, ix));
                w1 = vec3<f32>(at(q1, k1, ix - 2), at(q1, k1, ix - 1), at(q1, k1, ix));
                w2 = vec3<f32>(at(q2, k2, ix - 2), at(q2, k2, ix - 1), at(q2, k2, ix));
            }
            let d = dy[drow + ox];
            a0 += d * w0;
            a1 += d * w1;
            a2 += d * w2;
        }
        oy++;
        if (oy == p.oh) {
            oy = 0u;
            s++;
        }
    }
    let b = i * 9u;
    part[b] = a0.x;
    part[b + 1u] = a0.y;
    part[b + 2u] = a0.z;
    part[b + 3u] = a1.x;
    part[b + 4u] = a1.y;
    part[b + 5u] = a1.z;
    part[b + 6u] = a2.x;
    part[b + 7u] = a2.y;
    part[b + 8u] = a2.z;
}
