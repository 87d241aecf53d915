//! Reference CPU kernels, forward and backward side by side, NCHW f32.
//! Each is checked against finite differences in the tests.

pub mod batchnorm;
pub mod conv;
pub(crate) mod conv3x3;
pub mod depthwise;
pub(crate) mod gemm;
pub(crate) mod lanes;
pub mod linear;
pub mod loss;
pub mod pool;
pub(crate) mod simd;

use alloc::vec::Vec;

/// `c[m x n] = a[m x k] * b[k x n]`, row-major and contiguous, through the
/// GEMM the convolution kernels call, with the rows of `c` split over the
/// worker threads. `sprout bench` times it as the machine's GEMM peak.
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let parts = crate::par::threads().min(m).max(1);
    let cp = crate::par::SharedMut::new(c);
    crate::par::for_each(parts, |i| {
        let rows = crate::par::part(m, parts, i);
        // SAFETY: the row ranges of the parts are disjoint and inside `c`.
        let cs = unsafe { cp.slice(rows.start * n, rows.len() * n) };
        gemm::gemm(
            rows.len(),
            n,
            k,
            1.0,
            &a[rows.start * k..rows.end * k],
            false,
            b,
            false,
            0.0,
            cs,
        );
    });
}

/// Per-worker scratch buffers, grown on demand and reused across calls so the
/// hot loops never allocate after the first batch.
#[derive(Default, Clone, Debug)]
pub(crate) struct WorkerScratch {
    /// An im2col matrix or other per-sample temporary.
    pub(crate) col: Vec<f32>,
    /// A per-worker accumulator (weight gradients, channel sums).
    pub(crate) acc: Vec<f32>,
}

impl WorkerScratch {
    pub(crate) fn ensure_col(&mut self, len: usize) {
        if self.col.len() < len {
            self.col.resize(len, 0.0);
        }
    }
    pub(crate) fn ensure_acc(&mut self, len: usize) {
        if self.acc.len() < len {
            self.acc.resize(len, 0.0);
        }
    }
}

/// Scratch for every worker of the kernels' data-parallel loops.
#[derive(Clone, Debug)]
pub struct Scratch {
    pub(crate) workers: Vec<WorkerScratch>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// One empty scratch per worker thread, grown on first use.
    pub fn new() -> Self {
        let mut workers = Vec::new();
        workers.resize_with(crate::par::threads(), WorkerScratch::default);
        Scratch { workers }
    }

    /// Sums the accumulators of the workers that `par::for_each_part(n, ..)` used into `out`.
    pub(crate) fn reduce_acc(&self, n: usize, out: &mut [f32]) {
        let parts = self.workers.len().min(n).max(1);
        out.copy_from_slice(&self.workers[0].acc[..out.len()]);
        for w in &self.workers[1..parts] {
            for (o, a) in out.iter_mut().zip(&w.acc) {
                *o += *a;
            }
        }
    }
}
