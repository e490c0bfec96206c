//! Vectors of f32 or f64 for each instruction-set path, behind one trait, so that every
//! kernel is written once and compiled per path.
//!
//! A kernel is a generic function over `S: Simd`, marked `#[inline(always)]` all the way
//! down; [`simd_dispatch!`] calls it inside a function compiled for the chosen path's
//! target features, so that the intrinsics inline and the accumulators stay in registers.

use candle_core::WithDType;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::bf16::PlainBits;
use crate::isa::Isa;

/// Asks the cache for the line holding `p`, ahead of a load that would otherwise wait for
/// it. A hint only: it never faults and changes no value, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    // PREFETCHT0: into every level.
    prefetch_hint::<3, T>(p)
}

/// As [`prefetch`], into the second-level cache only: for lines wanted a while from now,
/// which would otherwise push lines in use out of the first level.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(p: *const T) {
    // PREFETCHT1.
    prefetch_hint::<2, T>(p)
}

/// Asks the second-level cache ([`prefetch_l2`]) for every line of the `len` values from
/// `p`.
#[inline(always)]
pub(crate) fn prefetch_run<E>(p: *const E, len: usize) {
    for line in lines_of(p, len) {
        prefetch_l2(line as *const u8);
    }
}

/// The cache lines that hold the `len` values from `p`: the first line's address and how
/// many lines (one where `len` is 0 and `p` is not at a line's start).
#[inline(always)]
pub(crate) fn line_run<E>(p: *const E, len: usize) -> (usize, usize) {
    let first = p as usize & !63;
    let end = p as usize + len * std::mem::size_of::<E>();
    (first, (end - first).div_ceil(64))
}

/// The addresses of the cache lines that hold the `len` values from `p`.
#[inline(always)]
fn lines_of<E>(p: *const E, len: usize) -> impl Iterator<Item = usize> {
    let (first, lines) = line_run(p, len);
    (0..lines).map(move |i| first + 64 * i)
}

/// Asks for every line of the `len` values from `p` to be brought into the cache to be
/// written (PREFETCHW), so that stores to them later find them there, owned.
#[inline(always)]
pub(crate) fn prefetch_write_run<E>(p: *const E, len: usize) {
    for line in lines_of(p, len) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHW reads and writes nothing architecturally and cannot fault, on
        // any address; x86-64 CPUs without it (Intel's before Broadwell) run it as a no-op.
        unsafe {
            _mm_prefetch::<_MM_HINT_ET0>(line as *const i8)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }
}

/// PREFETCHh of `p` with the hint `HINT` (`_MM_HINT_T0`'s 3 to `_MM_HINT_NTA`'s 0).
#[inline(always)]
fn prefetch_hint<const HINT: i32, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHh (SSE, in every x86-64 CPU) reads nothing architecturally and cannot
    // fault, on any address.
    unsafe {
        _mm_prefetch::<HINT>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The element types the products run in.
pub(crate) trait Element: WithDType + PlainBits + Send + Sync + 'static {
    type Avx512: Simd<E = Self>;
    type Avx2: Simd<E = Self>;
}

impl Element for f32 {
    type Avx512 = Avx512F32;
    type Avx2 = Avx2F32;
}

impl Element for f64 {
    type Avx512 = Avx512F64;
    type Avx2 = Avx2F64;
}

/// One vector register of `LANES` elements.
///
/// # Safety
/// Every method is `unsafe`: it may only run on a CPU with the path's features (the caller
/// dispatches through [`simd_dispatch!`]); pointers must be valid for the lanes read or
/// written (`LANES`, or `n` for the partial forms).
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    type E: Element;
    type V: Copy;
    /// A permutation of the lanes (see `permute`).
    type Ix: Copy;
    const LANES: usize;
    /// Vectors per row of a product tile (with `MR` rows, see `simd_dispatch!`).
    const NV_MAX: usize;
    /// Vector registers the path has: what a kernel may hold in registers at once.
    const REGISTERS: usize;
    /// Vectors of half the lanes on the same CPU, for the last columns of a product that
    /// fill no more than half a vector: `Self` where the path has none (see [`has_half`]).
    type Half: Simd<E = Self::E>;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(value: Self::E) -> Self::V;
    unsafe fn load(p: *const Self::E) -> Self::V;
    unsafe fn store(p: *mut Self::E, v: Self::V);
    /// The first `n` lanes (`n < LANES`), the rest zero; nothing beyond them is read.
    unsafe fn load_partial(p: *const Self::E, n: usize) -> Self::V;
    /// Writes the first `n` lanes (`n < LANES`) only.
    unsafe fn store_partial(p: *mut Self::E, v: Self::V, n: usize);
    /// `store` at a `p` aligned to the vector's bytes, as a non-temporal (streaming)
    /// store: the line goes to memory without first being read into the cache, which a
    /// store to a line the cache lacks otherwise costs. The writes become visible to other
    /// threads in order only after [`Simd::fence`].
    #[inline(always)]
    unsafe fn stream(p: *mut Self::E, v: Self::V) {
        // SAFETY: the caller's promise.
        unsafe { Self::store(p, v) }
    }
    /// `store_bf16` of all LANES lanes at a `p` aligned to their bytes (LANES * 2), streamed
    /// where the path can (see `stream`).
    #[inline(always)]
    unsafe fn stream_bf16(p: *mut u16, v: Self::V) {
        // SAFETY: the caller's promise.
        unsafe { Self::store_bf16(p, v, Self::LANES) }
    }
    /// Orders the streaming stores before every later store (and so before the release
    /// that hands the data to another thread).
    #[inline(always)]
    unsafe fn fence() {}
    /// a * b + c (fused where the path has FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// max(v, 0), except that a NaN stays NaN (a divergence must reach the loss).
    unsafe fn relu(v: Self::V) -> Self::V;
    /// `g` where `pre > 0`, else 0: the gradient through a ReLU whose input was `pre`.
    unsafe fn where_positive(pre: Self::V, g: Self::V) -> Self::V;
    /// `g` where `y` is not at most zero (above it, or NaN), else 0: the gradient through a
    /// ReLU taken from its output y, as `cpu::masked` takes it.
    unsafe fn where_passed(y: Self::V, g: Self::V) -> Self::V;
    /// The permutation whose lane l reads lane `idx[l]` (each below LANES), from the
    /// first LANES entries.
    unsafe fn lane_index(idx: &[u32; 16]) -> Self::Ix;
    /// Lane l of the result is lane `idx[l]` of `v`.
    unsafe fn permute(v: Self::V, idx: Self::Ix) -> Self::V;
    /// `n <= LANES` bf16 values (bits) as a vector, the rest zero.
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, n: usize) -> Self::V {
        let mut values = [Self::E::from_f64(0.0); 16];
        for (i, v) in values.iter_mut().enumerate().take(n.min(Self::LANES)) {
            // SAFETY: the caller's promise for the n values.
            *v = Self::E::from_f64(crate::bf16::from_bf16(unsafe { *p.add(i) }) as f64);
        }
        // SAFETY: the array holds at least LANES values.
        unsafe { Self::load(values.as_ptr()) }
    }
    /// The first `n <= LANES` lanes rounded to bf16 (to nearest even), as bits.
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: Self::V, n: usize) {
        let mut values = [Self::E::from_f64(0.0); 16];
        // SAFETY: the array holds at least LANES values.
        unsafe { Self::store(values.as_mut_ptr(), v) };
        for (i, value) in values.iter().enumerate().take(n.min(Self::LANES)) {
            // SAFETY: the caller's promise for the n values.
            unsafe { *p.add(i) = crate::bf16::to_bf16(value.to_f64() as f32) };
        }
    }
}

/// Whether `S::Half` has half of `S`'s lanes (the path has a narrower vector).
pub(crate) const fn has_half<S: Simd>() -> bool {
    S::Half::LANES * 2 == S::LANES
}

/// Bytes of output from which an element-wise pass streams its stores (see
/// `Simd::stream`): an output this large, with the values it is computed from, overflows a
/// core's second-level cache, so each line it writes would first be read from memory only
/// to be overwritten.
pub(crate) const STREAM_BYTES: usize = 2 << 20;

/// The values `span` of an output whose value `span.start` lies at address `start`, in
/// values of `value_bytes`, cut for streaming into vectors of `lanes`: the values before the
/// first vector-aligned one, the whole aligned vectors, and the values after the last.
pub(crate) fn stream_parts(
    span: std::ops::Range<usize>,
    start: usize,
    value_bytes: usize,
    lanes: usize,
) -> [std::ops::Range<usize>; 3] {
    let misaligned = (start % (lanes * value_bytes)) / value_bytes;
    let head_end = if misaligned > 0 {
        (span.start + lanes - misaligned).min(span.end)
    } else {
        span.start
    };
    let body_end = head_end + (span.end - head_end) / lanes * lanes;
    [span.start..head_end, head_end..body_end, body_end..span.end]
}

/// Plain Rust, one element per "vector": the portable path (and its reference).
#[derive(Clone, Copy)]
pub(crate) struct Scalar<T>(std::marker::PhantomData<T>);

impl<T: Element> Simd for Scalar<T> {
    type E = T;
    type V = T;
    type Half = Self;
    type Ix = ();
    const LANES: usize = 1;
    const NV_MAX: usize = 4;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> T {
        T::zero()
    }
    #[inline(always)]
    unsafe fn splat(value: T) -> T {
        value
    }
    #[inline(always)]
    unsafe fn load(p: *const T) -> T {
        // SAFETY: the caller's promise (one valid element).
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut T, v: T) {
        // SAFETY: the caller's promise.
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn load_partial(_: *const T, _: usize) -> T {
        // n < 1: no lane is read.
        T::zero()
    }
    #[inline(always)]
    unsafe fn store_partial(_: *mut T, _: T, _: usize) {}
    #[inline(always)]
    unsafe fn fma(a: T, b: T, c: T) -> T {
        a * b + c
    }
    #[inline(always)]
    unsafe fn add(a: T, b: T) -> T {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: T, b: T) -> T {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: T, b: T) -> T {
        a * b
    }
    #[inline(always)]
    unsafe fn relu(v: T) -> T {
        if v < T::zero() {
            T::zero()
        } else {
            v
        }
    }
    #[inline(always)]
    unsafe fn where_positive(pre: T, g: T) -> T {
        if pre > T::zero() {
            g
        } else {
            T::zero()
        }
    }
    #[inline(always)]
    unsafe fn where_passed(y: T, g: T) -> T {
        crate::cpu::masked(true, y, g)
    }
    #[inline(always)]
    unsafe fn lane_index(_idx: &[u32; 16]) {}
    #[inline(always)]
    unsafe fn permute(v: T, _idx: ()) -> T {
        v
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512F32;
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512F64;
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2F32;
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2F64;

// The intrinsics below are `unsafe` target-feature functions; each method's safety rests on
// the trait's contract (the CPU has the features, the pointers cover the lanes).
#[cfg(target_arch = "x86_64")]
impl Simd for Avx512F32 {
    type E = f32;
    type V = __m512;
    type Half = Avx2F32;
    type Ix = __m512i;
    const LANES: usize = 16;
    const NV_MAX: usize = 4;
    const REGISTERS: usize = 32;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> __m512 {
        unsafe { _mm512_set1_ps(value) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: __m512) {
        unsafe { _mm512_stream_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fence() {
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m512, n: usize) {
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m512) -> __m512 {
        // max returns its second operand when either is NaN: v.
        unsafe { _mm512_max_ps(_mm512_setzero_ps(), v) }
    }
    #[inline(always)]
    unsafe fn where_positive(pre: __m512, g: __m512) -> __m512 {
        unsafe {
            _mm512_maskz_mov_ps(
                _mm512_cmp_ps_mask::<_CMP_GT_OQ>(pre, _mm512_setzero_ps()),
                g,
            )
        }
    }
    #[inline(always)]
    unsafe fn where_passed(y: __m512, g: __m512) -> __m512 {
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(y, _mm512_setzero_ps()), g) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, n: usize) -> __m512 {
        // SAFETY: the caller's promise for the n values; the rest are masked off.
        unsafe {
            let mask = if n >= 16 {
                u16::MAX
            } else {
                ((1u32 << n) - 1) as u16
            };
            let bits = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p as *const i16));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        }
    }
    #[inline(always)]
    unsafe fn store_bf16(p: *mut u16, v: __m512, n: usize) {
        // SAFETY: the caller's promise for the n values; the rest are masked off.
        unsafe {
            let mask = if n >= 16 {
                u16::MAX
            } else {
                ((1u32 << n) - 1) as u16
            };
            _mm512_mask_cvtepi32_storeu_epi16(p as *mut i16, mask, bf16_lanes(v));
        }
    }
    #[inline(always)]
    unsafe fn stream_bf16(p: *mut u16, v: __m512) {
        // SAFETY: the caller's promise (32 bytes at a 32-byte boundary).
        unsafe { _mm256_stream_si256(p as *mut __m256i, _mm512_cvtepi32_epi16(bf16_lanes(v))) }
    }
    #[inline(always)]
    unsafe fn lane_index(idx: &[u32; 16]) -> __m512i {
        unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) }
    }
    #[inline(always)]
    unsafe fn permute(v: __m512, idx: __m512i) -> __m512 {
        unsafe { _mm512_permutexvar_ps(idx, v) }
    }
}

/// Each lane of `v` rounded to bf16 (to nearest even in integers, as `bf16::to_bf16`;
/// NaNs stay quiet NaNs), its bits in the low half of a 32-bit lane.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bf16_lanes(v: __m512) -> __m512i {
    // SAFETY: the caller's promise.
    unsafe {
        let bits = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            bits,
            _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd),
        ));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
        _mm512_mask_mov_epi32(rounded, nan, quiet)
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512F64 {
    type E = f64;
    type V = __m512d;
    type Half = Avx2F64;
    type Ix = __m512i;
    const LANES: usize = 8;
    const NV_MAX: usize = 4;
    const REGISTERS: usize = 32;
    #[inline(always)]
    unsafe fn zero() -> __m512d {
        unsafe { _mm512_setzero_pd() }
    }
    #[inline(always)]
    unsafe fn splat(value: f64) -> __m512d {
        unsafe { _mm512_set1_pd(value) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> __m512d {
        unsafe { _mm512_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: __m512d) {
        unsafe { _mm512_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f64, v: __m512d) {
        unsafe { _mm512_stream_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn fence() {
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f64, n: usize) -> __m512d {
        unsafe { _mm512_maskz_loadu_pd(((1u32 << n) - 1) as u8, p) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f64, v: __m512d, n: usize) {
        unsafe { _mm512_mask_storeu_pd(p, ((1u32 << n) - 1) as u8, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        unsafe { _mm512_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_add_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_sub_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_mul_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m512d) -> __m512d {
        // max returns its second operand when either is NaN: v.
        unsafe { _mm512_max_pd(_mm512_setzero_pd(), v) }
    }
    #[inline(always)]
    unsafe fn where_positive(pre: __m512d, g: __m512d) -> __m512d {
        unsafe {
            _mm512_maskz_mov_pd(
                _mm512_cmp_pd_mask::<_CMP_GT_OQ>(pre, _mm512_setzero_pd()),
                g,
            )
        }
    }
    #[inline(always)]
    unsafe fn where_passed(y: __m512d, g: __m512d) -> __m512d {
        unsafe { _mm512_maskz_mov_pd(_mm512_cmp_pd_mask::<_CMP_NLE_UQ>(y, _mm512_setzero_pd()), g) }
    }
    #[inline(always)]
    unsafe fn lane_index(idx: &[u32; 16]) -> __m512i {
        let wide: [u64; 8] = std::array::from_fn(|l| idx[l] as u64);
        unsafe { _mm512_loadu_si512(wide.as_ptr() as *const _) }
    }
    #[inline(always)]
    unsafe fn permute(v: __m512d, idx: __m512i) -> __m512d {
        unsafe { _mm512_permutexvar_pd(idx, v) }
    }
}

/// AVX2 lane masks: lane i is set when i < n.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_mask32(n: usize) -> __m256i {
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_mask64(n: usize) -> __m256i {
    unsafe { _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3)) }
}

// The AVX2 partial stores write whole 128-, 64- and 32-bit pieces rather than use
// `vmaskmov`, whose stores are microcoded on some AMD cores (its loads are not); `n` is
// the same at every call of a tile, so the branches predict.

/// Writes the low `n < 4` lanes of `v` to `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_upto3_f32(p: *mut f32, v: __m128, n: usize) {
    unsafe {
        if n >= 2 {
            _mm_store_sd(p as *mut f64, _mm_castps_pd(v));
            if n == 3 {
                _mm_store_ss(p.add(2), _mm_movehl_ps(v, v));
            }
        } else if n == 1 {
            _mm_store_ss(p, v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2F32 {
    type E = f32;
    type V = __m256;
    type Half = Self;
    type Ix = __m256i;
    const LANES: usize = 8;
    const NV_MAX: usize = 2;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> __m256 {
        unsafe { _mm256_set1_ps(value) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: __m256) {
        unsafe { _mm256_stream_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fence() {
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        unsafe { _mm256_maskload_ps(p, avx2_mask32(n)) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m256, n: usize) {
        unsafe {
            let low = _mm256_castps256_ps128(v);
            if n >= 4 {
                _mm_storeu_ps(p, low);
                store_upto3_f32(p.add(4), _mm256_extractf128_ps::<1>(v), n - 4);
            } else {
                store_upto3_f32(p, low, n);
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m256) -> __m256 {
        // max returns its second operand when either is NaN: v.
        unsafe { _mm256_max_ps(_mm256_setzero_ps(), v) }
    }
    #[inline(always)]
    unsafe fn where_positive(pre: __m256, g: __m256) -> __m256 {
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(pre, _mm256_setzero_ps()), g) }
    }
    #[inline(always)]
    unsafe fn where_passed(y: __m256, g: __m256) -> __m256 {
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(y, _mm256_setzero_ps()), g) }
    }
    #[inline(always)]
    unsafe fn lane_index(idx: &[u32; 16]) -> __m256i {
        unsafe { _mm256_loadu_si256(idx.as_ptr() as *const __m256i) }
    }
    #[inline(always)]
    unsafe fn permute(v: __m256, idx: __m256i) -> __m256 {
        unsafe { _mm256_permutevar8x32_ps(v, idx) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2F64 {
    type E = f64;
    type V = __m256d;
    type Half = Self;
    type Ix = __m256i;
    const LANES: usize = 4;
    const NV_MAX: usize = 2;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m256d {
        unsafe { _mm256_setzero_pd() }
    }
    #[inline(always)]
    unsafe fn splat(value: f64) -> __m256d {
        unsafe { _mm256_set1_pd(value) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> __m256d {
        unsafe { _mm256_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: __m256d) {
        unsafe { _mm256_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn stream(p: *mut f64, v: __m256d) {
        unsafe { _mm256_stream_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn fence() {
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f64, n: usize) -> __m256d {
        unsafe { _mm256_maskload_pd(p, avx2_mask64(n)) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f64, v: __m256d, n: usize) {
        unsafe {
            let low = _mm256_castpd256_pd128(v);
            if n >= 2 {
                _mm_storeu_pd(p, low);
                if n == 3 {
                    _mm_store_sd(p.add(2), _mm256_extractf128_pd::<1>(v));
                }
            } else if n == 1 {
                _mm_store_sd(p, low);
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        unsafe { _mm256_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256d, b: __m256d) -> __m256d {
        unsafe { _mm256_add_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256d, b: __m256d) -> __m256d {
        unsafe { _mm256_sub_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256d, b: __m256d) -> __m256d {
        unsafe { _mm256_mul_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m256d) -> __m256d {
        // max returns its second operand when either is NaN: v.
        unsafe { _mm256_max_pd(_mm256_setzero_pd(), v) }
    }
    #[inline(always)]
    unsafe fn where_positive(pre: __m256d, g: __m256d) -> __m256d {
        unsafe { _mm256_and_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(pre, _mm256_setzero_pd()), g) }
    }
    #[inline(always)]
    unsafe fn where_passed(y: __m256d, g: __m256d) -> __m256d {
        unsafe { _mm256_and_pd(_mm256_cmp_pd::<_CMP_NLE_UQ>(y, _mm256_setzero_pd()), g) }
    }
    #[inline(always)]
    unsafe fn lane_index(idx: &[u32; 16]) -> __m256i {
        // Each f64 lane as its two 32-bit halves.
        let halves: [u32; 8] = std::array::from_fn(|h| 2 * idx[h / 2] + (h % 2) as u32);
        unsafe { _mm256_loadu_si256(halves.as_ptr() as *const __m256i) }
    }
    #[inline(always)]
    unsafe fn permute(v: __m256d, idx: __m256i) -> __m256d {
        unsafe { _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx)) }
    }
}

/// Runs `f` compiled for AVX-512 (F, BW, VL, DQ) with AVX2 and FMA.
///
/// # Safety
/// The CPU has those features (`Isa::Avx512` or above is available).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has those features (`Isa::Avx2` or above is available).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The f32/f64 vector path of an instruction-set choice on this build's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorPath {
    Avx512,
    Avx2,
    Scalar,
}

impl VectorPath {
    /// Never a path the machine lacks, whatever `isa` asks for.
    pub(crate) fn of(isa: Isa) -> VectorPath {
        let isa = isa.min(crate::isa::detected());
        if cfg!(target_arch = "x86_64") {
            match isa.for_f32() {
                Isa::Avx512 => VectorPath::Avx512,
                Isa::Avx2 => VectorPath::Avx2,
                _ => VectorPath::Scalar,
            }
        } else {
            VectorPath::Scalar
        }
    }
}

/// Rows of the product tiles of each path (`MR` of `simd_call!`): a tile is then cut into
/// sub-tiles whose accumulators fill the path's registers (see `gemm::igemm_panel`), so it
/// is a multiple of their row counts on the vector paths.
pub(crate) const MR_AVX512: usize = 24;
pub(crate) const MR_AVX2: usize = 24;
pub(crate) const MR_SCALAR: usize = 4;

/// (lanes, vectors per tile row, rows per tile) of the path of `isa` for elements `T`.
pub(crate) fn tile_shape<T: Element>(isa: Isa) -> (usize, usize, usize) {
    match VectorPath::of(isa) {
        VectorPath::Avx512 => (T::Avx512::LANES, T::Avx512::NV_MAX, MR_AVX512),
        VectorPath::Avx2 => (T::Avx2::LANES, T::Avx2::NV_MAX, MR_AVX2),
        VectorPath::Scalar => (1, Scalar::<T>::NV_MAX, MR_SCALAR),
    }
}

/// Calls `$f::<S, MR>($args)` with `S` the vector type of element `$t` on the path of
/// `$isa` and `MR` that path's tile rows, inside a function compiled for the path's target
/// features, so that the intrinsics inline and the accumulators stay in registers. `$f`
/// may be an `unsafe fn`: the caller's `// SAFETY:` covers its contract.
macro_rules! simd_call {
    ($isa:expr, $t:ty, $($f:ident)::+ ($($arg:expr),* $(,)?)) => {{
        match $crate::simd::VectorPath::of($isa) {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::VectorPath::Avx512 => {
                // SAFETY: `VectorPath::of` picks AVX-512 only where the machine has it.
                #[allow(unused_unsafe)]
                let result = unsafe {
                    $crate::simd::with_avx512(#[inline(always)] || {
                        $($f)::+::<<$t as $crate::simd::Element>::Avx512, { $crate::simd::MR_AVX512 }>($($arg),*)
                    })
                };
                result
            }
            #[cfg(target_arch = "x86_64")]
            $crate::simd::VectorPath::Avx2 => {
                // SAFETY: as above, for AVX2.
                #[allow(unused_unsafe)]
                let result = unsafe {
                    $crate::simd::with_avx2(#[inline(always)] || {
                        $($f)::+::<<$t as $crate::simd::Element>::Avx2, { $crate::simd::MR_AVX2 }>($($arg),*)
                    })
                };
                result
            }
            _ => {
                #[allow(unused_unsafe)]
                let result = unsafe {
                    $($f)::+::<$crate::simd::Scalar<$t>, { $crate::simd::MR_SCALAR }>($($arg),*)
                };
                result
            }
        }
    }};
}
pub(crate) use simd_call;

/// `[$value; $n]` with `$i` running over the indices: what `std::array::from_fn(|$i|
/// $value)` builds, but by a loop in the function that writes it. `from_fn`'s closure is
/// a function of its own, compiled without the kernel's target features, so the
/// intrinsics in it cannot inline there; where LLVM then leaves the closure out of line
/// (it did for the row walks' loads on AVX2), each vector read costs a few calls. `$fill`
/// is any value of the element type, overwritten.
macro_rules! array_in_line {
    ($fill:expr; $n:expr, |$i:ident| $value:expr) => {{
        let mut out = [$fill; $n];
        for $i in 0..$n {
            out[$i] = $value;
        }
        out
    }};
}
pub(crate) use array_in_line;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available;

    /// Loads and stores `n` of a vector's lanes, for every `n` below the path's width:
    /// a load reads `n` values and zeros the rest, a store writes `n` values and leaves its
    /// neighbours alone.
    ///
    /// # Safety
    /// The CPU runs `S`.
    unsafe fn partial_lanes<S: Simd, const MR: usize>() -> Vec<String> {
        let mut faults = Vec::new();
        for n in 0..S::LANES {
            let source: Vec<S::E> = (0..n).map(|i| S::E::from_f64(i as f64 + 1.0)).collect();
            let mut wide = vec![S::E::from_f64(-1.0); S::LANES + 2];
            // SAFETY: `source` holds n values and `wide` LANES + 2 from index 1.
            unsafe {
                let v = S::load_partial(source.as_ptr(), n);
                S::store(wide.as_mut_ptr().add(1), v);
            }
            for (i, got) in wide[1..=S::LANES].iter().enumerate() {
                let expect = if i < n { i as f64 + 1.0 } else { 0.0 };
                if got.to_f64() != expect {
                    faults.push(format!("load n={n} lane {i}: {}", got.to_f64()));
                }
            }
            let mut target = vec![S::E::from_f64(-1.0); S::LANES + 2];
            // SAFETY: `target` holds n values from index 1.
            unsafe {
                let v = S::load(wide.as_ptr().add(1));
                S::store_partial(
                    target.as_mut_ptr().add(1),
                    S::add(v, S::splat(S::E::from_f64(10.0))),
                    n,
                );
            }
            for (i, got) in target.iter().enumerate() {
                let expect = if (1..=n).contains(&i) {
                    i as f64 + 10.0
                } else {
                    -1.0
                };
                if got.to_f64() != expect {
                    faults.push(format!("store n={n} at {i}: {}", got.to_f64()));
                }
            }
        }
        faults
    }

    /// Permutes a vector of distinct values by a reversal and by the group-lanes
    /// broadcasts of groups of 3 (lanes past the whole groups keep their own): each lane
    /// must hold the value its index names.
    ///
    /// # Safety
    /// The CPU runs `S`.
    unsafe fn permuted_lanes<S: Simd, const MR: usize>() -> Vec<String> {
        let mut faults = Vec::new();
        let values: Vec<S::E> = (0..S::LANES)
            .map(|i| S::E::from_f64(i as f64 * 1.5 - 2.0))
            .collect();
        let reversed: [u32; 16] =
            std::array::from_fn(|l| (S::LANES - 1 - l.min(S::LANES - 1)) as u32);
        let groups_of_3 = |b: usize| -> [u32; 16] {
            let width = (S::LANES / 3) * 3;
            std::array::from_fn(|l| {
                if l < width {
                    ((l / 3) * 3 + b) as u32
                } else {
                    l as u32
                }
            })
        };
        let mut cases = vec![("reversed".to_string(), reversed)];
        cases.extend((0..3).map(|b| (format!("groups of 3, b={b}"), groups_of_3(b))));
        for (what, idx) in cases {
            let mut out = vec![S::E::from_f64(0.0); S::LANES];
            // SAFETY: both vectors hold LANES values; every index is below LANES.
            unsafe {
                let v = S::permute(S::load(values.as_ptr()), S::lane_index(&idx));
                S::store(out.as_mut_ptr(), v);
            }
            for (l, got) in out.iter().enumerate() {
                let expect = values[idx[l] as usize % S::LANES].to_f64();
                if got.to_f64() != expect {
                    faults.push(format!(
                        "{what}: lane {l} {} (expected {expect})",
                        got.to_f64()
                    ));
                }
            }
        }
        faults
    }

    #[test]
    fn permutes_move_every_lane_where_its_index_says_on_every_path() {
        for isa in available() {
            let faults = simd_call!(isa, f32, permuted_lanes());
            assert!(faults.is_empty(), "{isa} f32: {faults:?}");
            let faults = simd_call!(isa, f64, permuted_lanes());
            assert!(faults.is_empty(), "{isa} f64: {faults:?}");
        }
    }

    #[test]
    fn partial_loads_and_stores_touch_only_their_lanes_on_every_path() {
        for isa in available() {
            let faults = simd_call!(isa, f32, partial_lanes());
            assert!(faults.is_empty(), "{isa} f32: {faults:?}");
            let faults = simd_call!(isa, f64, partial_lanes());
            assert!(faults.is_empty(), "{isa} f64: {faults:?}");
        }
    }
}
