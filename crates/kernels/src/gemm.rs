//! The product kernels of the channels-last convolutions, written once over [`Simd`].
//!
//! - [`igemm_tile`]: an *indirect* matrix product. A tile of `MR` output rows (pixels) by
//!   one panel of output columns (channels) sums, over the kernel's taps and the channels
//!   of each tap, a pixel row of the input times a packed weight row. Each output row
//!   reads its input through one pointer per tap, which points at the input pixel the tap
//!   sees, or at a row of zeros where it falls in the padding. So the same kernel serves
//!   1x1, 3x3 and 7x7 convolutions at any stride without an unfolded (im2col) copy, and,
//!   with the pointers of a transposed convolution, the input gradient.
//! - [`wgrad_tile`]: the weight gradient's product, whose sum runs over the pixels: rows
//!   are input channels of one tap, columns output channels.
//! - [`band_tile`] and [`band_wgrad`]: grouped convolutions with few channels per group.
//!   Their products would be matrices a few elements wide; instead, a group's output
//!   channel c reads input channels c + d for the offsets d within the group, so one
//!   vector of channels is a sum of shifted input vectors times per-channel weights
//!   (zero where c + d leaves the group), vectorized across groups.
//!
//! Accumulation order is fixed by the loops, so results do not depend on scheduling.

use crate::bf16::Lines;
use crate::simd::{has_half, line_run, prefetch, prefetch_l2, prefetch_run, Simd};

/// Calls `$tiles!(MR, NV)` with the sub-tile shape of path `$s` for `$nv` vectors: rows
/// and vectors whose accumulators, one broadcast (or loaded vector) per row and the
/// vectors of one step fit the registers (see `igemm_panel`). AVX2's two-vector tiles take
/// 6 rows, whose broadcasts the compiler reuses a register or two for: 12 independent sums
/// rather than 4 rows' 8, which only just cover two FMA units' latency, so that a late
/// load no longer stalls every unit. AVX-512's four-vector tiles take 6 rows for the same
/// reason: 24 sums, with the four panel vectors and a broadcast register or two, fill its
/// 32 registers, and each step loads 10 values for 24 multiply-adds where 4 rows loaded 8
/// for 16. Where the last of the four is a half vector (`$half`), each row takes a
/// broadcast of each width, and 6 such rows run slower than 4 (docs/speed.md), so those
/// tiles keep 4.
macro_rules! by_shape {
    ($s:ty, $nv:expr, $half:expr, $tiles:ident) => {
        if <$s>::LANES == 1 {
            match $nv {
                1 => $tiles!(4, 1),
                2 => $tiles!(4, 2),
                3 => $tiles!(4, 3),
                _ => $tiles!(4, 4),
            }
        } else if <$s>::NV_MAX == 2 {
            match $nv {
                1 => $tiles!(6, 1),
                _ => $tiles!(6, 2),
            }
        } else {
            match $nv {
                1 => $tiles!(12, 1),
                2 => $tiles!(8, 2),
                3 => $tiles!(6, 3),
                _ if $half => $tiles!(4, 4),
                _ => $tiles!(6, 4),
            }
        }
    };
}

/// `$body` with `$h` a constant: true where `$half`, else false (a tile's HALF chosen at
/// run time, its code compiled for each).
macro_rules! with_half {
    ($half:expr, $h:ident, $body:block) => {
        if $half {
            const $h: bool = true;
            $body
        } else {
            const $h: bool = false;
            $body
        }
    };
}

/// Whether the last of `nv` vectors holding `width` columns is summed as a vector of
/// `S::Half`: where the path has one and the columns past the whole vectors fit it.
fn last_in_half<S: Simd>(width: usize, nv: usize) -> bool {
    has_half::<S>() && width <= (nv - 1) * S::LANES + S::Half::LANES
}

/// Runs `$call(off, rows)` for the sub-tiles of `$mr` rows (the last with fewer) of the
/// first `$valid` rows of a tile.
macro_rules! sub_tiles {
    ($mr:expr, $valid:expr, |$off:ident, $rows:ident| $call:expr) => {{
        let mut $off = 0;
        while $off < $valid {
            let $rows = ($valid - $off).min($mr);
            $call;
            $off += $mr;
        }
    }};
}

/// Asks the cache, through `lines`, for the rows the work after a sub-tile reads at one
/// tap: the pointers `a[next..next + MR]`, as far as the table has them. Strided and grouped
/// products read a few scattered values per row, which the hardware's prefetchers do not
/// foresee, so each of their loads would otherwise wait on memory.
#[inline(always)]
fn prefetch_rows<E, const MR: usize>(a: &[*const E], next: usize, lines: impl Fn(*const E)) {
    for i in 0..MR {
        if let Some(&row) = a.get(next + i) {
            lines(row);
        }
    }
}

/// One column panel of a packed operand: `width` real columns from `col`, stored as
/// `nv` vectors per row (zero beyond `width`), starting at `offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panel {
    pub col: usize,
    pub width: usize,
    pub nv: usize,
    pub offset: usize,
}

/// A right-hand operand [depth, n] packed into column panels, each row of a panel one
/// contiguous run of `nv * lanes` values: the layout the tile kernels read.
pub(crate) struct Packed<E> {
    pub data: Lines<E>,
    pub panels: Vec<Panel>,
}

/// Columns `0..n` cut into panels of `nv_max` vectors of `lanes` values, the last panel as
/// narrow as it can be; offsets are those of a packed operand `depth` rows deep.
pub(crate) fn panels(n: usize, depth: usize, lanes: usize, nv_max: usize) -> Vec<Panel> {
    let mut panels = Vec::new();
    let mut offset = 0;
    let mut col = 0;
    while col < n {
        let width = (n - col).min(nv_max * lanes);
        let nv = width.div_ceil(lanes);
        panels.push(Panel {
            col,
            width,
            nv,
            offset,
        });
        offset += depth * nv * lanes;
        col += width;
    }
    panels
}

impl<E: crate::simd::Element> Packed<E> {
    /// Packs `value(row, col)` for rows `0..depth` and columns `0..n` (see [`panels`]),
    /// panels in parallel.
    #[cfg(test)]
    pub fn new(
        n: usize,
        depth: usize,
        lanes: usize,
        nv_max: usize,
        value: impl Fn(usize, usize) -> E + Sync,
    ) -> Packed<E> {
        Self::by_panels(n, depth, lanes, nv_max, |panel, part| {
            for (row, values) in part.chunks_exact_mut(panel.nv * lanes).enumerate() {
                for (j, to) in values[..panel.width].iter_mut().enumerate() {
                    *to = value(row, panel.col + j);
                }
            }
        })
    }

    /// As [`Packed::new`], for values that lie in `source` column by column: the value of
    /// row `r` and column `c` is `source[c * column_stride + row_offset(r)]` (a
    /// convolution's output channel, whose weights lie together). The columns are taken
    /// `COLUMN_BLOCK` at a time and walked down their rows together: each of those columns
    /// is then one stream through memory, read in the cache lines that the rows before
    /// brought in, and each line of the panel is written whole. Same values, same layout.
    pub fn from_columns(
        n: usize,
        depth: usize,
        lanes: usize,
        nv_max: usize,
        source: &[E],
        column_stride: usize,
        row_offset: impl Fn(usize) -> usize + Sync,
    ) -> Packed<E> {
        Self::by_panels(n, depth, lanes, nv_max, |panel, part| {
            let stride = panel.nv * lanes;
            for first_col in (0..panel.width).step_by(COLUMN_BLOCK) {
                let cols = (panel.width - first_col).min(COLUMN_BLOCK);
                let starts: [usize; COLUMN_BLOCK] =
                    std::array::from_fn(|j| (panel.col + first_col + j) * column_stride);
                for row in 0..depth {
                    let offset = row_offset(row);
                    let to = &mut part[row * stride + first_col..][..cols];
                    for (to, &start) in to.iter_mut().zip(&starts) {
                        *to = source[start + offset];
                    }
                }
            }
        })
    }

    /// As [`Packed::new`], filled a row at a time: for each source `s < sources`,
    /// `rows(s, put)` calls `put(r, values)` with the `n` values of row `r`, which are cut
    /// into the row's panels. Sources run in parallel. Where a source's rows read one run
    /// of memory (a convolution's output channel: all its weights, whatever the tap), the
    /// sources stream through their operand, which a panel at a time would read in short
    /// pieces far apart.
    ///
    /// # Safety
    /// Across all sources, `put` is called at most once per row `r < depth`, with `n`
    /// values (rows not put stay zero).
    pub(crate) unsafe fn from_rows(
        n: usize,
        depth: usize,
        lanes: usize,
        nv_max: usize,
        sources: usize,
        rows: impl Fn(usize, &mut dyn FnMut(usize, &[E])) + Sync,
    ) -> Packed<E> {
        use rayon::prelude::*;
        let mut packed = Self::by_panels(n, depth, lanes, nv_max, |_, _| {});
        let data = crate::cpu::SendPtr(packed.data.as_mut_ptr());
        let panels = &packed.panels;
        (0..sources).into_par_iter().for_each(|s| {
            rows(s, &mut |r, values| {
                assert!(r < depth && values.len() == n, "a packed row out of bounds");
                for panel in panels {
                    let stride = panel.nv * lanes;
                    // SAFETY: row r of the panel lies within the packed data (r < depth),
                    // and no other call writes it (the caller's promise).
                    unsafe {
                        let to = data.get().add(panel.offset + r * stride);
                        std::ptr::copy_nonoverlapping(
                            values.as_ptr().add(panel.col),
                            to,
                            panel.width,
                        );
                    }
                }
            })
        });
        packed
    }

    /// The packed operand, zeros but where `fill(panel, part)` writes each panel's part
    /// (`depth` rows of `panel.nv * lanes` values), panels in parallel.
    fn by_panels(
        n: usize,
        depth: usize,
        lanes: usize,
        nv_max: usize,
        fill: impl Fn(&Panel, &mut [E]) + Sync,
    ) -> Packed<E> {
        use rayon::prelude::*;
        let panels = panels(n, depth, lanes, nv_max);
        let size = panels.last().map_or(0, |p| p.offset + depth * p.nv * lanes);
        let mut data = Lines::zeroed(size);
        let mut parts = Vec::with_capacity(panels.len());
        let mut rest = &mut data[..];
        for panel in &panels {
            let (part, tail) = rest.split_at_mut(depth * panel.nv * lanes);
            parts.push((panel, part));
            rest = tail;
        }
        parts
            .into_par_iter()
            .for_each(|(panel, part)| fill(panel, part));
        Packed { data, panels }
    }
}

/// Columns that [`Packed::from_columns`] walks down together.
const COLUMN_BLOCK: usize = 16;

/// Stores `MR` rows of accumulators (the first `valid`), `width` columns of each, from
/// column `col` of each row.
///
/// # Safety
/// Each of the first `valid` row pointers plus `col` is valid for `width` writes.
#[inline(always)]
unsafe fn store_rows<S: Simd, const MR: usize, const NV: usize>(
    acc: &[[S::V; NV]; MR],
    c: &[*mut S::E],
    col: usize,
    valid: usize,
    width: usize,
) {
    for i in 0..MR {
        if i >= valid {
            break;
        }
        for (j, &v) in acc[i].iter().enumerate() {
            let start = col + j * S::LANES;
            let end = col + width;
            // SAFETY: the row holds `width` values from `col` (the caller's promise).
            unsafe {
                if start + S::LANES <= end {
                    S::store(c[i].add(start), v);
                } else if start < end {
                    S::store_partial(c[i].add(start), v, end - start);
                }
            }
        }
    }
}

/// c[i][col..col + width] = sum over taps t and k < kc of a[t * stride + off + i][skip + k] *
/// b[t * kc + k][..] for the MR rows i of one sub-tile, from row `off` of its tile. `skip`
/// selects a group's channels within rows shared by every group. `next` = (row, skip) says
/// which work follows, whose MR rows from `row` of the tile (as far as `a` has them) and
/// `kc` channels from `skip` the cache is asked for, tap by tap.
///
/// With HALF, the last of the NV vectors is taken as a vector of `S::Half` (the columns
/// past `(NV - 1) * LANES` fill no more than it): a multiply-add of half the lanes costs
/// no more than one of a whole vector of which half is zeros, and less on cores that run a
/// whole AVX-512 vector as two halves. Each sum is the same, bit for bit.
///
/// # Safety
/// - `a` holds `taps * stride` pointers (stride >= off + MR), each valid for `skip + kc`
///   reads;
/// - `b` is valid for `taps * kc * NV * LANES` reads (a packed panel);
/// - the first `valid` pointers of `c`, plus `col`, are valid for `width <= NV * LANES`
///   writes, and with HALF `width <= (NV - 1) * LANES + S::Half::LANES` and
///   `has_half::<S>()`;
/// - the CPU runs `S` (see `simd_call!`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn igemm_tile<S: Simd, const MR: usize, const NV: usize, const HALF: bool>(
    a: &[*const S::E],
    ahead: &[*const S::E],
    stride: usize,
    off: usize,
    skip: usize,
    taps: usize,
    kc: usize,
    b: *const S::E,
    c: &[*mut S::E],
    col: usize,
    valid: usize,
    width: usize,
    next: (usize, usize),
) {
    debug_assert!(a.len() >= (taps - 1) * stride + off + MR || taps == 0);
    let (next_row, next_skip) = next;
    // SAFETY: every pointer is read within the bounds the caller vouches for.
    unsafe {
        type H<S> = <S as Simd>::Half;
        // The whole vectors; with HALF, the last is `acc_half`'s.
        let full = NV - usize::from(HALF);
        let mut acc = [[S::zero(); NV]; MR];
        let mut acc_half = [H::<S>::zero(); MR];
        let mut bp = b;
        for t in 0..taps {
            prefetch_rows::<S::E, MR>(
                a,
                t * stride + next_row,
                #[inline(always)]
                |row| {
                    prefetch(row.wrapping_add(next_skip));
                    prefetch(row.wrapping_add(next_skip + kc.max(1) - 1));
                },
            );
            prefetch_rows::<S::E, MR>(
                ahead,
                t * stride + off,
                #[inline(always)]
                |row| prefetch_run(row.wrapping_add(skip), kc),
            );
            let ap: [*const S::E; MR] =
                std::array::from_fn(|i| a.get_unchecked(t * stride + off + i).add(skip));
            for k in 0..kc {
                let bv: [S::V; NV] = std::array::from_fn(|j| {
                    if j < full {
                        S::load(bp.add(j * S::LANES))
                    } else {
                        S::zero()
                    }
                });
                let b_half = if HALF {
                    H::<S>::load(bp.add(full * S::LANES))
                } else {
                    H::<S>::zero()
                };
                for i in 0..MR {
                    let value = *ap[i].add(k);
                    let av = S::splat(value);
                    for j in 0..full {
                        acc[i][j] = S::fma(av, bv[j], acc[i][j]);
                    }
                    if HALF {
                        acc_half[i] = H::<S>::fma(H::<S>::splat(value), b_half, acc_half[i]);
                    }
                }
                bp = bp.add(NV * S::LANES);
            }
        }
        if HALF {
            let rest = width - full * S::LANES;
            store_rows::<S, MR, NV>(&acc, c, col, valid, full * S::LANES);
            for (i, &v) in acc_half.iter().enumerate().take(valid) {
                let p = c[i].add(col + full * S::LANES);
                if rest == H::<S>::LANES {
                    H::<S>::store(p, v);
                } else {
                    H::<S>::store_partial(p, v, rest);
                }
            }
        } else {
            store_rows::<S, MR, NV>(&acc, c, col, valid, width);
        }
    }
}

/// The rows of one tile of `MT` rows (the first `valid` real) times one panel, in sub-tiles
/// whose accumulators, with the panel's vectors and the rows' broadcasts, fit the path's
/// registers (see `by_shape`): 12 rows of one vector, 8 of two, 6 of three, 6 of four (4
/// where the last is a half vector) on AVX-512 (32 registers); 6 of one or two on AVX2
/// (16); 4 in plain Rust.
///
/// # Safety
/// As [`igemm_tile`] with stride `MT`, `b` the start of the panel `panel` of a packed
/// operand `taps * kc` rows deep, and `c` holding MT row pointers, each row's columns of
/// the panel `col` values after its pointer (so that every group and panel of a tile
/// stores through the tile's own row pointers, with no table of its own to fill).
/// `then_skip` is the skip of the product that runs next on the tile's rows (the next
/// group's channels, or `skip` again): each sub-tile asks the cache for the next sub-tile's
/// rows, and the last for the first rows of that product.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn igemm_panel<S: Simd, const MT: usize>(
    a: &[*const S::E],
    ahead: &[*const S::E],
    skip: usize,
    taps: usize,
    kc: usize,
    b: *const S::E,
    panel: Panel,
    c: &[*mut S::E; MT],
    col: usize,
    valid: usize,
    then_skip: usize,
) {
    let last_half = last_in_half::<S>(panel.width, panel.nv);
    macro_rules! tiles {
        ($mr:literal, $nv:literal) => {
            // SAFETY: the sub-tile's pointers start at `off` of each tap's MT, and
            // off + MR <= MT: sub-tiles start at multiples of MR, which divides MT (24 for
            // the vector paths, 4 plain).
            sub_tiles!($mr, valid, |off, rows| unsafe {
                let next = if off + $mr < valid {
                    (off + $mr, skip)
                } else {
                    (0, then_skip)
                };
                with_half!(last_half, HALF, {
                    igemm_tile::<S, $mr, $nv, HALF>(
                        a,
                        ahead,
                        MT,
                        off,
                        skip,
                        taps,
                        kc,
                        b,
                        &c[off..],
                        col,
                        rows,
                        panel.width,
                        next,
                    )
                })
            })
        };
    }
    debug_assert!(MT % 24 == 0 || S::LANES == 1);
    by_shape!(S, panel.nv, last_half, tiles)
}

/// out[i][0..width] += sum over pixels p of x[p][skip + i] * dy[p * ldy + ..width], for R
/// rows. Where each `dy` row can be read past `width` to the end of its last vector
/// (`readable >= NV * LANES`: the columns of the next group), it is read whole, since a
/// masked load costs more than a plain one; the extra lanes only reach accumulator lanes
/// that are not stored. Where the last vector's columns fit a vector of `S::Half`, they are
/// summed in one (see `igemm_tile`).
///
/// # Safety
/// - each `x[p] + skip` is valid for `R` reads, and `dy + p * ldy` for
///   `readable.max(width)` reads, for every pixel p of `x`;
/// - `out + i * ldo` is valid for `width` reads and writes for i < R, and initialised;
/// - `width <= NV * LANES`; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn wgrad_tile<S: Simd, const R: usize, const NV: usize>(
    x: &[*const S::E],
    skip: usize,
    dy: *const S::E,
    ldy: usize,
    width: usize,
    readable: usize,
    out: *mut S::E,
    ldo: usize,
    ahead: Lookahead,
) {
    type H<S> = <S as Simd>::Half;
    let tail = width - (NV - 1) * S::LANES;
    let half = last_in_half::<S>(width, NV);
    // The lanes of the last vector, whole or half.
    let last_lanes = if half { H::<S>::LANES } else { S::LANES };
    let partial = tail < last_lanes;
    let partial_load = partial && readable < (NV - 1) * S::LANES + last_lanes;
    // SAFETY: reads and writes stay within the bounds the caller vouches for; the last
    // vector of a narrower panel reads only its `tail` lanes.
    unsafe {
        // The pixel loop in copies, so that the choice of load is made once per tile and
        // the loop body holds nothing but loads and FMAs.
        let (acc, acc_half) = with_half!(half, HALF, {
            if partial_load {
                wgrad_sums::<S, R, NV, true, HALF>(x, skip, dy, ldy, tail, ahead)
            } else {
                wgrad_sums::<S, R, NV, false, HALF>(x, skip, dy, ldy, tail, ahead)
            }
        });
        // Every row's earlier sums are read and added before any row is stored: rows of
        // a narrow panel lie less than a vector apart, so a row's load right after the
        // previous row's masked store would wait for that store to reach the cache.
        let mut sums = acc;
        let mut sums_half = acc_half;
        for (i, sum_row) in sums.iter_mut().enumerate() {
            let o = out.add(i * ldo);
            for (j, v) in sum_row.iter_mut().enumerate() {
                let p = o.add(j * S::LANES);
                if j == NV - 1 && half {
                    let before = if partial {
                        H::<S>::load_partial(p, tail)
                    } else {
                        H::<S>::load(p)
                    };
                    sums_half[i] = H::<S>::add(before, sums_half[i]);
                } else if j == NV - 1 && partial {
                    *v = S::add(S::load_partial(p, tail), *v);
                } else {
                    *v = S::add(S::load(p), *v);
                }
            }
        }
        for (i, sum_row) in sums.iter().enumerate() {
            let o = out.add(i * ldo);
            for (j, &v) in sum_row.iter().enumerate() {
                let p = o.add(j * S::LANES);
                if j == NV - 1 && half {
                    if partial {
                        H::<S>::store_partial(p, sums_half[i], tail);
                    } else {
                        H::<S>::store(p, sums_half[i]);
                    }
                } else if j == NV - 1 && partial {
                    S::store_partial(p, v, tail);
                } else {
                    S::store(p, v);
                }
            }
        }
    }
}

/// The sums of [`wgrad_tile`] over its pixels, the last `dy` vector read masked to `tail`
/// lanes where `PARTIAL`, and summed as a vector of `S::Half` (the second result; the
/// first's last vectors are then unused) where `HALF`.
///
/// # Safety
/// As [`wgrad_tile`], with `has_half::<S>()` and `tail <= S::Half::LANES` where `HALF`.
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn wgrad_sums<
    S: Simd,
    const R: usize,
    const NV: usize,
    const PARTIAL: bool,
    const HALF: bool,
>(
    x: &[*const S::E],
    skip: usize,
    dy: *const S::E,
    ldy: usize,
    tail: usize,
    ahead: Lookahead,
) -> ([[S::V; NV]; R], [<S::Half as Simd>::V; R]) {
    type H<S> = <S as Simd>::Half;
    // The whole vectors; with HALF, the last is `acc_half`'s.
    let full = NV - usize::from(HALF);
    // SAFETY: the caller's bounds (see `wgrad_tile`).
    unsafe {
        let mut acc = [[S::zero(); NV]; R];
        let mut acc_half = [H::<S>::zero(); R];
        let mut row = dy;
        // `ahead`'s lines, spread evenly over the pixels: `due` counts in steps of 1 / len.
        let (lines, len) = (ahead.lines(), x.len());
        let (mut due, mut asked) = (0, 0);
        for (p, &xp) in x.iter().enumerate() {
            // Rows through a table of pointers, which the prefetchers do not follow (see
            // `group_lanes_wgrad_sums`).
            if let Some(&next) = x.get(p + WGRAD_AHEAD) {
                prefetch(next.wrapping_add(skip));
            }
            due += lines;
            while due >= len {
                due -= len;
                prefetch_l2(ahead.line(asked) as *const u8);
                asked += 1;
            }
            let bv: [S::V; NV] = std::array::from_fn(|j| {
                if j >= full {
                    S::zero()
                } else if PARTIAL && j == NV - 1 {
                    S::load_partial(row.add(j * S::LANES), tail)
                } else {
                    S::load(row.add(j * S::LANES))
                }
            });
            let b_half = match (HALF, PARTIAL) {
                (false, _) => H::<S>::zero(),
                (true, true) => H::<S>::load_partial(row.add(full * S::LANES), tail),
                (true, false) => H::<S>::load(row.add(full * S::LANES)),
            };
            let xs = xp.add(skip);
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let value = *xs.add(i);
                let av = S::splat(value);
                for (a, &b) in acc_row.iter_mut().zip(&bv).take(full) {
                    *a = S::fma(av, b, *a);
                }
                if HALF {
                    acc_half[i] = H::<S>::fma(H::<S>::splat(value), b_half, acc_half[i]);
                }
            }
            row = row.add(ldy);
        }
        (acc, acc_half)
    }
}

/// Cache lines that a weight-gradient tile asks the second-level cache for while it sums,
/// spread evenly over its pixels: the rows its caller reads next. A product's next rows,
/// where they lie in memory rather than a cache, would otherwise arrive only as its tiles
/// reach them, each tile waiting for them in turn.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lookahead {
    /// Runs of lines: the address of a run's first line, and how many it has.
    runs: [(usize, usize); 2],
}

impl Lookahead {
    /// The lines of two runs of values, `len` from `p` each.
    pub(crate) fn of<E>(runs: [(*const E, usize); 2]) -> Lookahead {
        Lookahead {
            runs: runs.map(|(p, len)| match len {
                0 => (0, 0),
                _ => line_run(p, len),
            }),
        }
    }

    /// How many lines it asks for.
    fn lines(&self) -> usize {
        self.runs[0].1 + self.runs[1].1
    }

    /// The address of line `j` (below `lines()`).
    #[inline(always)]
    fn line(&self, j: usize) -> usize {
        let [(a, n), (b, _)] = self.runs;
        if j < n {
            a + 64 * j
        } else {
            b + 64 * (j - n)
        }
    }

    /// Share k of `count` near-equal shares of the lines, in order.
    pub(crate) fn share(&self, k: usize, count: usize) -> Lookahead {
        let lines = self.lines();
        let (from, to) = (k * lines / count, (k + 1) * lines / count);
        let [(a, n), (b, _)] = self.runs;
        let (from0, to0) = (from.min(n), to.min(n));
        let (from1, to1) = (from.max(n) - n, to.max(n) - n);
        Lookahead {
            runs: [(a + 64 * from0, to0 - from0), (b + 64 * from1, to1 - from1)],
        }
    }
}

/// [`wgrad_tile`] for `rows` rows (any number) and a panel of `nv` vectors.
///
/// Every tile passes over all the pixels, loading each pixel's `dy` row once, so the rows
/// are cut into as few tiles as the registers allow, of near-equal sizes. A tile holds its
/// accumulators, the pixel's `dy` vectors and the rows' broadcasts: 7 rows of one vector
/// or 6 of two on AVX2's 16 registers (6 rows' broadcasts through a register or two, as
/// in `by_shape`), 13, 12, 8 and 6 rows of one to four vectors on AVX-512's 32 (24 sums
/// from two vectors on, which leaves room for the `dy` vectors and a broadcast, and cuts
/// `MR_AVX512` rows into whole tiles). Each output keeps its order of summation over the
/// pixels, whatever the cut.
///
/// # Safety
/// As [`wgrad_tile`], for rows `skip..skip + rows` of the x rows and output rows
/// `0..rows` from `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn wgrad_rows<S: Simd>(
    rows: usize,
    nv: usize,
    x: &[*const S::E],
    skip: usize,
    dy: *const S::E,
    ldy: usize,
    width: usize,
    readable: usize,
    out: *mut S::E,
    ldo: usize,
    ahead: Lookahead,
) {
    macro_rules! tiles {
        ($nv:literal; $($r:literal)+) => {{
            let most = [$($r),+].len();
            let count = rows.div_ceil(most);
            let mut off = 0;
            for k in 0..count {
                let r = (rows - off).div_ceil(count - k);
                // SAFETY: passed on, for rows off..off + r of the `rows`.
                unsafe {
                    match r {
                        $($r => wgrad_tile::<S, $r, $nv>(
                            x,
                            skip + off,
                            dy,
                            ldy,
                            width,
                            readable,
                            out.add(off * ldo),
                            ldo,
                            ahead.share(k, count),
                        ),)+
                        _ => unreachable!("a weight-gradient tile of {r} rows"),
                    }
                }
                off += r;
            }
        }};
    }
    if S::LANES == 1 {
        match nv {
            1 => tiles!(1; 1 2 3 4 5),
            2 => tiles!(2; 1 2 3 4 5),
            3 => tiles!(3; 1 2 3 4 5),
            _ => tiles!(4; 1 2 3 4 5),
        }
    } else if S::NV_MAX == 2 {
        match nv {
            1 => tiles!(1; 1 2 3 4 5 6 7),
            _ => tiles!(2; 1 2 3 4 5 6),
        }
    } else {
        match nv {
            1 => tiles!(1; 1 2 3 4 5 6 7 8 9 10 11 12 13),
            2 => tiles!(2; 1 2 3 4 5 6 7 8 9 10 11 12),
            3 => tiles!(3; 1 2 3 4 5 6 7 8),
            _ => tiles!(4; 1 2 3 4 5 6),
        }
    }
}

/// The most channels per group that a group-lanes product takes (on any path).
pub(crate) const MAX_GROUP: usize = 8;

/// The shape of a group-lanes product: rows of `channels` channels in groups of `cg` (as
/// many outputs as inputs per group), cut into vectors of `width` channels each, the most
/// whole groups that fit the lanes, so that no group straddles two vectors; `vectors` of
/// them cover a row. Its weights are laid out [taps][cg][vectors][LANES]: at (t, b), lane l
/// of vector v holds the weight from the group's input b to channel v * width + l (zero at
/// the lanes past `width` and past the row's end).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLanes {
    pub channels: usize,
    pub cg: usize,
    pub width: usize,
    pub vectors: usize,
}

impl GroupLanes {
    /// `channels` in groups of `cg` (at most `lanes` and `MAX_GROUP`) on vectors of `lanes`.
    pub(crate) fn new(channels: usize, cg: usize, lanes: usize) -> GroupLanes {
        assert!(
            (1..=lanes.min(MAX_GROUP)).contains(&cg),
            "group-lanes product with {cg} channels per group on {lanes} lanes"
        );
        let width = (lanes / cg) * cg;
        GroupLanes {
            channels,
            cg,
            width,
            vectors: channels.div_ceil(width),
        }
    }

    /// The channels vector `v` holds: `width`, or fewer in the last.
    #[inline(always)]
    pub(crate) fn filled(&self, v: usize) -> usize {
        (self.channels - v * self.width).min(self.width)
    }

    /// Values of one tap's weights, for vectors of `lanes`.
    pub(crate) fn tap_len(&self, lanes: usize) -> usize {
        self.cg * self.vectors * lanes
    }
}

/// For each b < cg, the permutation that gives every lane of a group its group's b-th value
/// (lane l reads lane (l / cg) * cg + b; lanes past the whole groups keep their own).
///
/// # Safety
/// The CPU runs `S`; `cg <= MAX_GROUP` and `cg <= S::LANES`.
#[inline(always)]
pub(crate) unsafe fn group_broadcasts<S: Simd>(cg: usize) -> [S::Ix; MAX_GROUP] {
    let width = (S::LANES / cg) * cg;
    std::array::from_fn(|b| {
        let idx: [u32; 16] = std::array::from_fn(|l| {
            if l < width && b < cg {
                ((l / cg) * cg + b) as u32
            } else {
                l as u32
            }
        });
        // SAFETY: the caller's promise: the CPU runs `S`.
        unsafe { S::lane_index(&idx) }
    })
}

/// For each d < cg, the permutation that rotates every group's values by d (lane l, the
/// a-th of its group, reads the group's (a + d) % cg-th; lanes past the whole groups keep
/// their own): d = 0 leaves the vector as it is.
///
/// # Safety
/// The CPU runs `S`; `cg <= MAX_GROUP` and `cg <= S::LANES`.
#[inline(always)]
pub(crate) unsafe fn group_rotations<S: Simd>(cg: usize) -> [S::Ix; MAX_GROUP] {
    let width = (S::LANES / cg) * cg;
    std::array::from_fn(|d| {
        let idx: [u32; 16] = std::array::from_fn(|l| {
            if l < width {
                ((l / cg) * cg + (l % cg + d) % cg) as u32
            } else {
                l as u32
            }
        });
        // SAFETY: the caller's promise: the CPU runs `S`.
        unsafe { S::lane_index(&idx) }
    })
}

/// The first `n` lanes at `p` (all of them where `n` is `LANES`), the rest zero.
///
/// # Safety
/// `p` is valid for `n <= LANES` reads; the CPU runs `S`.
#[inline(always)]
pub(crate) unsafe fn load_upto<S: Simd>(p: *const S::E, n: usize) -> S::V {
    // SAFETY: the caller's promise.
    unsafe {
        if n == S::LANES {
            S::load(p)
        } else {
            S::load_partial(p, n)
        }
    }
}

/// c[i][ch] = sum over taps t and b < cg of a[t * stride + i][g + b] * w[t][b][ch], g the
/// first channel of ch's group, for the channel vectors `v0..v0 + NV` of MR pixels. Each
/// row's vector is read once per tap, and each of its groups' b-th value reaches the
/// group's lanes by a permute: every product is a useful one, and each lane's sum runs over
/// (t, b) in order. `next` = (row offset, first vector) says which work follows, whose
/// rows (`a[t * stride + offset..][..MR]`, as far as `a` has them) and vectors (NV from
/// the first) the cache is asked for, tap by tap.
///
/// # Safety
/// - `a` holds `taps * stride` pointers (stride >= MR), each to a row of `lg.channels`
///   values;
/// - `w` holds `taps * lg.tap_len(LANES)` values laid out as [`GroupLanes`] says, and
///   `v0 + NV <= lg.vectors`;
/// - the first `valid` pointers of `c` are valid for `lg.channels` writes;
/// - `bcast` is `group_broadcasts::<S>(lg.cg)`; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn group_lanes_tile<S: Simd, const MR: usize, const NV: usize>(
    a: &[*const S::E],
    stride: usize,
    taps: usize,
    lg: GroupLanes,
    w: *const S::E,
    bcast: &[S::Ix; MAX_GROUP],
    v0: usize,
    c: &[*mut S::E],
    valid: usize,
    next: (usize, usize),
) {
    let filled: [usize; NV] = std::array::from_fn(|j| lg.filled(v0 + j));
    let tap_len = lg.tap_len(S::LANES);
    let (next_row, next_v) = next;
    // SAFETY: loads stay within each row's `channels` values (the last vector's cut to its
    // filled lanes), weight loads within the layout, stores within the rows (the caller's
    // promises).
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        for t in 0..taps {
            prefetch_rows::<S::E, MR>(
                a,
                t * stride + next_row,
                #[inline(always)]
                |row| {
                    for j in 0..NV {
                        prefetch(row.wrapping_add((next_v + j) * lg.width));
                    }
                },
            );
            let x: [[S::V; NV]; MR] = std::array::from_fn(|i| {
                let row = *a.get_unchecked(t * stride + i);
                std::array::from_fn(|j| load_upto::<S>(row.add((v0 + j) * lg.width), filled[j]))
            });
            let wt = w.add(t * tap_len + v0 * S::LANES);
            for (b, &idx) in bcast.iter().enumerate().take(lg.cg) {
                let wb = wt.add(b * lg.vectors * S::LANES);
                for j in 0..NV {
                    let wv = S::load(wb.add(j * S::LANES));
                    for i in 0..MR {
                        acc[i][j] = S::fma(S::permute(x[i][j], idx), wv, acc[i][j]);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(valid.min(MR)) {
            for (j, &v) in row.iter().enumerate() {
                let p = c[i].add((v0 + j) * lg.width);
                if filled[j] == S::LANES {
                    S::store(p, v);
                } else {
                    S::store_partial(p, v, filled[j]);
                }
            }
        }
    }
}

/// One tile of MT rows (the first `valid` real) of group-lanes products for `nv` channel
/// vectors from `v0`: in sub-tiles of two vectors (one for a last odd vector), the rows per
/// sub-tile chosen so that the accumulators and each row's loaded vectors fit the path's
/// registers. Vector by vector, each over the tile's rows, so that a vector's weights stay
/// in the nearest cache (the forward's order); or, `rows_first`, rows by rows, each
/// sub-tile taking every vector of its rows, so that the rows' lines are read whole while
/// in that cache (the input gradient's: a stride class's weights cover a few of the taps,
/// so every vector's stay cached too, and its rows are the output gradient's, read by
/// every class).
///
/// # Safety
/// As [`group_lanes_tile`] with stride MT, and `c` holding MT row pointers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn group_lanes_vectors<S: Simd, const MT: usize>(
    nv: usize,
    a: &[*const S::E],
    taps: usize,
    lg: GroupLanes,
    w: *const S::E,
    bcast: &[S::Ix; MAX_GROUP],
    v0: usize,
    c: &[*mut S::E; MT],
    valid: usize,
    rows_first: bool,
) {
    macro_rules! tile {
        ($mr:literal, $nv:literal, $v:expr, $off:expr, $rows:expr, $next:expr) => {
            // SAFETY: the sub-tile's pointers start at `off` of each tap's MT.
            unsafe {
                group_lanes_tile::<S, $mr, $nv>(
                    &a[$off..],
                    MT,
                    taps,
                    lg,
                    w,
                    bcast,
                    $v,
                    &c[$off..],
                    $rows,
                    $next,
                )
            }
        };
    }
    // Sub-tile by sub-tile, every vector of it, each sub-tile asking the cache for what
    // runs after it: the next vectors of its rows, or the next rows' first.
    macro_rules! rows_then_vectors {
        ($mr:literal, $pairs:expr) => {
            sub_tiles!($mr, valid, |off, rows| {
                let mut v = v0;
                while v < v0 + nv {
                    let step = if $pairs && v + 2 <= v0 + nv { 2 } else { 1 };
                    let next = if v + step < v0 + nv {
                        (0, v + step)
                    } else {
                        ($mr, v0)
                    };
                    if step == 2 {
                        tile!($mr, 2, v, off, rows, next);
                    } else {
                        tile!($mr, 1, v, off, rows, next);
                    }
                    v += step;
                }
            })
        };
    }
    // Vector by vector, every sub-tile of it, each asking for the same vectors' next rows.
    macro_rules! vectors_then_rows {
        ($mr:literal, $nv:literal, $v:expr) => {
            sub_tiles!($mr, valid, |off, rows| {
                tile!($mr, $nv, $v, off, rows, ($mr, $v))
            })
        };
    }
    if rows_first {
        match (S::LANES, S::NV_MAX) {
            (1, _) => rows_then_vectors!(4, false),
            (_, 2) => rows_then_vectors!(3, true),
            _ => rows_then_vectors!(6, true),
        }
        return;
    }
    let mut v = v0;
    while v < v0 + nv {
        let two = v + 2 <= v0 + nv;
        match (S::LANES, S::NV_MAX, two) {
            (1, _, _) => vectors_then_rows!(4, 1, v),
            (_, 2, true) => vectors_then_rows!(3, 2, v),
            (_, 2, false) => vectors_then_rows!(6, 1, v),
            (_, _, true) => vectors_then_rows!(6, 2, v),
            (_, _, false) => vectors_then_rows!(12, 1, v),
        }
        v += if two && S::LANES > 1 { 2 } else { 1 };
    }
}

/// out[t][d][v] += sum over pixels p of x[t * stride + p][g + (a + d) % CG] *
/// dy[p * ldy + ch] for the channels ch = g + a of vector `v` (g the first channel of ch's
/// group), every d < CG and the T taps t of `x` (`x[t * stride..][..len]` the tap's pixel
/// rows, `out + t * tap_len` its output): the weight gradient of a group-lanes product,
/// each sum over the pixels in order. Rotating the groups' inputs by d pairs every input
/// with every output of its group in CG - 1 permutes (d = 0 needs none). Taking several
/// taps at once shares each gradient row among them and gives narrow groups, with a sum or
/// two per tap, enough independent sums to cover the latency of each one's chain of FMAs.
///
/// # Safety
/// - each pixel pointer points at a row of `lg.channels` values, `dy + p * ldy` at a row of
///   `lg.channels`;
/// - `out + t * tap_len` is valid for reads and writes of the [`GroupLanes`] layout of one
///   tap for each of the T taps, initialised, and `v < lg.vectors`;
/// - `rotations` is `group_rotations::<S>(CG)`; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn group_lanes_wgrad<S: Simd, const CG: usize, const T: usize>(
    x: &[*const S::E],
    stride: usize,
    len: usize,
    dy: *const S::E,
    ldy: usize,
    lg: GroupLanes,
    rotations: &[S::Ix; MAX_GROUP],
    v: usize,
    out: *mut S::E,
) {
    let (ch, n) = (v * lg.width, lg.filled(v));
    let tap_len = lg.tap_len(S::LANES);
    // SAFETY: the caller's bounds; loads are cut to the vector's filled lanes.
    unsafe {
        // The pixel loop in two copies, the choice of load made once (see `wgrad_tile`).
        let acc = if n < S::LANES {
            group_lanes_wgrad_sums::<S, CG, T, true>(x, stride, len, dy, ldy, ch, n, rotations)
        } else {
            group_lanes_wgrad_sums::<S, CG, T, false>(x, stride, len, dy, ldy, ch, n, rotations)
        };
        for (t, sums) in acc.iter().enumerate() {
            for (d, &sum) in sums.iter().enumerate() {
                let p = out.add(t * tap_len + (d * lg.vectors + v) * S::LANES);
                S::store(p, S::add(S::load(p), sum));
            }
        }
    }
}

/// The sums of [`group_lanes_wgrad`] over its pixels, each row read from channel `ch` (`n`
/// lanes of it where `PARTIAL`).
///
/// # Safety
/// As [`group_lanes_wgrad`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_lanes_wgrad_sums<S: Simd, const CG: usize, const T: usize, const PARTIAL: bool>(
    x: &[*const S::E],
    stride: usize,
    len: usize,
    dy: *const S::E,
    ldy: usize,
    ch: usize,
    n: usize,
    rotations: &[S::Ix; MAX_GROUP],
) -> [[S::V; CG]; T] {
    // SAFETY: the caller's bounds (see `group_lanes_wgrad`).
    unsafe {
        let load = |p: *const S::E| {
            if PARTIAL {
                S::load_partial(p, n)
            } else {
                S::load(p)
            }
        };
        let mut acc = [[S::zero(); CG]; T];
        let mut row = dy.add(ch);
        for p in 0..len {
            let g = load(row);
            // The pixels' rows lie apart (a strided or padded window's), so the hardware's
            // prefetchers do not foresee them: ask for the rows a few pixels ahead. Tap t's
            // pointers are `x[t * stride..][..len]`, so the pointer read is within them.
            if p + WGRAD_AHEAD < len {
                for t in 0..T {
                    prefetch(
                        x.get_unchecked(t * stride + p + WGRAD_AHEAD)
                            .wrapping_add(ch),
                    );
                }
            }
            for (t, sums) in acc.iter_mut().enumerate() {
                let xv = load(x.get_unchecked(t * stride + p).add(ch));
                for (d, a) in sums.iter_mut().enumerate() {
                    let rotated = if d == 0 {
                        xv
                    } else {
                        S::permute(xv, rotations[d])
                    };
                    *a = S::fma(rotated, g, *a);
                }
            }
            row = row.add(ldy);
        }
        acc
    }
}

/// How many pixels ahead a weight-gradient tile asks the cache for its input rows: far
/// enough for a line to arrive from memory before its pixel's turn.
const WGRAD_AHEAD: usize = 16;

/// The taps a [`group_lanes_wgrad`] call takes for groups of `cg` channels: enough for about
/// eight independent sums or more, up to three taps.
pub(crate) fn group_lanes_wgrad_taps(cg: usize) -> usize {
    match cg {
        0..=4 => 3,
        _ => 2,
    }
}

/// [`group_lanes_wgrad`] for `taps` taps (at most `group_lanes_wgrad_taps(lg.cg)`), with
/// the group's channel count and `taps` as constants.
///
/// # Safety
/// As [`group_lanes_wgrad`], with `lg.cg <= MAX_GROUP`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn group_lanes_wgrad_block<S: Simd>(
    x: &[*const S::E],
    stride: usize,
    len: usize,
    taps: usize,
    dy: *const S::E,
    ldy: usize,
    lg: GroupLanes,
    rotations: &[S::Ix; MAX_GROUP],
    v: usize,
    out: *mut S::E,
) {
    macro_rules! shapes {
        ($(($cg:literal, $t:literal))*) => {
            match (lg.cg, taps) {
                $(($cg, $t) => group_lanes_wgrad::<S, $cg, $t>(
                    x, stride, len, dy, ldy, lg, rotations, v, out
                ),)*
                other => unreachable!("a group-lanes weight gradient of (groups, taps) {other:?}"),
            }
        };
    }
    // SAFETY: passed on.
    unsafe {
        shapes!(
            (1, 1)(1, 2)(1, 3)(2, 1)(2, 2)(2, 3)(3, 1)(3, 2)(3, 3)(4, 1)(4, 2)(4, 3)(5, 1)(5, 2)(
                6, 1
            )(6, 2)(7, 1)(7, 2)(8, 1)(8, 2)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available;
    use crate::simd::{simd_call, tile_shape, Element};
    use candle_core::WithDType;

    /// Packing by columns of a strided source, and by rows put in any order, lays out the
    /// same values as packing value by value, in every panel shape (a narrow last panel,
    /// partial column blocks, long depths).
    #[test]
    fn packing_by_columns_and_by_rows_matches_packing_by_values() {
        for (n, depth, lanes, nv_max) in [(37, 5, 16, 4), (64, 1030, 16, 2), (9, 513, 8, 3)] {
            let b = values(n * depth, 7);
            let by_values = Packed::new(n, depth, lanes, nv_max, |row, col| b[row * n + col]);
            // Row r at offset r * n, columns one apart: the transposed layout of a weight.
            let by_columns = Packed::from_columns(n, depth, lanes, nv_max, &b, 1, |r| r * n);
            // Two sources, each putting every other row, last first.
            // SAFETY: source s puts rows r with r % 2 == s, each once, of n values.
            let by_rows = unsafe {
                Packed::from_rows(n, depth, lanes, nv_max, 2, |s, put| {
                    for r in (s..depth).step_by(2).rev() {
                        put(r, &b[r * n..][..n]);
                    }
                })
            };
            for (packed, how) in [(&by_columns, "by columns"), (&by_rows, "by rows")] {
                assert_eq!(
                    by_values.data[..],
                    packed.data[..],
                    "{how}: n {n}, depth {depth}"
                );
                assert_eq!(by_values.panels.len(), packed.panels.len());
            }
            assert!(by_values.data.iter().any(|&v| v != 0.0));
        }
    }

    /// A weight-gradient tile's lookahead asks for every line of its two runs, once, in
    /// order, however it is shared out.
    #[test]
    fn lookahead_shares_ask_for_each_line_once_in_order() {
        let (a, b) = (vec![0f32; 1000], vec![0f32; 300]);
        let ahead = Lookahead::of([(a[3..].as_ptr(), 500), (b[7..].as_ptr(), 100)]);
        let lines_of = |p: *const f32, len: usize| {
            let (start, end) = (p as usize, p as usize + 4 * len);
            (start / 64..end.div_ceil(64)).map(|l| l * 64)
        };
        let expected: Vec<usize> = lines_of(a[3..].as_ptr(), 500)
            .chain(lines_of(b[7..].as_ptr(), 100))
            .collect();
        let asked = |l: Lookahead| (0..l.lines()).map(move |j| l.line(j));
        assert_eq!(asked(ahead).collect::<Vec<_>>(), expected);
        for count in [1, 2, 3, 7, 40, 1000] {
            let shared: Vec<usize> = (0..count)
                .flat_map(|k| asked(ahead.share(k, count)))
                .collect();
            assert_eq!(shared, expected, "{count} shares");
        }
        assert_eq!(Lookahead::of([(a.as_ptr(), 0), (b.as_ptr(), 0)]).lines(), 0);
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        // A small deterministic stream (xorshift) in [-1, 1).
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// Row r, tap t of the test product reads source row (r * 7 + t * 3) % 11, or zeros
    /// where that is beyond the 9 source rows.
    fn pick(r: usize, t: usize) -> usize {
        (r * 7 + t * 3) % 11
    }

    /// The test product through `igemm_panel` tile by tile.
    ///
    /// # Safety
    /// The CPU runs `S`.
    unsafe fn tiled_product<S: Simd, const MR: usize>(
        source: &[S::E],
        kc: usize,
        taps: usize,
        rows: usize,
        packed: &Packed<S::E>,
        n: usize,
    ) -> Vec<S::E> {
        let zero = vec![S::E::from_f64(0.0); kc];
        let mut out = vec![S::E::from_f64(0.0); rows * n];
        for tile in (0..rows).step_by(MR) {
            let valid = (rows - tile).min(MR);
            let mut a = vec![zero.as_ptr(); taps * MR];
            for i in 0..valid {
                for t in 0..taps {
                    let s = pick(tile + i, t);
                    if s < source.len() / kc {
                        a[t * MR + i] = source[s * kc..].as_ptr();
                    }
                }
            }
            let base = out.as_mut_ptr();
            for panel in &packed.panels {
                let c: [*mut S::E; MR] =
                    std::array::from_fn(|i| base.wrapping_add((tile + i.min(valid - 1)) * n));
                // SAFETY: pointers cover kc values, the panel is packed for taps * kc rows,
                // and each output row has panel.width values from panel.col.
                unsafe {
                    igemm_panel::<S, MR>(
                        &a,
                        &a,
                        0,
                        taps,
                        kc,
                        packed.data.as_ptr().add(panel.offset),
                        *panel,
                        &c,
                        panel.col,
                        valid,
                        0,
                    )
                };
            }
        }
        out
    }

    /// An indirect product with row pointers at scattered rows and at the zero row, against
    /// a plain f64 sum, for every path, f32 and f64, panel widths from 1 to 70 and partial
    /// row tiles.
    fn igemm_matches_reference<T: Element>(isa: crate::isa::Isa, tol: f64) {
        let (rows, taps, kc) = (13, 3, 7);
        let source_rows = 9;
        let source: Vec<T> = values(source_rows * kc, 1)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let (lanes, nv_max, _) = tile_shape::<T>(isa);
        for n in [1, 5, 16, 17, 40, 64, 70] {
            let weights = values(taps * kc * n, 2 + n as u64);
            let packed = Packed::new(n, taps * kc, lanes, nv_max, |k, col| {
                T::from_f64(weights[k * n + col])
            });
            let out = simd_call!(isa, T, tiled_product(&source, kc, taps, rows, &packed, n));
            for r in 0..rows {
                for col in 0..n {
                    let mut expect = 0.0;
                    for t in 0..taps {
                        let s = pick(r, t);
                        if s < source_rows {
                            for k in 0..kc {
                                expect +=
                                    source[s * kc + k].to_f64() * weights[(t * kc + k) * n + col];
                            }
                        }
                    }
                    let got = out[r * n + col].to_f64();
                    assert!(
                        (got - expect).abs() <= tol,
                        "{isa} n={n} ({r}, {col}): {got} vs {expect}"
                    );
                }
            }
        }
    }

    #[test]
    fn indirect_products_match_a_plain_sum_on_every_path() {
        for isa in available() {
            igemm_matches_reference::<f64>(isa, 1e-12);
            igemm_matches_reference::<f32>(isa, 1e-5);
        }
    }

    /// The weight-gradient tile of `rows` rows and `nv` vectors over `pixels` pixels.
    ///
    /// # Safety
    /// The CPU runs `S`; the buffers are as large as the test makes them.
    unsafe fn wgrad_case<S: Simd, const MR: usize>(
        x: &[S::E],
        dy: &[S::E],
        pixels: usize,
        rows: usize,
        width: usize,
        whole_rows: bool,
        out: &mut [S::E],
    ) -> (usize, usize) {
        let nv = width.div_ceil(S::LANES).min(S::NV_MAX);
        let width = width.min(nv * S::LANES);
        let ptrs: Vec<*const S::E> = (0..pixels).map(|p| x[p * 32..].as_ptr()).collect();
        // SAFETY: x rows hold 32 >= 1 + rows values, dy rows 24 (whole vectors of the widest
        // panel fit), out rows 24.
        unsafe {
            wgrad_rows::<S>(
                rows,
                nv,
                &ptrs,
                1,
                dy.as_ptr(),
                24,
                width,
                if whole_rows { 24 } else { width },
                out.as_mut_ptr(),
                24,
                Lookahead::default(),
            )
        };
        (rows, width)
    }

    /// Every row count from 1 to 30 (one tile, several, and the cuts between them), widths
    /// of whole and partial vectors (and, on AVX-512, last vectors of a half vector or
    /// less), and `dy` rows read masked or whole, against a plain sum.
    #[test]
    fn weight_gradient_tiles_match_a_plain_sum_on_every_path() {
        for isa in available() {
            let pixels = 37;
            let x = values(pixels * 32, 5);
            let dy = values(pixels * 24, 6);
            for rows in 1..=30 {
                for (width, whole_rows) in [3, 8, 19, 20, 21]
                    .into_iter()
                    .flat_map(|w| [(w, false), (w, true)])
                {
                    let mut out = vec![0.5; rows * 24];
                    let (rows, width) = simd_call!(
                        isa,
                        f64,
                        wgrad_case(&x, &dy, pixels, rows, width, whole_rows, &mut out)
                    );
                    for i in 0..rows {
                        for j in 0..24 {
                            let expect = if j < width {
                                0.5 + (0..pixels)
                                    .map(|p| x[p * 32 + 1 + i] * dy[p * 24 + j])
                                    .sum::<f64>()
                            } else {
                                0.5
                            };
                            assert!(
                                (out[i * 24 + j] - expect).abs() < 1e-12,
                                "{isa} rows={rows} width={width} whole={whole_rows} ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The sums of one indirect tile of 4 rows and three vectors, the last summed as a
    /// half vector or not (`half`), and of one weight-gradient tile of 3 rows likewise, as
    /// bits: the first two vectors whole, the last `tail` lanes of the third.
    ///
    /// # Safety
    /// The CPU runs `S`; `has_half::<S>()`, `tail <= S::Half::LANES`.
    unsafe fn tiles_in_halves<S: Simd, const MR: usize>(tail: usize, half: bool) -> Vec<u64> {
        let (taps, kc) = (3, 7);
        let width = 2 * S::LANES + tail;
        let to = |v: f64| S::E::from_f64(v);
        let source: Vec<S::E> = values(4 * kc, 11).into_iter().map(to).collect();
        let b: Vec<S::E> = values(taps * kc * 3 * S::LANES, 12)
            .into_iter()
            .enumerate()
            // The packed panel's lanes past the width are zeros.
            .map(|(i, v)| to(if i % (3 * S::LANES) < width { v } else { 0.0 }))
            .collect();
        let a: Vec<*const S::E> = (0..taps * 4)
            .map(|i| source[(i % 4) * kc..].as_ptr())
            .collect();
        let mut out = vec![S::E::from_f64(0.0); 4 * width];
        let c: Vec<*mut S::E> = (0..4).map(|i| out[i * width..].as_mut_ptr()).collect();
        let dy: Vec<S::E> = values(9 * 3 * S::LANES, 13).into_iter().map(to).collect();
        let x: Vec<S::E> = values(9 * 3, 14).into_iter().map(to).collect();
        let xp: Vec<*const S::E> = (0..9).map(|p| x[p * 3..].as_ptr()).collect();
        let mut bits: Vec<u64> = Vec::new();
        // SAFETY: the buffers hold what the tiles read and write (the CPU runs `S`, and
        // `tail` fits the half vector: the caller's promise).
        unsafe {
            let args = (
                &a[..],
                4,
                0,
                0,
                taps,
                kc,
                b.as_ptr(),
                &c[..],
                0,
                4,
                width,
                (0, 0),
            );
            if half {
                let (a, st, o, sk, t, k, b, c, col, v, w, n) = args;
                igemm_tile::<S, 4, 3, true>(a, a, st, o, sk, t, k, b, c, col, v, w, n);
            } else {
                let (a, st, o, sk, t, k, b, c, col, v, w, n) = args;
                igemm_tile::<S, 4, 3, false>(a, a, st, o, sk, t, k, b, c, col, v, w, n);
            }
            bits.extend(out.iter().map(|v| v.to_f64().to_bits()));
            let mut lanes = vec![S::E::from_f64(0.0); 3 * S::LANES];
            let ldy = 3 * S::LANES;
            if half {
                let (acc, acc_half) = wgrad_sums::<S, 3, 3, false, true>(
                    &xp,
                    0,
                    dy.as_ptr(),
                    ldy,
                    tail,
                    Lookahead::default(),
                );
                for (row, last) in acc.iter().zip(acc_half) {
                    S::store(lanes.as_mut_ptr(), row[0]);
                    S::store(lanes.as_mut_ptr().add(S::LANES), row[1]);
                    S::Half::store(lanes.as_mut_ptr().add(2 * S::LANES), last);
                    bits.extend(lanes[..width].iter().map(|v| v.to_f64().to_bits()));
                }
            } else {
                let (acc, _) = wgrad_sums::<S, 3, 3, false, false>(
                    &xp,
                    0,
                    dy.as_ptr(),
                    ldy,
                    tail,
                    Lookahead::default(),
                );
                for row in acc {
                    for (j, &v) in row.iter().enumerate() {
                        S::store(lanes.as_mut_ptr().add(j * S::LANES), v);
                    }
                    bits.extend(lanes[..width].iter().map(|v| v.to_f64().to_bits()));
                }
            }
        }
        bits
    }

    /// Whether the path of `S` has half vectors.
    ///
    /// # Safety
    /// None; `unsafe` for `simd_call!`.
    unsafe fn path_has_half<S: Simd, const MR: usize>() -> bool {
        has_half::<S>()
    }

    /// Where a path has half vectors, a tile's last columns summed in one give the same
    /// sums as a whole vector, bit for bit, in the indirect products and the weight
    /// gradient's tiles, f32 and f64, for a half vector whole and part-filled.
    #[test]
    fn half_vectors_give_the_whole_vectors_sums_bit_for_bit() {
        let mut compared = 0;
        for isa in available() {
            if simd_call!(isa, f32, path_has_half()) {
                for tail in [1, 3, 8] {
                    let whole = simd_call!(isa, f32, tiles_in_halves(tail, false));
                    let halves = simd_call!(isa, f32, tiles_in_halves(tail, true));
                    assert!(whole.iter().any(|&b| b != 0), "{isa} f32 tail {tail}");
                    assert_eq!(halves, whole, "{isa} f32 tail {tail}");
                    compared += 1;
                }
            }
            if simd_call!(isa, f64, path_has_half()) {
                for tail in [1, 4] {
                    let whole = simd_call!(isa, f64, tiles_in_halves(tail, false));
                    let halves = simd_call!(isa, f64, tiles_in_halves(tail, true));
                    assert_eq!(halves, whole, "{isa} f64 tail {tail}");
                }
            }
        }
        let avx512 = available()
            .iter()
            .any(|&i| crate::simd::VectorPath::of(i) == crate::simd::VectorPath::Avx512);
        assert!(
            !avx512 || compared > 0,
            "no path with half vectors compared"
        );
    }
}
