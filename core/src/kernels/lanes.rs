//! Eight f32 lanes for the direct kernels (depthwise, pointwise): a portable
//! instantiation over `wide::f32x8` and, with the `std` feature on x86_64,
//! AVX2 + FMA selected at run time. Kernels are written once, generic over
//! [`Vf`], and instantiated inside `#[target_feature]` functions for AVX2.

use wide::f32x8;

/// Lanes per vector.
pub(crate) const L: usize = 8;

/// `v` rounded up to a multiple of `m`.
pub(crate) fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

/// The vector operations the direct kernels need.
pub(crate) trait Vf: Copy {
    fn zero() -> Self;
    fn splat(v: f32) -> Self;
    /// # Safety
    /// `p..p + 8` is readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p..p + 8` is writable.
    unsafe fn store(self, p: *mut f32);
    /// `a * b + c`.
    fn fma(a: Self, b: Self, c: Self) -> Self;
    fn add(a: Self, b: Self) -> Self;
    /// Sum of the lanes, in a fixed order.
    fn sum(self) -> f32;
}

impl Vf for f32x8 {
    #[inline(always)]
    fn zero() -> Self {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        f32x8::splat(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        f32x8::from(unsafe { core::ptr::read_unaligned(p as *const [f32; L]) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { core::ptr::write_unaligned(p as *mut [f32; L], self.to_array()) }
    }
    #[inline(always)]
    fn fma(a: Self, b: Self, c: Self) -> Self {
        a * b + c
    }
    #[inline(always)]
    fn add(a: Self, b: Self) -> Self {
        a + b
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        self.to_array().iter().sum()
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use avx::Avx;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx {
    use core::arch::x86_64::*;

    /// AVX2 + FMA lanes; only used inside functions compiled with those features.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx(__m256);

    impl super::Vf for Avx {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only instantiated in functions enabling avx2 and fma.
            Avx(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx(unsafe { _mm256_set1_ps(v) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            Avx(unsafe { _mm256_add_ps(a.0, b.0) })
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            let mut a = [0.0f32; super::L];
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
            a.iter().sum()
        }
    }
}

/// Which instantiation of the kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx2,
}

/// The best instantiation this CPU runs.
pub(crate) fn isa() -> Isa {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Isa::Avx2;
    }
    Isa::Portable
}
