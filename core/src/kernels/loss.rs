//! Softmax cross-entropy, mean over the batch.

/// Loss and gradient of the mean softmax cross-entropy of `n` rows of logits.
/// Writes `dlogits = (softmax - onehot) / n` and returns `(mean loss, correct)`,
/// where `correct` counts rows whose arg-max is the label.
pub fn softmax_cross_entropy(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
) -> (f32, usize) {
    let mut total = 0.0f64;
    let mut correct = 0;
    for r in 0..n {
        let z = &logits[r * classes..(r + 1) * classes];
        let d = &mut dlogits[r * classes..(r + 1) * classes];
        let label = labels[r] as usize;
        let (mut arg, mut max) = (0, f32::NEG_INFINITY);
        for (i, &v) in z.iter().enumerate() {
            if v > max {
                max = v;
                arg = i;
            }
        }
        correct += usize::from(arg == label);
        let mut sum = 0.0f32;
        for (di, &v) in d.iter_mut().zip(z) {
            *di = libm::expf(v - max);
            sum += *di;
        }
        total += (libm::logf(sum) + max - z[label]) as f64;
        let inv = 1.0 / (sum * n as f32);
        for di in d.iter_mut() {
            *di *= inv;
        }
        d[label] -= 1.0 / n as f32;
    }
    ((total / n as f64) as f32, correct)
}

/// Per-row losses (for brute-force evaluation), without gradients.
pub fn cross_entropy_rows(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    out: &mut [f32],
) {
    for r in 0..n {
        let z = &logits[r * classes..(r + 1) * classes];
        let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = z.iter().map(|&v| libm::expf(v - max)).sum();
        out[r] = libm::logf(sum) + max - z[labels[r] as usize];
    }
}
