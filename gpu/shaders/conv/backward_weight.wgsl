// Partial dw for stride 1 and K = 1 or 3: one invocation accumulates, for
// one kernel row ky, 8 output channels x 8 input channels x K taps over a
// chunk of the batch's output rows, sliding a window of K input vec4 pairs
// (one value per input channel) along each row, in matrices (column = input
// channel, component = output channel) that stay in registers. It writes
// its tile to its own slot of `part`; reduce.wgsl sums the chunks.

struct Params {
    n: u32, cin: u32, cout: u32, pad: i32,
    ih: u32, iw: u32, oh: u32, ow: u32,
    chunk_rows: u32, chunks: u32, ci_tiles: u32, co_tiles: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;

override WG: u32 = 64u;
// Kernel size: 1 or 3.
override K: u32 = 3u;

fn outer(v: vec4<f32>, c: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(v * c.x, v * c.y, v * c.z, v * c.w);
}

// The 4 input channels at column ix of the rows at `xa` (zero outside).
fn col(xa: vec4<u32>, ix: i32) -> vec4<f32> {
    let c = u32(clamp(ix, 0, i32(p.iw) - 1));
    let v = vec4<f32>(x[xa.x + c], x[xa.y + c], x[xa.z + c], x[xa.w + c]);
    return select(vec4<f32>(0.0), v, ix >= 0 && ix < i32(p.iw));
}

fn put(base: u32, m: mat4x4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        let v = m[c];
        part[base + c * 4u] = v.x;
        part[base + c * 4u + 1u] = v.y;
        part[base + c * 4u + 2u] = v.z;
        part[base + c * 4u + 3u] = v.w;
    }
}

// Accumulators of one tap: output channel blocks 0 / 1 x input channel blocks 0 / 1.
struct Tap { m00: mat4x4<f32>, m01: mat4x4<f32>, m10: mat4x4<f32>, m11: mat4x4<f32> }

fn add(t: ptr<function, Tap>, d0: vec4<f32>, d1: vec4<f32>, xa: vec4<f32>, xb: vec4<f32>) {
    (*t).m00 += outer(d0, xa);
    (*t).m01 += outer(d0, xb);
    (*t).m10 += outer(d1, xa);
    (*t).m11 += outer(d1, xb);
}

// Tile layout: [kx][output block][input block][input channel][output channel].
fn put_tap(base: u32, t: Tap) {
    put(base, t.m00);
    put(base + 16u, t.m01);
    put(base + 32u, t.m10);
    put(base + 48u, t.m11);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let tiles = p.co_tiles * p.ci_tiles * K;
    if (i >= tiles * p.chunks) {
        return;
    }
    let tile = i / p.chunks;
    let chunk = i % p.chunks;
    let ky = tile % K;
    let ct = tile / K;
    let co0 = (ct / p.ci_tiles) * 8u;
    let ci0 = (ct % p.ci_tiles) * 8u;
    let rows = p.n * p.oh;
    let r0 = chunk * p.chunk_rows;
    let r1 = min(r0 + p.chunk_rows, rows);
    let oplane = p.oh * p.ow;
    let iplane = p.ih * p.iw;
    // Channels past cin / cout read the last one; their sums are never reduced.
    let l4 = vec4<u32>(0u, 1u, 2u, 3u);
    let cia = min(vec4<u32>(ci0) + l4, vec4<u32>(p.cin - 1u)) * iplane;
    let cib = min(vec4<u32>(ci0 + 4u) + l4, vec4<u32>(p.cin - 1u)) * iplane;
    let coa = min(vec4<u32>(co0) + l4, vec4<u32>(p.cout - 1u)) * oplane;
    let cob = min(vec4<u32>(co0 + 4u) + l4, vec4<u32>(p.cout - 1u)) * oplane;
    var t0 = Tap();
    var t1 = Tap();
    var t2 = Tap();
    var s = r0 / p.oh;
    var oy = r0 % p.oh;
    for (var r = r0; r < r1; r++) {
        let iy = i32(oy + ky) - p.pad;
        if (iy >= 0 && iy < i32(p.ih)) {
            let row = vec4<u32>(s * p.cin * iplane + u32(iy) * p.iw);
            let xa = cia + row;
            let xb = cib + row;
            let drow = vec4<u32>(s * p.cout * oplane + oy * p.ow);
            let da = coa + drow;
            let db = cob + drow;
            // At ox, the windows *0 / *1 / *2 hold the inputs at ox - pad + 0 / 1 / 2.
            var a1 = col(xa, -p.pad);
            var b1 = col(xb, -p.pad);
            var a2 = col(xa, 1 - p.pad);
            var b2 = col(xb, 1 - p.pad);
            for (var ox = 0u; ox < p.ow; ox++) {
                let d0 = vec4<f32>(dy[da.x + ox], dy[da.y + ox], dy[da.z + ox], dy[da.w + ox]);
                let d1 = vec4<f32>(dy[db.x + ox], dy[db.y + ox], dy[db.z + ox], dy[db.w + ox]);
                if (K == 3u) {
                    let a0 = a1;
                    let b0 = b1;
                    a1 = a2;
                    b1 = b2;
                    a2 = col(xa, i32(ox) + 2 - p.pad);
                    b2 = col(xb, i32(ox) + 2 - p.pad);
                    add(&t0, d0, d1, a0, b0);
                    add(&t1, d0, d1, a1, b1);
                    add(&t2, d0, d1, a2, b2);
                } else {
                    add(&t0, d0, d1, col(xa, i32(ox) - p.pad), col(xb, i32(ox) - p.pad));
                }
            }
        }
        oy++;
        if (oy == p.oh) {
            oy = 0u;
            s++;
        }
    }
    let base = i * 64u * K;
    put_tap(base, t0);
    if (K == 3u) {
        put_tap(base + 64u, t1);
        put_tap(base + 128u, t2);
    }
}
