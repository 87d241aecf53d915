//! Safe wrapper over matrixmultiply's f32 GEMM on row-major slices.

/// `c[m x n] = alpha * op(a) * op(b) + beta * c`, every matrix row-major and
/// contiguous. `op(a)` is `m x k`: `a` holds `m x k` rows, or `k x m` when
/// `trans_a`. Likewise `op(b)` is `k x n`, stored `n x k` when `trans_b`.
/// With `beta == 0` the old contents of `c` are ignored.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(
        a.len() >= m * k,
        "gemm: a has {} elements, needs {}",
        a.len(),
        m * k
    );
    assert!(
        b.len() >= k * n,
        "gemm: b has {} elements, needs {}",
        b.len(),
        k * n
    );
    assert!(
        c.len() >= m * n,
        "gemm: c has {} elements, needs {}",
        c.len(),
        m * n
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in &mut c[..m * n] {
            *v *= beta;
        }
        return;
    }
    let (rsa, csa) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the asserts above guarantee every index the strides reach is in bounds.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `c[k x k] = alpha * a^T a` for `a` of `n` rows of `k` (row-major): a
/// Gram matrix, computed in blocks on and above the diagonal (a little over
/// half the work of [`gemm`]) and mirrored below it.
pub fn gram(k: usize, n: usize, alpha: f32, a: &[f32], c: &mut [f32]) {
    assert!(
        a.len() >= n * k && c.len() >= k * k,
        "gram: a has {} elements (needs {}), c {} (needs {})",
        a.len(),
        n * k,
        c.len(),
        k * k
    );
    if n == 0 {
        c[..k * k].fill(0.0);
        return;
    }
    const BLOCK: usize = 128;
    let ks = k as isize;
    for i0 in (0..k).step_by(BLOCK) {
        let rows = BLOCK.min(k - i0);
        for j0 in (i0..k).step_by(BLOCK) {
            let cols = BLOCK.min(k - j0);
            // SAFETY: row i < k and column j < k of the block read a[s * k + i0 + i]
            // and a[s * k + j0 + j] for s < n, and write c[(i0 + i) * k + j0 + j],
            // all in bounds by the assert above.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    n,
                    cols,
                    alpha,
                    a.as_ptr().add(i0),
                    1,
                    ks,
                    a.as_ptr().add(j0),
                    ks,
                    1,
                    0.0,
                    c.as_mut_ptr().add(i0 * k + j0),
                    ks,
                    1,
                );
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            c[i * k + j] = c[j * k + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
    ) -> alloc::vec::Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn matches_naive_in_all_transpositions() {
        let (m, n, k) = (5, 7, 3);
        let a: alloc::vec::Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: alloc::vec::Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let mut c = vec![0.0; m * n];
                gemm(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut c);
                let want = naive(m, n, k, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn threaded_matmul_matches_naive() {
        let (m, n, k) = (37, 19, 23);
        let a: alloc::vec::Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: alloc::vec::Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut c = vec![f32::NAN; m * n];
        super::super::matmul(m, n, k, &a, &b, &mut c);
        for (x, y) in c.iter().zip(&naive(m, n, k, &a, false, &b, false)) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn gram_matches_the_full_product() {
        for (k, n) in [(1, 3), (5, 7), (130, 9), (300, 64), (256, 1), (4, 0)] {
            let a: alloc::vec::Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut want = vec![0.0; k * k];
            gemm(k, k, n, 0.5, &a, true, &a, false, 0.0, &mut want);
            let mut c = vec![f32::NAN; k * k];
            gram(k, n, 0.5, &a, &mut c);
            for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "k {k} n {n} at {i}: {x} vs {y}"
                );
            }
        }
    }
}
