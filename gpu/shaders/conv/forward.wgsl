// y = conv(x, w) for stride 1 and K = 1 or 3 (NCHW, groups 1, no bias), w
// packed by pack.wgsl as [ci][ky][kx][co] in vec4s of output channels. One
// invocation computes 4 consecutive output pixels of PY rows for 8 output
// channels: per input row and kernel row it loads 4 + K - 1 inputs per
// pixel row and 2 vec4 weights per tap, and accumulates outer products in
// matrices (column = channel, component = pixel), which stay in registers
// where an array indexed in a loop may not. Also the stride-1 input
// gradient (pack.wgsl flips the kernel, the pad becomes K - 1 - pad).

struct Params {
    n: u32, cin: u32, cout: u32, pad: i32,
    ih: u32, iw: u32, oh: u32, ow: u32,
    tiles_y: u32, tiles_x: u32, cout4: u32, co_tiles: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;
// Kernel size: 1 or 3.
override K: u32 = 3u;
// Output rows per invocation: 1, 2 or 4.
override PY: u32 = 2u;

fn outer(v: vec4<f32>, c: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(v * c.x, v * c.y, v * c.z, v * c.w);
}

// Inputs of one row under the K taps of 4 consecutive outputs.
struct Taps { t0: vec4<f32>, t1: vec4<f32>, t2: vec4<f32> }

fn taps(row: u32, ok: bool, ca: vec4<u32>, oka: vec4<bool>, cb: vec2<u32>, okb: vec2<bool>) -> Taps {
    let a = select(vec4<f32>(0.0), vec4<f32>(x[row + ca.x], x[row + ca.y], x[row + ca.z], x[row + ca.w]), oka & vec4<bool>(ok));
    var t = Taps(a, a, a);
    if (K == 3u) {
        let b = select(vec2<f32>(0.0), vec2<f32>(x[row + cb.x], x[row + cb.y]), okb & vec2<bool>(ok));
        t.t1 = vec4<f32>(a.yzw, b.x);
        t.t2 = vec4<f32>(a.zw, b);
    }
    return t;
}

fn store(m: mat4x4<f32>, oy: u32, ox0: u32, s: u32, co0: u32) {
    if (oy >= p.oh) {
        return;
    }
    let plane = p.oh * p.ow;
    let base = s * p.cout * plane + oy * p.ow + ox0;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + c;
        if (co < p.cout) {
            let v = m[c];
            let b = base + co * plane;
            if (ox0 < p.ow) { y[b] = v.x; }
            if (ox0 + 1u < p.ow) { y[b + 1u] = v.y; }
            if (ox0 + 2u < p.ow) { y[b + 2u] = v.z; }
            if (ox0 + 3u < p.ow) { y[b + 3u] = v.w; }
        }
    }
}

// The 2 vec4s of output channels of the K taps of one kernel row.
struct Weights { a0: vec4<f32>, b0: vec4<f32>, a1: vec4<f32>, b1: vec4<f32>, a2: vec4<f32>, b2: vec4<f32> }

fn weights(wb: u32) -> Weights {
    var v = Weights();
    v.a0 = w[wb];
    v.b0 = w[wb + 1u];
    if (K == 3u) {
        v.a1 = w[wb + p.cout4];
        v.b1 = w[wb + p.cout4 + 1u];
        v.a2 = w[wb + 2u * p.cout4];
        v.b2 = w[wb + 2u * p.cout4 + 1u];
    }
    return v;
}

// One kernel row's contribution to one output row.
fn accumulate(m0: ptr<function, mat4x4<f32>>, m1: ptr<function, mat4x4<f32>>, t: Taps, v: Weights) {
    *m0 += outer(t.t0, v.a0);
    *m1 += outer(t.t0, v.b0);
    if (K == 3u) {
        *m0 += outer(t.t1, v.a1) + outer(t.t2, v.a2);
        *m1 += outer(t.t1, v.b1) + outer(t.t2, v.b2);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let blocks = p.tiles_y * p.tiles_x;
    let per_co = p.n * blocks;
    if (i >= p.co_tiles * per_co) {
        return;
    }
    let cb0 = (i / per_co) * 2u;
    let r = i % per_co;
    let s = r / blocks;
    let b = r % blocks;
    let oy0 = (b / p.tiles_x) * PY;
    let ox0 = (b % p.tiles_x) * 4u;
    let ix0 = i32(ox0) - p.pad;
    let last = i32(p.iw) - 1;
    let ia = vec4<i32>(ix0) + vec4<i32>(0, 1, 2, 3);
    let ib = vec2<i32>(ix0) + vec2<i32>(4, 5);
    let ca = vec4<u32>(clamp(ia, vec4<i32>(0), vec4<i32>(last)));
    let cb = vec2<u32>(clamp(ib, vec2<i32>(0), vec2<i32>(last)));
    let oka = ia >= vec4<i32>(0) & ia <= vec4<i32>(last);
    let okb = ib >= vec2<i32>(0) & ib <= vec2<i32>(last);
    let iplane = p.ih * p.iw;
    let hl = i32(p.ih) - 1;
    var m00 = mat4x4<f32>();
    var m01 = mat4x4<f32>();
    var m10 = mat4x4<f32>();
    var m11 = mat4x4<f32>();
    var m20 = mat4x4<f32>();
    var m21 = mat4x4<f32>();
    var m30 = mat4x4<f32>();
    var m31 = mat4x4<f32>();
    for (var ci = 0u; ci < p.cin; ci++) {
        let xb = (s * p.cin + ci) * iplane;
        for (var ky = 0u; ky < K; ky++) {
            let v = weights((ci * K + ky) * K * p.cout4 + cb0);
            let iy = i32(oy0 + ky) - p.pad;
            accumulate(&m00, &m01, taps(xb + u32(clamp(iy, 0, hl)) * p.iw, iy >= 0 && iy <= hl, ca, oka, cb, okb), v);
            if (PY >= 2u) {
                let y1 = iy + 1;
                accumulate(&m10, &m11, taps(xb + u32(clamp(y1, 0, hl)) * p.iw, y1 >= 0 && y1 <= hl, ca, oka, cb, okb), v);
            }
            if (PY == 4u) {
                let y2 = iy + 2;
                accumulate(&m20, &m21, taps(xb + u32(clamp(y2, 0, hl)) * p.iw, y2 >= 0 && y2 <= hl, ca, oka, cb, okb), v);
                let y3 = iy + 3;
                accumulate(&m30, &m31, taps(xb + u32(clamp(y3, 0, hl)) * p.iw, y3 >= 0 && y3 <= hl, ca, oka, cb, okb), v);
            }
        }
    }
    let co0 = cb0 * 4u;
    store(m00, oy0, ox0, s, co0);
    store(m01, oy0, ox0, s, co0 + 4u);
    if (PY >= 2u) {
        store(m10, oy0 + 1u, ox0, s, co0);
        store(m11, oy0 + 1u, ox0, s, co0 + 4u);
    }
    if (PY == 4u) {
        store(m20, oy0 + 2u, ox0, s, co0);
        store(m21, oy0 + 2u, ox0, s, co0 + 4u);
        store(m30, oy0 + 3u, ox0, s, co0);
        store(m31, oy0 + 3u, ox0, s, co0 + 4u);
    }
}
