//! Data parallelism: with the `std` feature work is spread over rayon's
//! thread pool; without it the same closures run in sequence.

use core::ops::Range;

/// Number of workers parallel loops split into.
pub fn threads() -> usize {
    #[cfg(feature = "std")]
    {
        rayon::current_num_threads().max(1)
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// The `i`-th of `parts` contiguous, nearly equal ranges covering `0..n`.
pub fn part(n: usize, parts: usize, i: usize) -> Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    start..start + len
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel where possible.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if n > 1 {
            (0..n).into_par_iter().for_each(f);
            return;
        }
    }
    (0..n).for_each(f);
}

/// Splits `0..n` into one contiguous range per worker state in `states` and
/// runs `f(range, state)` for each, in parallel where possible. Use it to give
/// every worker its own scratch buffers or gradient accumulators.
pub fn for_each_part<S: Send>(
    n: usize,
    states: &mut [S],
    f: impl Fn(Range<usize>, &mut S) + Sync + Send,
) {
    let parts = states.len().min(n).max(1);
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if parts > 1 {
            states[..parts]
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, s)| f(part(n, parts, i), s));
            return;
        }
    }
    for (i, s) in states[..parts].iter_mut().enumerate() {
        f(part(n, parts, i), s);
    }
}

/// A raw pointer that may be shared between workers which write disjoint
/// elements (for example, different channels of an NCHW tensor).
#[derive(Clone, Copy, Debug)]
pub struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn new(s: &mut [f32]) -> Self {
        SharedMut(s.as_mut_ptr())
    }
    /// # Safety
    /// `i` is in bounds of the slice this was made from, and no other worker
    /// touches element `i` concurrently.
    #[inline(always)]
    pub unsafe fn write(self, i: usize, v: f32) {
        unsafe { *self.0.add(i) = v }
    }
    /// # Safety
    /// As [`SharedMut::write`]: the range is in bounds and only this worker uses it.
    #[inline(always)]
    pub unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        unsafe { core::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_range() {
        for n in 0..20 {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let r = part(n, parts, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
