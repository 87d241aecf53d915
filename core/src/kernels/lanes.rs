//! f32 vectors for the direct kernels (depthwise, pointwise, 3x3): a portable
//! eight-lane instantiation over `wide::f32x8` and, with the `std` feature on
//! x86_64, AVX2 + FMA (eight lanes) and AVX-512F (sixteen lanes) selected at
//! run time. Kernels are written once, generic over [`Vf`], and instantiated
//! inside `#[target_feature]` functions for AVX2 and AVX-512.

use wide::f32x8;

/// Lanes per vector of the eight-lane instantiations.
pub(crate) const L: usize = 8;

/// Lanes of the widest instantiation: layouts padded to a multiple of it
/// suit every instantiation.
pub(crate) const MAX_LANES: usize = 16;

/// `v` rounded up to a multiple of `m`.
pub(crate) fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

/// The vector operations the direct kernels need.
pub(crate) trait Vf: Copy {
    /// Lanes per vector: [`L`], or 16 for AVX-512.
    const LANES: usize = L;
    fn zero() -> Self;
    fn splat(v: f32) -> Self;
    /// # Safety
    /// `p..p + LANES` is readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p..p + LANES` is writable.
    unsafe fn store(self, p: *mut f32);
    /// Adds the lanes, folded to eight (lane `i` and `i + 8` summed first),
    /// onto the eight floats at `p`.
    ///
    /// # Safety
    /// `p..p + 8` is readable and writable.
    #[inline(always)]
    unsafe fn add_to8(self, p: *mut f32) {
        unsafe { Self::add(Self::load(p), self).store(p) }
    }
    /// `a * b + c`.
    fn fma(a: Self, b: Self, c: Self) -> Self;
    fn add(a: Self, b: Self) -> Self;
    /// Sum of the lanes, in a fixed order.
    fn sum(self) -> f32;
    /// The even and the odd elements of the 16 elements `a, b`.
    fn deinterleave(a: Self, b: Self) -> (Self, Self);
    /// Inverse of [`Vf::deinterleave`].
    fn interleave(e: Self, o: Self) -> (Self, Self);
}

/// Copies `len` floats from `src` to `dst` (not overlapping) in vectors,
/// touching nothing outside `dst..dst + len`.
///
/// # Safety
/// Both ranges are valid.
#[inline(always)]
pub(crate) unsafe fn copy<V: Vf>(src: *const f32, dst: *mut f32, len: usize) {
    if len < V::LANES {
        for i in 0..len {
            unsafe { *dst.add(i) = *src.add(i) };
        }
        return;
    }
    let mut i = 0;
    while i + V::LANES <= len {
        unsafe { V::load(src.add(i)).store(dst.add(i)) };
        i += V::LANES;
    }
    if i < len {
        // The last vector overlaps the previous one.
        unsafe { V::load(src.add(len - V::LANES)).store(dst.add(len - V::LANES)) };
    }
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
    #[inline(always)]
    fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        let (a, b) = (a.to_array(), b.to_array());
        let e = core::array::from_fn(|i| if i < 4 { a[2 * i] } else { b[2 * i - 8] });
        let o = core::array::from_fn(|i| if i < 4 { a[2 * i + 1] } else { b[2 * i - 7] });
        (f32x8::from(e), f32x8::from(o))
    }
    #[inline(always)]
    fn interleave(e: Self, o: Self) -> (Self, Self) {
        let (e, o) = (e.to_array(), o.to_array());
        let a = core::array::from_fn(|i| if i % 2 == 0 { e[i / 2] } else { o[i / 2] });
        let b = core::array::from_fn(|i| {
            if i % 2 == 0 {
                e[4 + i / 2]
            } else {
                o[4 + i / 2]
            }
        });
        (f32x8::from(a), f32x8::from(b))
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
        #[inline(always)]
        fn deinterleave(a: Self, b: Self) -> (Self, Self) {
            unsafe {
                // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6], then the
                // 64-bit pairs reordered 0, 2, 1, 3.
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a.0, b.0);
                let o = _mm256_shuffle_ps::<0b11_01_11_01>(a.0, b.0);
                let fix = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                (Avx(fix(e)), Avx(fix(o)))
            }
        }
        #[inline(always)]
        fn interleave(e: Self, o: Self) -> (Self, Self) {
            unsafe {
                let lo = _mm256_unpacklo_ps(e.0, o.0);
                let hi = _mm256_unpackhi_ps(e.0, o.0);
                (
                    Avx(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                    Avx(_mm256_permute2f128_ps::<0x31>(lo, hi)),
                )
            }
        }
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use avx512::Avx512;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx512 {
    use core::arch::x86_64::*;

    /// AVX-512F lanes (sixteen); only used inside functions compiled with `avx512f`.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    impl super::Vf for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only instantiated in functions enabling avx512f.
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn add_to8(self, p: *mut f32) {
            unsafe {
                let lo = _mm512_castps512_ps256(self.0);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
                let v = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_add_ps(lo, hi));
                _mm256_storeu_ps(p, v);
            }
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        fn add(a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(a.0, b.0) })
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            let mut a = [0.0f32; 16];
            unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self.0) };
            a.iter().sum()
        }
        #[inline(always)]
        fn deinterleave(a: Self, b: Self) -> (Self, Self) {
            unsafe {
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                (
                    Avx512(_mm512_permutex2var_ps(a.0, even, b.0)),
                    Avx512(_mm512_permutex2var_ps(a.0, odd, b.0)),
                )
            }
        }
        #[inline(always)]
        fn interleave(e: Self, o: Self) -> (Self, Self) {
            unsafe {
                let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                let hi =
                    _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                (
                    Avx512(_mm512_permutex2var_ps(e.0, lo, o.0)),
                    Avx512(_mm512_permutex2var_ps(e.0, hi, o.0)),
                )
            }
        }
    }
}

/// Whether this CPU runs the AVX-512F instantiation.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
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
