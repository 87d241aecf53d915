//! Fully connected layer: `out = f W^T + b`, `W` is `[classes, features]`.

use super::gemm::gemm;

/// Forward for `n` rows of `features`.
pub fn linear_forward(
    n: usize,
    features: usize,
    classes: usize,
    f: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    for r in 0..n {
        out[r * classes..(r + 1) * classes].copy_from_slice(&b[..classes]);
    }
    gemm(n, classes, features, 1.0, f, false, w, true, 1.0, out);
}

/// Backward: `dw`, `db` overwritten; `df` overwritten when given.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    n: usize,
    features: usize,
    classes: usize,
    f: &[f32],
    w: &[f32],
    dout: &[f32],
    df: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    gemm(classes, features, n, 1.0, dout, true, f, false, 0.0, dw);
    db[..classes].fill(0.0);
    for r in 0..n {
        for (d, g) in db.iter_mut().zip(&dout[r * classes..(r + 1) * classes]) {
            *d += *g;
        }
    }
    if let Some(df) = df {
        linear_backward_input(n, features, classes, w, dout, df);
    }
}

/// The input gradient alone: `df = dout W`, overwritten.
pub fn linear_backward_input(
    n: usize,
    features: usize,
    classes: usize,
    w: &[f32],
    dout: &[f32],
    df: &mut [f32],
) {
    gemm(n, features, classes, 1.0, dout, false, w, false, 0.0, df);
}
