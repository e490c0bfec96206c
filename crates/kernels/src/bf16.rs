//! bf16 products with f32 accumulation: the matrix kernels of `precision: bf16-mixed`.
//!
//! Both operands are rounded to bf16 (round to nearest even, in software, the same on every
//! path) as they are packed, and every product accumulates in f32:
//!
//! - **A** (the rows: pixels, or output channels for the weight gradient) is packed in
//!   blocks of 32 rows, each row `kpad` bf16 long (K padded with zeros to a multiple of 32);
//! - **B** (the columns) in panels of 32 columns, K in pairs: row `kp` of a panel holds, for
//!   each column, elements 2kp and 2kp + 1 side by side (the "VNNI" layout both the AMX tile
//!   unit and `VDPBF16PS` multiply);
//! - a **block** is 32 rows by one panel: C[32][32] (f32) = A x B.
//!
//! Two block kernels, one interface: [`amx_block`] on the AMX tile unit (`TDPBF16PS`: four
//! 16x16 f32 tiles of C, two of A, two of B, in `asm!` since stable Rust has no AMX
//! intrinsics; written from Intel's instruction reference, with the tile configuration
//! loaded once per task), and [`dp_block`] with AVX512-BF16's `VDPBF16PS` (8 rows by two
//! vectors of accumulators, or by one for narrow panels, a broadcast pair of A against a
//! vector of B pairs; it can also read A's bf16 rows where they lie, through a pointer per
//! row and tap). Machines
//! with neither round their inputs to bf16 values and run the f32 kernels (see `conv`):
//! the same rounding, f32 products of bf16 values (exact), f32 sums. The two units treat
//! bf16 denormals (below 1e-38) as zero; the software paths keep them.

use std::arch::asm;

use half::bf16;
use std::ops::Range;

/// bf16 bits of `x`, rounded to nearest even; a NaN stays a (quiet) NaN. Branch-free, so a
/// loop of it vectorizes.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let nan = (bits & 0x7FFF_FFFF) > 0x7F80_0000;
    if nan {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

/// The f32 value of bf16 bits (exact).
#[inline(always)]
pub(crate) fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to the nearest bf16, as an f32.
#[inline(always)]
pub(crate) fn round_f32(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Values per task of the conversions.
const CONVERT_CHUNK: usize = 1 << 15;

/// f32 values rounded to bf16, in parallel and vectorized.
pub(crate) fn to_bf16_vec(values: &[f32], isa: crate::isa::Isa) -> Vec<bf16> {
    use rayon::prelude::*;
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(values.par_chunks(CONVERT_CHUNK))
        .for_each(|(o, v)| {
            crate::cpu::vector_loops(
                isa,
                #[inline(always)]
                || {
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o = bf16::from_bits(to_bf16(v));
                    }
                },
            )
        });
    out
}

/// f32 values rounded to the nearest bf16 values, kept as f32, in parallel and vectorized.
pub(crate) fn round_vec(values: &[f32], isa: crate::isa::Isa) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(values.par_chunks(CONVERT_CHUNK))
        .for_each(|(o, v)| {
            crate::cpu::vector_loops(
                isa,
                #[inline(always)]
                || {
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o = round_f32(v);
                    }
                },
            )
        });
    out
}

/// bf16 values as f32 (exact), in parallel and vectorized.
pub(crate) fn from_bf16_vec(values: &[bf16], isa: crate::isa::Isa) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(values.par_chunks(CONVERT_CHUNK))
        .for_each(|(o, v)| {
            crate::cpu::vector_loops(
                isa,
                #[inline(always)]
                || {
                    for (o, v) in o.iter_mut().zip(v) {
                        *o = from_bf16(v.to_bits());
                    }
                },
            )
        });
    out
}

/// What the units' products are stored as: their f32 sums, or the sums rounded to bf16
/// (a bf16-mixed convolution's output, as autocast writes it).
pub(crate) trait Sink: Copy + Send + Sync + 'static {
    /// Stores `src` at `dst`, rounded to nearest even where `Self` is bf16 (by the CPU's
    /// `VCVTNEPS2BF16`, as the units' operands are).
    ///
    /// # Safety
    /// `dst` is valid for `src.len()` writes; inside a unit's session.
    unsafe fn store_run(dst: *mut Self, src: &[f32]);

    /// Whole f32 results as `Self` (the paths that sum in f32 kernels).
    fn from_f32_vec(values: Vec<f32>, isa: crate::isa::Isa) -> Vec<Self>;
}

impl Sink for f32 {
    #[inline(always)]
    unsafe fn store_run(dst: *mut f32, src: &[f32]) {
        // SAFETY: the caller's promise; f32 values are 32-bit words, as two bf16 are, and
        // the run is a whole number of them.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            copy_run(src.as_ptr() as *const u16, dst as *mut u16, 2 * src.len())
        };
        #[cfg(not(target_arch = "x86_64"))]
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len())
        };
    }

    fn from_f32_vec(values: Vec<f32>, _: crate::isa::Isa) -> Vec<f32> {
        values
    }
}

impl Sink for bf16 {
    #[inline(always)]
    unsafe fn store_run(dst: *mut bf16, src: &[f32]) {
        // SAFETY: the caller's promises (a session runs with the unit's features).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            convert_run(src.as_ptr(), dst as *mut u16, src.len())
        };
        #[cfg(not(target_arch = "x86_64"))]
        for (i, &v) in src.iter().enumerate() {
            // SAFETY: the caller's promise.
            unsafe { *(dst as *mut u16).add(i) = to_bf16(v) };
        }
    }

    fn from_f32_vec(values: Vec<f32>, isa: crate::isa::Isa) -> Vec<bf16> {
        to_bf16_vec(&values, isa)
    }
}

/// A value the products read: f32 (rounded when packed) or bf16 (as it is).
pub(crate) trait Source: Copy + Send + Sync + 'static {
    const ZERO: Self;
    /// f32 (else bf16): the packing code converts or copies.
    const F32: bool;
}

impl Source for f32 {
    const ZERO: f32 = 0.0;
    const F32: bool = true;
}

impl Source for bf16 {
    const ZERO: bf16 = bf16::ZERO;
    const F32: bool = false;
}

/// Rows of a block, and columns of a panel.
pub(crate) const BLOCK: usize = 32;
/// K steps of the block kernels.
pub(crate) const K_STEP: usize = 32;

/// K padded to whole steps.
pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(K_STEP).max(1) * K_STEP
}

/// A cache line's bytes, as the unit of `Lines`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Values whose zero is all-zero bits, and every bit pattern of which is a value.
pub(crate) trait PlainBits: Copy {}
impl PlainBits for u16 {}
impl PlainBits for f32 {}
impl PlainBits for f64 {}

/// Zeroed values, the first at the start of a cache line. The tile unit loads and stores
/// rows of 64 bytes, as AVX-512 loads vectors of 64 bytes, and a row or vector that
/// straddles two lines costs two accesses; the allocator promises 16-byte alignment only,
/// so which rows straddle would change from run to run.
pub(crate) struct Lines<T> {
    lines: Vec<Line>,
    len: usize,
    of: std::marker::PhantomData<T>,
}

impl<T: PlainBits> Lines<T> {
    pub(crate) fn zeroed(len: usize) -> Lines<T> {
        Lines {
            lines: vec![Line([0; 64]); (len * std::mem::size_of::<T>()).div_ceil(64)],
            len,
            of: std::marker::PhantomData,
        }
    }
}

impl<T: PlainBits> std::ops::Deref for Lines<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least len values' bytes, aligned for T (64 bytes), all
        // of them initialised, and every bit pattern is a T (`PlainBits`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: PlainBits> std::ops::DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and the slice borrows the lines mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

/// A right-hand operand [k, n] in panels of 32 columns, K padded to `kpad`, in pairs.
pub(crate) struct Vnni {
    pub data: Lines<u16>,
    pub kpad: usize,
    pub n: usize,
}

impl Vnni {
    /// Packs `value(k, col)` for k < `k` and col < `n` (zero beyond), panels in parallel
    /// (the tests' operands).
    #[cfg(test)]
    pub fn new(k: usize, n: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Vnni {
        Vnni::from_columns(k, n, |p, columns| {
            let kpad = columns.len() / BLOCK;
            for (j, row) in columns.chunks_exact_mut(kpad).enumerate() {
                let col = p * BLOCK + j;
                if col < n {
                    for (kk, v) in row[..k].iter_mut().enumerate() {
                        *v = value(kk, col);
                    }
                }
            }
        })
    }

    /// Packs panels whose columns `fill(p, columns)` writes: `columns` holds 32 rows of
    /// `padded_k(k)` zeros, and row j is to receive the K values of column p * 32 + j (if it
    /// is below `n`). Filled as rows, a weight's columns are read in their own order (an
    /// output channel's weights one after another, rather than 32 channels' at once); with
    /// AVX-512 they are then rounded 16 at a time and paired by word transposes
    /// (`pair_columns`). Panels in parallel.
    pub fn from_columns(k: usize, n: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vnni {
        use rayon::prelude::*;
        let kpad = padded_k(k);
        let panel_len = kpad * BLOCK;
        let panels = n.div_ceil(BLOCK);
        let mut data = Lines::zeroed(panels * panel_len);
        data.par_chunks_mut(panel_len).enumerate().for_each_init(
            || vec![0f32; panel_len],
            |columns, (p, panel)| {
                columns.fill(0.0);
                fill(p, columns);
                #[cfg(target_arch = "x86_64")]
                if crate::isa::detected() >= crate::isa::Isa::Avx512Bf16 {
                    // SAFETY: the CPU has AVX512-BF16 (just checked); `columns` holds 32
                    // rows of kpad values, a multiple of 32, and the panel kpad / 2 rows
                    // of 64.
                    unsafe {
                        with_unit_features(
                            #[inline(always)]
                            || pair_columns(columns, kpad, panel),
                        )
                    };
                    return;
                }
                for (kp, row) in panel.chunks_exact_mut(2 * BLOCK).enumerate() {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = to_bf16(columns[(i / 2) * kpad + 2 * kp + i % 2]);
                    }
                }
            },
        );
        Vnni { data, kpad, n }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }

    /// The start of panel `p`.
    pub fn panel(&self, p: usize) -> *const u16 {
        self.data[p * self.kpad * BLOCK..].as_ptr()
    }
}

/// Which block kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Amx,
    DotBf16,
}

impl Unit {
    /// The unit of an instruction-set choice, if it has one.
    pub(crate) fn of(isa: crate::isa::Isa) -> Option<Unit> {
        match isa.min(crate::isa::detected()) {
            crate::isa::Isa::Amx => Some(Unit::Amx),
            crate::isa::Isa::Avx512Bf16 => Some(Unit::DotBf16),
            _ => None,
        }
    }

    /// Runs `f` with the unit ready, compiled for AVX-512 with AVX512-BF16 (every machine
    /// with a unit has it; the packing's conversions use it): for AMX, the tile
    /// configuration is loaded on this thread for the duration (and released after). `f`
    /// should be `#[inline(always)]`, so that it is compiled for those features too.
    #[inline(always)]
    pub(crate) fn session<R>(self, f: impl FnOnce() -> R) -> R {
        // SAFETY: a unit exists only where the CPU has AVX512-BF16 (`Unit::of`).
        unsafe {
            with_unit_features(
                #[inline(always)]
                || self.configured(f),
            )
        }
    }

    #[inline(always)]
    fn configured<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            Unit::Amx => {
                // SAFETY: `Unit::of` picks AMX only where the CPU has it and Linux granted
                // the tile data state (`isa::detected`).
                unsafe { amx_configure() };
                let result = f();
                // SAFETY: as above.
                unsafe { amx_release() };
                result
            }
            Unit::DotBf16 => f(),
        }
    }

    /// C[32][32] (row stride `ldc` floats) = (C if `accumulate`) + A[32][kpad] x B panel,
    /// A's rows `lda` values apart. Only C's first `rows` rows and `cols` columns are
    /// meant: the rest may be left as they were (`VDPBF16PS` skips the row groups and the
    /// vector of columns that hold none of them) or hold their products.
    ///
    /// # Safety
    /// `a` holds 32 rows of `kpad` values, `lda >= kpad` apart (`kpad` a multiple of 32),
    /// `b` a panel `kpad` deep, `c` 32 rows of `ldc >= 32` floats; for AMX, inside `session`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn block(
        self,
        a: *const u16,
        lda: usize,
        kpad: usize,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        (rows, cols): (usize, usize),
    ) {
        // SAFETY: the caller's promises.
        unsafe {
            match self {
                Unit::Amx => amx_block(a, lda, kpad, b, c, ldc, accumulate),
                Unit::DotBf16 => dp_block(a, lda, kpad, b, c, ldc, accumulate, (rows, cols)),
            }
        }
    }
}

impl Unit {
    /// Whether `block_of_rows` serves a product whose A rows are `kc` bf16 values per tap:
    /// `VDPBF16PS` reads A one pair at a time, so it can read them where they lie when no
    /// pair straddles two taps. (The tile unit loads A as whole 64-byte rows: it needs them
    /// packed.)
    pub(crate) fn reads_rows(self, kc: usize) -> bool {
        self == Unit::DotBf16 && kc % 2 == 0
    }

    /// As `block`, with A's row i the `taps` runs of `kc` bf16 values at
    /// `rows[i * taps + t] + offset`, read where they lie (no packing copy; `offset` lets one
    /// table of pointers serve every group of a grouped convolution); B's K order is (tap,
    /// value). Each value of C takes the same pairs in the same order as `block` on the
    /// packed rows (the packed rows' padding only adds zeros).
    ///
    /// # Safety
    /// `reads_rows(kc)`; `rows` holds 32 * `taps` pointers, each valid for `offset + kc`
    /// reads (rows past the wanted ones may point at zeros); `b` a panel at least `taps * kc`
    /// deep; `c` 32 rows of `ldc >= 32` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn block_of_rows(
        self,
        (rows, offset): (&[*const u16], usize),
        taps: usize,
        kc: usize,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        (wanted_rows, cols): (usize, usize),
    ) {
        debug_assert!(self.reads_rows(kc) && rows.len() >= BLOCK * taps);
        // SAFETY: the caller's promises.
        unsafe {
            dp_block_of_rows(
                (rows.as_ptr(), offset),
                taps,
                kc,
                b,
                c,
                ldc,
                false,
                (wanted_rows, cols),
            )
        }
    }
}

/// The tile configuration: palette 1, eight tiles of 16 rows by 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static TILES: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// # Safety
/// The CPU has AMX and the process may use its tile data (see `isa`).
unsafe fn amx_configure() {
    // SAFETY: TILES is a valid 64-byte palette-1 configuration (the caller vouches for AMX).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &TILES, options(nostack, readonly)) };
}

/// # Safety
/// As `amx_configure`.
unsafe fn amx_release() {
    // SAFETY: returns the tile state to its initial configuration.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One block on the AMX tile unit: tiles 0-3 hold C (rows 0-15 / 16-31 by columns 0-15 /
/// 16-31), 4-5 the two row halves of A's K step, 6-7 the two column halves of B's.
///
/// # Safety
/// As `Unit::block` for AMX, with the tiles configured (`amx_configure`).
#[inline(always)]
unsafe fn amx_block(
    a: *const u16,
    lda: usize,
    kpad: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let (lda_bytes, ldc_bytes) = (lda * 2, ldc * 4);
    let (a1, c1) = (a.wrapping_add(16 * lda), c.wrapping_add(16 * ldc));
    // SAFETY: every tile load and store stays inside the blocks the caller vouches for:
    // 16 rows of 64 bytes at the given strides.
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                "tileloadd tmm2, [{c1} + {s}*1]",
                "tileloadd tmm3, [{c1} + {s}*1 + 64]",
                c = in(reg) c, c1 = in(reg) c1, s = in(reg) ldc_bytes,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem),
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b} + {sb}*1]",
            "tileloadd tmm7, [{b} + {sb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {a1}, 64",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            a = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b = inout(reg) b => _,
            n = inout(reg) kpad / K_STEP => _,
            sa = in(reg) lda_bytes,
            sb = in(reg) 4 * BLOCK,
            options(nostack, readonly),
        );
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c1} + {s}*1], tmm2",
            "tilestored [{c1} + {s}*1 + 64], tmm3",
            c = in(reg) c, c1 = in(reg) c1, s = in(reg) ldc_bytes,
            options(nostack),
        );
    }
}

/// One block with `VDPBF16PS`: `dp_block_of_rows` on the rows of A as one run each.
///
/// # Safety
/// As `Unit::block`; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn dp_block(
    a: *const u16,
    lda: usize,
    kpad: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    wanted: (usize, usize),
) {
    let rows: [*const u16; BLOCK] = std::array::from_fn(|i| a.wrapping_add(i * lda));
    // SAFETY: row i of A is kpad values from a + i * lda (the caller's promise).
    unsafe { dp_block_of_rows((rows.as_ptr(), 0), 1, kpad, b, c, ldc, accumulate, wanted) }
}

/// `Unit::block_of_rows` with `VDPBF16PS` (C accumulated into where `accumulate`): sub-blocks
/// of 8 rows (a pointer each per tap) by two vectors of 16 columns, or one where the wanted
/// columns fit it; sub-blocks with none of the wanted rows are skipped. Each value of C
/// takes the same pairs in the same order whichever sub-block computes it.
///
/// # Safety
/// As `Unit::block_of_rows`; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn dp_block_of_rows(
    (rows, offset): (*const *const u16, usize),
    taps: usize,
    kc: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    (wanted_rows, cols): (usize, usize),
) {
    let wanted_rows = wanted_rows.min(BLOCK);
    let mut r = 0;
    // SAFETY: every sub-block's pointers and rows of C lie in the 32 the caller vouches for.
    unsafe {
        while r < wanted_rows {
            let (rows, c) = (rows.add(r * taps), c.add(r * ldc));
            if cols > 16 {
                dp_rows::<2>((rows, offset), taps, kc, b, c, ldc, accumulate);
            } else {
                dp_rows::<1>((rows, offset), taps, kc, b, c, ldc, accumulate);
            }
            r += 8;
        }
    }
}

/// 8 rows, read through their tap pointers (plus `offset` values), against the panel's first VECS vectors of 16
/// columns (a broadcast pair of A against a vector of B pairs per accumulator), added to
/// C's values where `accumulate`; pair j of tap t meets row t * kc / 2 + j of the panel.
///
/// # Safety
/// `rows` holds 8 * `taps` pointers valid for `offset + kc` (kc even) reads, `b` a panel `taps * kc`
/// deep, `c` 8 rows of 16 * VECS floats `ldc` apart; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx512dq")]
unsafe fn dp_rows<const VECS: usize>(
    (rows, offset): (*const *const u16, usize),
    taps: usize,
    kc: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 8;
    let pairs = kc / 2;
    // SAFETY: each pair read lies in its tap's kc values, each B load in the panel's first
    // taps * kc rows of pairs, each store in C's 8 rows.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
        if accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, value) in row.iter_mut().enumerate() {
                    *value = _mm512_loadu_ps(c.add(i * ldc + 16 * v));
                }
            }
        }
        for t in 0..taps {
            let bases: [*const u16; ROWS] =
                std::array::from_fn(|i| (*rows.add(i * taps + t)).wrapping_add(offset));
            let bt = b.add(t * pairs * 2 * BLOCK);
            for j in 0..pairs {
                let bp = bt.add(j * 2 * BLOCK);
                let mut bv =
                    [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); VECS];
                for (v, vector) in bv.iter_mut().enumerate() {
                    *vector = std::mem::transmute(_mm512_loadu_si512(bp.add(32 * v) as *const _));
                }
                for (row, base) in acc.iter_mut().zip(bases) {
                    let pair = (base.add(2 * j) as *const i32).read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for (value, &vector) in row.iter_mut().zip(&bv) {
                        *value = _mm512_dpbf16_ps(*value, av, vector);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, value) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + 16 * v), *value);
            }
        }
    }
}

/// Runs `f` compiled for AVX-512 with AVX512-BF16: the packing of the units' operands,
/// whose conversions then use the CPU's own rounding instruction.
///
/// # Safety
/// The CPU has AVX512-BF16 (as every machine with a bf16 unit does).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn with_unit_features<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `n` values from `src` as bf16 bits at `dst`: f32 rounded by `VCVTNEPS2BF16` (round to
/// nearest even, as `to_bf16`; denormals become zero, as the units would read them
/// anyway), bf16 copied.
///
/// # Safety
/// `src` is valid for `n` reads and `dst` for `n` writes; inside `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn convert_run<X: Source>(src: *const X, dst: *mut u16, n: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises.
    unsafe {
        if !X::F32 {
            copy_run(src as *const u16, dst, n);
            return;
        }
        let src = src as *const f32;
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i)));
            _mm256_storeu_si256(
                dst.add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
            i += 16;
        }
        if i < n {
            let mask = ((1u32 << (n - i)) - 1) as u16;
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.add(i)));
            _mm256_mask_storeu_epi16(
                dst.add(i) as *mut i16,
                mask,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
}

/// Copies `n` 16-bit values in vectors of 32, the last one masked: the runs the units'
/// packing and stores copy are a few dozen values, where a call to `memcpy` costs more
/// than the copy.
///
/// # Safety
/// `src` is valid for `n` reads and `dst` for `n` writes, not overlapping; inside
/// `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn copy_run(src: *const u16, dst: *mut u16, n: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises; masked lanes are neither read nor written.
    unsafe {
        let mut i = 0;
        while i + 32 <= n {
            _mm512_storeu_si512(
                dst.add(i) as *mut _,
                _mm512_loadu_si512(src.add(i) as *const _),
            );
            i += 32;
        }
        if i < n {
            let mask = (1u32 << (n - i)) - 1;
            let v = _mm512_maskz_loadu_epi16(mask, src.add(i) as *const i16);
            _mm512_mask_storeu_epi16(dst.add(i) as *mut i16, mask, v);
        }
    }
}

/// The bf16 values of two rows, interleaved: (a[i], b[i]) pairs for i < n, as a B panel's
/// rows hold two K steps of each column. f32 values are rounded by `VCVTNEPS2BF16` (as in
/// `convert_run`), bf16 values copied.
///
/// # Safety
/// `a` and `b` are valid for `n` reads, `dst` for `2 n` writes; inside
/// `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn interleave_rows<X: Source>(a: *const X, b: *const X, dst: *mut u16, n: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises; masked lanes are neither read nor written.
    unsafe {
        let idx = _mm512_set_epi16(
            47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36,
            4, 35, 3, 34, 2, 33, 1, 32, 0,
        );
        let mut i = 0;
        while i < n {
            let (mask, pairs_mask) = if n - i >= 16 {
                (u16::MAX, u32::MAX)
            } else {
                let m = (1u32 << (n - i)) - 1;
                (m as u16, ((1u64 << (2 * (n - i))) - 1) as u32)
            };
            let (va, vb) = if X::F32 {
                let (pa, pb) = (a as *const f32, b as *const f32);
                (
                    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                        _mm512_maskz_loadu_ps(mask, pa.add(i)),
                    )),
                    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                        _mm512_maskz_loadu_ps(mask, pb.add(i)),
                    )),
                )
            } else {
                (
                    _mm256_maskz_loadu_epi16(mask, (a as *const i16).add(i)),
                    _mm256_maskz_loadu_epi16(mask, (b as *const i16).add(i)),
                )
            };
            let pairs = _mm512_permutex2var_epi16(
                _mm512_castsi256_si512(va),
                idx,
                _mm512_castsi256_si512(vb),
            );
            _mm512_mask_storeu_epi16(dst.add(2 * i) as *mut i16, pairs_mask, pairs);
            i += 16;
        }
    }
}

/// The first `cols` values of rows `0..len`, row p at `row(p)`, as bf16 columns:
/// `dst[c * kc + p]` is value c of row p (f32 rows rounded by `VCVTNEPS2BF16`, as in
/// `convert_run`; bf16 ones copied), for p up to `len` rounded up to a multiple of 32, the
/// rows past the last as zeros. This is the weight gradient's A, whose K is the pixels. It
/// goes by blocks of 32 rows by 16 values: the values of two rows paired into 32-bit words
/// (as A's K pairs are), then 16 x 16 words transposed in registers, shuffles instead of
/// one gather per 16 values.
///
/// # Safety
/// Each `row(p)` is valid for `cols` reads; `dst` is valid for writes of `cols` rows of
/// `kc` values, with `kc` at least `len` rounded up to a multiple of 32; inside
/// `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn transpose_rows<X: Source>(
    len: usize,
    mut row: impl FnMut(usize) -> *const X,
    cols: usize,
    dst: *mut u16,
    kc: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises; masked lanes are neither read nor written, and every
    // store is one whole block of 32 values inside a row of kc.
    unsafe {
        let idx = _mm512_set_epi16(
            47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36,
            4, 35, 3, 34, 2, 33, 1, 32, 0,
        );
        let mut table = [std::ptr::null::<X>(); BLOCK];
        for p0 in (0..len).step_by(BLOCK) {
            let pointers = &mut table[..(len - p0).min(BLOCK)];
            for (i, pointer) in pointers.iter_mut().enumerate() {
                *pointer = row(p0 + i);
            }
            let mut c0 = 0;
            while c0 < cols {
                let m = (cols - c0).min(16);
                let mask = ((1u32 << m) - 1) as u16;
                let mut words = [_mm512_setzero_si512(); 16];
                for (i, word) in words.iter_mut().enumerate() {
                    let mut pair = [_mm256_setzero_si256(); 2];
                    for (half, value) in pair.iter_mut().enumerate() {
                        if let Some(&p) = pointers.get(2 * i + half) {
                            *value = if X::F32 {
                                std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                                    _mm512_maskz_loadu_ps(mask, (p as *const f32).add(c0)),
                                ))
                            } else {
                                _mm256_maskz_loadu_epi16(mask, (p as *const i16).add(c0))
                            };
                        }
                    }
                    *word = _mm512_permutex2var_epi16(
                        _mm512_castsi256_si512(pair[0]),
                        idx,
                        _mm512_castsi256_si512(pair[1]),
                    );
                }
                let columns = transpose_words(words);
                for (j, column) in columns.iter().take(m).enumerate() {
                    _mm512_storeu_si512(dst.add((c0 + j) * kc + p0) as *mut _, *column);
                }
                c0 += 16;
            }
        }
    }
}

/// A panel from its 32 columns laid out as rows of `kpad` f32 values: each value rounded as
/// `to_bf16` rounds it (NaN quieted, denormals kept), and row kp of the panel holding the
/// pairs (2 kp, 2 kp + 1) of every column. Per 16 columns and 32 K values, the 16 rows of
/// 16 pairs are transposed to 16 rows of 16 columns.
///
/// # Safety
/// `columns` holds 32 rows of `kpad` values (`kpad` a multiple of 32) and `panel` is
/// `kpad * 32` long; inside `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_columns(columns: &[f32], kpad: usize, panel: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(columns.len() >= BLOCK * kpad && panel.len() >= BLOCK * kpad);
    // SAFETY: the loads read 32 values of a row from kb < kpad (a multiple of 32), and the
    // stores write 32 values of panel row kb / 2 + i < kpad / 2, from column 16 h.
    unsafe {
        for h in 0..2 {
            for kb in (0..kpad).step_by(32) {
                let mut words = [_mm512_setzero_si512(); 16];
                for (j, word) in words.iter_mut().enumerate() {
                    let row = columns.as_ptr().add((16 * h + j) * kpad + kb);
                    let low = rounded_bits(_mm512_loadu_ps(row));
                    let high = rounded_bits(_mm512_loadu_ps(row.add(16)));
                    *word = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
                }
                let rows = transpose_words(words);
                for (i, row) in rows.iter().enumerate() {
                    _mm512_storeu_si512(
                        panel.as_mut_ptr().add((kb / 2 + i) * 2 * BLOCK + 32 * h) as *mut _,
                        *row,
                    );
                }
            }
        }
    }
}

/// `to_bf16` of 16 values at once: the same integer rounding (ties to even, NaN quieted,
/// denormals kept), where `VCVTNEPS2BF16` would flush denormals.
///
/// # Safety
/// Inside `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rounded_bits(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: register operations only (AVX-512F/BW, which the unit's features include).
    unsafe {
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            bits,
            _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)),
        ));
        let nan = _mm512_cmpgt_epu32_mask(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF)),
            _mm512_set1_epi32(0x7F80_0000),
        );
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
    }
}

/// The 16 x 16 matrix of 32-bit words in `r` (row i in register i) transposed: word j of
/// register i moves to word i of register j. Pairs of words within 128-bit lanes, then
/// pairs of pairs, then the 4 x 4 matrices of lanes.
///
/// # Safety
/// Inside `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_words(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // SAFETY: register shuffles only (AVX-512F, which the unit's features include).
    unsafe {
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // b[4i + q], lane L: column 4L + q of rows 4i..4i + 4.
        let mut b = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
            b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            let c0 = _mm512_shuffle_i32x4::<0x44>(b[q], b[4 + q]);
            let c1 = _mm512_shuffle_i32x4::<0xEE>(b[q], b[4 + q]);
            let c2 = _mm512_shuffle_i32x4::<0x44>(b[8 + q], b[12 + q]);
            let c3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + q], b[12 + q]);
            out[q] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
            out[4 + q] = _mm512_shuffle_i32x4::<0xDD>(c0, c2);
            out[8 + q] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
            out[12 + q] = _mm512_shuffle_i32x4::<0xDD>(c1, c3);
        }
        out
    }
}

/// Packs one row of A on a unit's path: `taps` runs of `kc` values from `pointers`, then
/// zeros to `row.len()`. Taps whose values follow each other in memory (a kernel row's taps
/// inside the image, when a tap reads the whole pixel) are converted as one run: the same
/// values, in fewer, longer copies. Pointers into `zeros` (the addresses of the padding's
/// zero row) never join a run.
///
/// # Safety
/// Each pointer is valid for `kc` reads; inside `with_unit_features`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pack_row_unit<X: Source>(
    row: &mut [u16],
    pointers: &[*const X],
    kc: usize,
    zeros: &Range<usize>,
) {
    let mut t = 0;
    while t < pointers.len() {
        let start = pointers[t];
        let mut end = t + 1;
        if !zeros.contains(&(start as usize)) {
            while end < pointers.len()
                && pointers[end] == start.wrapping_add((end - t) * kc)
                && !zeros.contains(&(pointers[end] as usize))
            {
                end += 1;
            }
        }
        // SAFETY: the caller's promise for each pointer; taps t..end read one contiguous
        // run (each pointer kc values after the one before), which lies in the row.
        unsafe { convert_run(start, row[t * kc..end * kc].as_mut_ptr(), (end - t) * kc) };
        t = end;
    }
    row[pointers.len() * kc..].fill(0);
}

/// The addresses of `len` values from `zero` (a zero row, whose pointers never join runs).
pub(crate) fn address_range<X>(zero: *const X, len: usize) -> Range<usize> {
    (zero as usize)..(zero as usize + len * std::mem::size_of::<X>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing gives each value of the operand, rounded by `to_bf16`, at its place:
    /// panel p's row kp holds the pairs (2 kp, 2 kp + 1) of its 32 columns, zeros past k
    /// and n. Odd depths and widths, NaN, infinity, denormals, ties.
    #[test]
    fn packed_operands_hold_each_rounded_value_in_its_pair() {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -1e-40,
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            -0.0,
        ];
        for (k, n) in [(1, 1), (7, 5), (32, 32), (45, 33), (147, 64), (300, 70)] {
            let value = |kk: usize, col: usize| {
                let i = kk * n + col;
                if i % 7 == 3 {
                    specials[i % specials.len()]
                } else {
                    ((i * 2654435761) % 2000) as f32 / 997.0 - 1.0
                }
            };
            let packed = Vnni::new(k, n, value);
            let kpad = padded_k(k);
            assert_eq!(packed.kpad, kpad);
            assert_eq!(packed.data.len(), n.div_ceil(BLOCK) * kpad * BLOCK);
            for (i, &bits) in packed.data.iter().enumerate() {
                let (p, within) = (i / (kpad * BLOCK), i % (kpad * BLOCK));
                let (kp, j, e) = (within / (2 * BLOCK), within % (2 * BLOCK) / 2, within % 2);
                let (kk, col) = (2 * kp + e, p * BLOCK + j);
                let expected = if kk < k && col < n {
                    to_bf16(value(kk, col))
                } else {
                    0
                };
                assert_eq!(bits, expected, "k {k}, n {n}: value ({kk}, {col})");
            }
        }
    }
    use crate::isa::available;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_nan_and_infinity() {
        for &x in &values(10_000, 3) {
            let r = bf16::from_f32(x).to_bits();
            assert_eq!(to_bf16(x), r, "{x}");
        }
        // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    /// Rows read through tap pointers give the bits of the same rows packed.
    #[test]
    fn rows_read_where_they_lie_match_packed_rows_bit_for_bit() {
        let units: Vec<Unit> = available().into_iter().filter_map(Unit::of).collect();
        for unit in units.into_iter().filter(|u| u.reads_rows(6)) {
            let (taps, kc, n) = (3, 6, 20);
            let k = taps * kc;
            let kpad = padded_k(k);
            // Each row's taps are runs of kc values at scattered places of a source.
            let source: Vec<u16> = values(4096, 41).iter().map(|&v| to_bf16(v)).collect();
            let at = |i: usize, t: usize| (i * 97 + t * 331) % (4096 - kc);
            let pointers: Vec<*const u16> = (0..BLOCK * taps)
                .map(|j| source[at(j / taps, j % taps)..].as_ptr())
                .collect();
            let mut packed = vec![0u16; BLOCK * kpad];
            for i in 0..BLOCK {
                for t in 0..taps {
                    let from = &source[at(i, t)..][..kc];
                    packed[i * kpad + t * kc..][..kc].copy_from_slice(from);
                }
            }
            let b_vals = values(k * n, 42);
            let b = Vnni::new(k, n, |kk, col| b_vals[kk * n + col]);
            let (mut by_rows, mut by_packing) =
                (vec![0f32; BLOCK * BLOCK], vec![0f32; BLOCK * BLOCK]);
            let wanted = (BLOCK, n);
            // SAFETY: each pointer has kc values after it, the packed rows kpad each, the
            // panel kpad deep, C 32 x 32.
            unsafe {
                unit.session(|| {
                    let c = by_rows.as_mut_ptr();
                    let rows = (&pointers[..], 0);
                    unit.block_of_rows(rows, taps, kc, b.panel(0), c, BLOCK, wanted);
                    let c = by_packing.as_mut_ptr();
                    unit.block(
                        packed.as_ptr(),
                        kpad,
                        kpad,
                        b.panel(0),
                        c,
                        BLOCK,
                        false,
                        wanted,
                    );
                })
            };
            for i in 0..BLOCK {
                for j in 0..n {
                    let (x, y) = (by_rows[i * BLOCK + j], by_packing[i * BLOCK + j]);
                    assert_eq!(x.to_bits(), y.to_bits(), "{unit:?} ({i}, {j})");
                }
            }
        }
    }

    /// A product split along K at whole K steps, the second part accumulating into the
    /// first's C, gives the bits of one pass: what lets the weight gradients choose their
    /// chunk of pixels by the cache, not by the sums.
    #[test]
    fn splitting_k_at_whole_steps_keeps_the_bits() {
        let units: Vec<Unit> = available().into_iter().filter_map(Unit::of).collect();
        for unit in units {
            let (k, split) = (320, 128);
            let a_vals = values(BLOCK * k, 31);
            let a: Vec<u16> = a_vals.iter().map(|&v| to_bf16(v)).collect();
            let b_vals = values(k * BLOCK, 32);
            let b = Vnni::new(k, BLOCK, |kk, col| b_vals[kk * BLOCK + col]);
            let start = values(BLOCK * BLOCK, 33);
            let (mut whole, mut parts) = (start.clone(), start.clone());
            // SAFETY: A is 32 rows of k values (k apart), the panel k deep, C 32 x 32; the
            // parts read A's columns and the panel's pairs from `split` on.
            unsafe {
                unit.session(|| {
                    let all = (BLOCK, BLOCK);
                    unit.block(
                        a.as_ptr(),
                        k,
                        k,
                        b.panel(0),
                        whole.as_mut_ptr(),
                        BLOCK,
                        true,
                        all,
                    );
                    unit.block(
                        a.as_ptr(),
                        k,
                        split,
                        b.panel(0),
                        parts.as_mut_ptr(),
                        BLOCK,
                        true,
                        all,
                    );
                    unit.block(
                        a.as_ptr().add(split),
                        k,
                        k - split,
                        b.panel(0).add(split * BLOCK),
                        parts.as_mut_ptr(),
                        BLOCK,
                        true,
                        all,
                    );
                })
            };
            let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&whole), bits(&parts), "{unit:?}");
        }
    }

    /// Each unit's block against an f64 sum of the same bf16 values: equal to f32
    /// accumulation error, with and without accumulating into C, on partial panels and
    /// for some of the rows (the wanted part of C; nothing beyond C's 32 columns written).
    #[test]
    fn blocks_match_an_f64_reference_of_the_rounded_inputs() {
        let units: Vec<Unit> = available().into_iter().filter_map(Unit::of).collect();
        for unit in units {
            for (k, n) in [(32, 32), (70, 20), (300, 64), (5, 1)] {
                let kpad = padded_k(k);
                // A's rows further apart than their depth, as a product read in place has.
                let lda = kpad + BLOCK;
                let a_vals = values(BLOCK * k, 1 + k as u64);
                let b_vals = values(k * n, 2 + n as u64);
                let mut a = vec![0u16; BLOCK * lda];
                for i in 0..BLOCK {
                    for kk in 0..k {
                        a[i * lda + kk] = to_bf16(a_vals[i * k + kk]);
                    }
                }
                let b = Vnni::new(k, n, |kk, col| b_vals[kk * n + col]);
                for (accumulate, rows) in [(false, BLOCK), (true, BLOCK), (false, 13), (true, 8)] {
                    for p in 0..b.panels() {
                        let cols = (n - p * BLOCK).min(BLOCK);
                        let ldc = 40;
                        let start = values(BLOCK * ldc, 9);
                        let mut c = start.clone();
                        // SAFETY: A is 32 rows of kpad, lda apart, the panel kpad deep, C
                        // 32 x 40 floats.
                        unsafe {
                            unit.session(|| {
                                unit.block(
                                    a.as_ptr(),
                                    lda,
                                    kpad,
                                    b.panel(p),
                                    c.as_mut_ptr(),
                                    ldc,
                                    accumulate,
                                    (rows, cols),
                                )
                            })
                        };
                        for i in 0..BLOCK {
                            for j in 0..BLOCK {
                                if i >= rows || j >= cols {
                                    continue;
                                }
                                let col = p * BLOCK + j;
                                let mut expect = if accumulate {
                                    start[i * ldc + j] as f64
                                } else {
                                    0.0
                                };
                                let mut scale = expect.abs();
                                if col < n {
                                    for kk in 0..k {
                                        let t = round_f32(a_vals[i * k + kk]) as f64
                                            * round_f32(b_vals[kk * n + col]) as f64;
                                        expect += t;
                                        scale += t.abs();
                                    }
                                }
                                let got = c[i * ldc + j] as f64;
                                assert!(
                                    (got - expect).abs()
                                        <= 1e-6 * scale.max(1.0) * (k as f64).sqrt(),
                                    "{unit:?} k={k} n={n} ({i}, {col}): {got} vs {expect}"
                                );
                            }
                            // Columns beyond the block are untouched.
                            for j in BLOCK..ldc {
                                assert_eq!(c[i * ldc + j], start[i * ldc + j]);
                            }
                        }
                    }
                }
            }
        }
    }
}
