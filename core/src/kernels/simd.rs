//! 8-lane f32 helpers over slices for the memory-bound kernels.

use wide::f32x8;

pub const W: usize = 8;

#[inline(always)]
pub fn load(s: &[f32], i: usize) -> f32x8 {
    let a: [f32; W] = s[i..i + W].try_into().expect("8 lanes");
    f32x8::from(a)
}

#[inline(always)]
pub fn store(s: &mut [f32], i: usize, v: f32x8) {
    s[i..i + W].copy_from_slice(&v.to_array());
}

/// `g` where `a > 0`, else 0 (the ReLU mask applied to a gradient).
#[inline(always)]
pub fn relu_mask(a: f32x8, g: f32x8) -> f32x8 {
    a.simd_gt(f32x8::ZERO) & g
}

/// Sum of `f(i)` over `0..n` in 8 lanes, with `tail(i)` for the last `n % 8` indices.
#[inline(always)]
pub fn sum(n: usize, f: impl Fn(usize) -> f32x8, tail: impl Fn(usize) -> f32) -> f32 {
    let m = n / W * W;
    let mut acc = f32x8::ZERO;
    let mut i = 0;
    while i < m {
        acc += f(i);
        i += W;
    }
    let mut t = acc.reduce_add();
    for j in m..n {
        t += tail(j);
    }
    t
}

/// Two sums of [`sum`] in one pass: `(sum(n, f, tf), sum(n, g, tg))`, each
/// added in the same order as by itself (the results are identical), with
/// the two dependency chains interleaved.
#[inline(always)]
pub fn sum2(
    n: usize,
    f: impl Fn(usize) -> f32x8,
    tf: impl Fn(usize) -> f32,
    g: impl Fn(usize) -> f32x8,
    tg: impl Fn(usize) -> f32,
) -> (f32, f32) {
    let m = n / W * W;
    let (mut a, mut b) = (f32x8::ZERO, f32x8::ZERO);
    let mut i = 0;
    while i < m {
        a += f(i);
        b += g(i);
        i += W;
    }
    let (mut s, mut t) = (a.reduce_add(), b.reduce_add());
    for j in m..n {
        s += tf(j);
    }
    for j in m..n {
        t += tg(j);
    }
    (s, t)
}

/// `out[i] = f(i)` in 8 lanes, `tail(i)` for the remainder.
#[inline(always)]
pub fn map(out: &mut [f32], f: impl Fn(usize) -> f32x8, tail: impl Fn(usize) -> f32) {
    let n = out.len();
    let m = n / W * W;
    let mut i = 0;
    while i < m {
        store(out, i, f(i));
        i += W;
    }
    for j in m..n {
        out[j] = tail(j);
    }
}
