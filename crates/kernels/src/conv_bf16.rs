//! The convolution's three products in bf16 with f32 accumulation, on a bf16 unit (AMX or
//! AVX512-BF16; see `bf16`). The geometry, the gathers and the splits are `conv`'s: rows
//! are the batch's pixels, each reading the input through one pointer per tap; here a block
//! of 32 rows is packed (rounded to bf16) once and multiplied by every panel of packed
//! weights.
//!
//! - forward: A = the input rows (taps x channels), B = the weights [(tap, ci), co];
//! - input gradient: per stride class, A = the output-gradient rows of the class's taps,
//!   B = the weights [(tap, co), ci];
//! - weight gradient (transposed): C = dW^T [co, (tap, ci)], A = the output gradient's
//!   channels over a chunk of pixels, B = the input rows of the chunk in pixel pairs; C
//!   accumulates over the chunks, split as `conv::grad_split` decides.

use std::ops::Range;

use rayon::prelude::*;

use crate::bf16::{
    address_range, interleave_rows, pack_row_unit, padded_k, transpose_rows, Lines, Sink, Source,
    Unit, Vnni, BLOCK,
};
use crate::conv::{
    classes, forward_pointers, grad_split, ranges, sum_parts, tap_offsets, window_inside,
    written_by, Geometry, CHUNK,
};
use crate::cpu::SendPtr;
use crate::isa::Isa;

/// Rows of one task: whole blocks.
const TASK_ROWS: usize = 4 * BLOCK;
/// Bytes of a packed B past which a product multiplies a task's blocks by each panel in
/// turn, rather than each block by every panel (see `block_rows`): somewhat under the
/// second-level cache of the cores that have bf16 units (2 MB on Sapphire Rapids, 1 MB on
/// Zen 4), which the blocks' A and C share.
const WIDE_B: usize = 3 << 19;

/// Rows `rows` of a product, for consecutive groups, a pass of rows at a time (a block of
/// 32, or where B outgrows `WIDE_B` bytes a task's rows, up to `TASK_ROWS`): the rows' tap
/// pointers (`pointers`, the first group's) found once; for each group j (B =
/// `groups[j]`), the same pointers shifted by j * `steps.0` values, packed into A block by
/// block (or, where the unit reads bf16 rows where they lie, not packed), then every panel
/// of B times each block of the pass, so that a wide B (the late stages' weights,
/// megabytes, that outgrow the cache) is read once per pass rather than once per block;
/// each block's C copied to the rows' outputs (`out_row(r)` shifted by j * `steps.1`, `b.n`
/// values from it), as f32 or rounded to bf16. Every block's product is the same
/// whichever the pass: the same bits.
///
/// `in_place`: Some(s) where each row has one tap and row r + 1's pointer is row r's plus
/// s values (the products of a 1x1, stride-1 convolution). A whole block of bf16 rows whose
/// depth needs no padding is then read where it lies, with no copy.
///
/// `zero` is the zero row (`zero_len` values) that the pointers of taps in the padding
/// point into.
///
/// # Safety
/// Pointers shifted for any of the groups are valid for `kc` reads; `out_row(r)` shifted
/// for group j is valid for `groups[j].n` writes for every row r of `rows`; each B is
/// `taps * kc` deep; `in_place` tells the truth.
#[allow(clippy::too_many_arguments)]
unsafe fn block_rows<X: Source, O: Sink>(
    unit: Unit,
    isa: Isa,
    rows: Range<usize>,
    taps: usize,
    kc: usize,
    (zero, zero_len): (*const X, usize),
    (groups, steps): (&[Vnni], (usize, usize)),
    in_place: Option<usize>,
    pointers: impl Fn(usize, &mut [*const X]),
    out_row: impl Fn(usize) -> *mut O,
) {
    const BLOCKS: usize = TASK_ROWS / BLOCK;
    let kpad = groups[0].kpad;
    let pass = if groups[0].data.len() * 2 > WIDE_B {
        TASK_ROWS
    } else {
        BLOCK
    };
    let in_place = in_place.filter(|_| !X::F32 && taps == 1 && kc == kpad);
    // bf16 rows the unit can read where they lie (see `Unit::reads_rows`) are not packed.
    let by_rows = !X::F32 && unit.reads_rows(kc);
    let mut a = Lines::<u16>::zeroed(if by_rows { 0 } else { pass * kpad });
    let mut table = vec![zero; pass * taps];
    let mut shifted = vec![zero; taps];
    let mut c = Lines::<f32>::zeroed(BLOCK * BLOCK);
    let zeros = address_range(zero, zero_len);
    let _ = isa;
    unit.session(
        #[inline(always)]
        || {
            let mut start = rows.start;
            while start < rows.end {
                let end = (start + pass).min(rows.end);
                let blocks = (end - start).div_ceil(BLOCK);
                let valid = |block: usize| (end - start - block * BLOCK).min(BLOCK);
                for (i, pointers_of_row) in table
                    .chunks_exact_mut(taps)
                    .take(blocks * BLOCK)
                    .enumerate()
                {
                    if start + i < end {
                        pointers(start + i, pointers_of_row);
                    } else {
                        pointers_of_row.fill(zero);
                    }
                }
                // bf16 pointers are their bits' (`Source` for bf16; only bf16 rows are read
                // where they lie).
                // SAFETY: *const X and *const u16 have one layout.
                let table_bits = unsafe {
                    std::slice::from_raw_parts(table.as_ptr() as *const *const u16, table.len())
                };
                let block_table = |block: usize| &table[block * BLOCK * taps..][..BLOCK * taps];
                for (j, b) in groups.iter().enumerate() {
                    let shift = j * steps.0;
                    let mut operands = [Operand::Rows; BLOCKS];
                    for (block, operand) in operands.iter_mut().enumerate().take(blocks) {
                        *operand = match in_place {
                            // bf16 values are their bits (`Source` for bf16).
                            Some(apart) if valid(block) == BLOCK => Operand::InPlace(
                                block_table(block)[0].wrapping_add(shift) as *const u16,
                                apart,
                            ),
                            _ if by_rows => Operand::Rows,
                            _ => {
                                let packed_rows = &mut a[block * BLOCK * kpad..][..BLOCK * kpad];
                                for (i, packed) in packed_rows.chunks_exact_mut(kpad).enumerate() {
                                    if i < valid(block) {
                                        let row = &block_table(block)[i * taps..(i + 1) * taps];
                                        for (to, &from) in shifted.iter_mut().zip(row) {
                                            *to = from.wrapping_add(shift);
                                        }
                                        // SAFETY: the caller's promise for the pointers.
                                        unsafe { pack_row_unit(packed, &shifted, kc, &zeros) };
                                    } else {
                                        packed.fill(0);
                                    }
                                }
                                Operand::Packed
                            }
                        };
                    }
                    for p in 0..b.panels() {
                        let width = (b.n - p * BLOCK).min(BLOCK);
                        for (block, operand) in operands.iter().enumerate().take(blocks) {
                            let first = start + block * BLOCK;
                            // SAFETY: A is 32 rows of kpad, lda apart (packed, or the
                            // caller's rows in place), or 32 rows of pointers to kc bf16
                            // values per tap once shifted (the caller's, or the zero row's,
                            // which holds kc values past any group's shift); the panel kpad
                            // >= taps * kc deep, C 32 x 32.
                            unsafe {
                                let a_rows = match *operand {
                                    Operand::InPlace(at, apart) => Some((at, apart)),
                                    Operand::Packed => {
                                        Some((a[block * BLOCK * kpad..].as_ptr(), kpad))
                                    }
                                    Operand::Rows => None,
                                };
                                match a_rows {
                                    Some((a_ptr, lda)) => unit.block(
                                        a_ptr,
                                        lda,
                                        kpad,
                                        b.panel(p),
                                        c.as_mut_ptr(),
                                        BLOCK,
                                        false,
                                        (valid(block), width),
                                    ),
                                    None => unit.block_of_rows(
                                        (
                                            &table_bits[block * BLOCK * taps..][..BLOCK * taps],
                                            shift,
                                        ),
                                        taps,
                                        kc,
                                        b.panel(p),
                                        c.as_mut_ptr(),
                                        BLOCK,
                                        (valid(block), width),
                                    ),
                                }
                            };
                            for i in 0..valid(block) {
                                // SAFETY: the row's output holds b.n values past the group's
                                // shift (the caller's promise).
                                unsafe {
                                    O::store_run(
                                        out_row(first + i).add(j * steps.1 + p * BLOCK),
                                        &c[i * BLOCK..i * BLOCK + width],
                                    )
                                };
                            }
                        }
                    }
                }
                start = end;
            }
        },
    );
}

/// Where a block's A comes from in `block_rows`.
#[derive(Clone, Copy)]
enum Operand {
    /// bf16 rows read where they lie: the first row, and the values between rows.
    InPlace(*const u16, usize),
    /// Packed into the block's rows of the task's A.
    Packed,
    /// Read through the rows' tap pointers (`Unit::block_of_rows`).
    Rows,
}

/// Tasks of a product over `rows` rows and `groups` groups: ranges of rows by ranges of
/// consecutive groups, whole groups per task where the rows alone make enough tasks (so
/// that a block's pointers serve every group), fewer where they do not.
fn row_and_group_tasks(rows: usize, groups: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let row_tasks = rows.div_ceil(TASK_ROWS);
    let group_tasks = crate::conv::GRAD_TASKS
        .div_ceil(row_tasks.max(1))
        .clamp(1, groups.max(1));
    ranges(groups, groups.div_ceil(group_tasks))
        .flat_map(|g| ranges(rows, TASK_ROWS).map(move |r| (g.clone(), r)))
        .collect()
}

/// y = conv(x, w) in bf16 products: [n, ho, wo, c_out], f32 or rounded to bf16.
pub(crate) fn forward<X: Source, O: Sink>(
    x: &[X],
    w: &[f32],
    geo: &Geometry,
    unit: Unit,
    isa: Isa,
) -> Vec<O> {
    let (cgi, cgo, taps) = (geo.cgi(), geo.cgo(), geo.taps());
    // B's column co is output channel co's weights [cgi, k, k] in the order (tap, ci).
    let packed: Vec<Vnni> = (0..geo.groups)
        .map(|g| {
            Vnni::from_columns(taps * cgi, cgo, |p, columns| {
                let kpad = columns.len() / BLOCK;
                for (j, column) in columns.chunks_exact_mut(kpad).enumerate() {
                    let co = p * BLOCK + j;
                    if co >= cgo {
                        break;
                    }
                    let weights = &w[(g * cgo + co) * cgi * taps..][..cgi * taps];
                    for (ci, of_ci) in weights.chunks_exact(taps).enumerate() {
                        for (t, &v) in of_ci.iter().enumerate() {
                            column[t * cgi + ci] = v;
                        }
                    }
                }
            })
        })
        .collect();
    let zero = vec![X::ZERO; geo.c];
    let offsets = tap_offsets(geo);
    let (xp, zp) = (
        SendPtr(x.as_ptr() as *mut X),
        SendPtr(zero.as_ptr() as *mut X),
    );
    let rows = geo.out_pixels();
    // A 1x1, stride-1 convolution reads input row r for output row r.
    let in_place = (geo.k == 1 && geo.stride == 1 && geo.pad == 0).then_some(geo.c);
    let tasks = row_and_group_tasks(rows, geo.groups);
    // SAFETY: the tasks cover every (row, group) once and write the groups' columns.
    unsafe {
        written_by(rows * geo.c_out, |out: SendPtr<O>| {
            tasks.par_iter().for_each(|(groups, rows)| {
                let g = groups.start;
                block_rows(
                    unit,
                    isa,
                    rows.clone(),
                    taps,
                    cgi,
                    (zp.get(), geo.c),
                    (&packed[groups.clone()], (cgi, cgo)),
                    in_place,
                    |r, row| {
                        forward_pointers(geo, &offsets, xp.get(), zp.get(), g * cgi, r, |t, p| {
                            row[t] = p
                        })
                    },
                    |r| out.get().wrapping_add(r * geo.c_out + g * cgo),
                )
            })
        })
    }
}

/// dx of y = conv(x, w) given dy (f32 or bf16), in bf16 products: [n, h, w, c], f32 or
/// rounded to bf16.
pub(crate) fn input_grad<D: Source, O: Sink>(
    dy: &[D],
    w: &[f32],
    geo: &Geometry,
    unit: Unit,
    isa: Isa,
) -> Vec<O> {
    let (cgi, cgo, taps) = (geo.cgi(), geo.cgo(), geo.taps());
    let classes = classes(geo);
    let packed: Vec<Vec<Vnni>> = classes
        .iter()
        .map(|class| {
            // B's column ci is input channel ci's weights in the order (class tap, o); a
            // panel reads its 32 channels' weights from each output channel's in turn.
            (0..geo.groups)
                .map(|g| {
                    Vnni::from_columns(class.taps.len() * cgo, cgi, |p, columns| {
                        let kpad = columns.len() / BLOCK;
                        let cis = (p * BLOCK)..((p + 1) * BLOCK).min(cgi);
                        for o in 0..cgo {
                            let weights = &w[(g * cgo + o) * cgi * taps..][..cgi * taps];
                            for (j, ci) in cis.clone().enumerate() {
                                let of_ci = &weights[ci * taps..][..taps];
                                let column = &mut columns[j * kpad..][..kpad];
                                for (ti, &(ky, kx)) in class.taps.iter().enumerate() {
                                    column[ti * cgo + o] = of_ci[ky * geo.k + kx];
                                }
                            }
                        }
                    })
                })
                .collect()
        })
        .collect();
    let zero = vec![D::ZERO; geo.c_out];
    let (dyp, zp) = (
        SendPtr(dy.as_ptr() as *mut D),
        SendPtr(zero.as_ptr() as *mut D),
    );
    // A 1x1, stride-1 convolution's one class reads gradient row r for input row r.
    let in_place = (geo.k == 1 && geo.stride == 1 && geo.pad == 0).then_some(geo.c_out);
    let mut tasks: Vec<(usize, Range<usize>, Range<usize>)> = Vec::new();
    for (ci, class) in classes.iter().enumerate() {
        let groups = if class.taps.is_empty() { 1 } else { geo.groups };
        for (g, r) in row_and_group_tasks(class.rows(geo), groups) {
            tasks.push((ci, g, r));
        }
    }
    // SAFETY: the classes partition the input pixels; within a class the tasks cover every
    // row and group once (tap-less classes one task per row range, for all groups); they
    // write their rows' zeros.
    unsafe {
        written_by(geo.in_pixels() * geo.c, |out: SendPtr<O>| {
            tasks.par_iter().for_each(|(ci, groups, rows)| {
                let class = &classes[*ci];
                let g = groups.start;
                if class.taps.is_empty() {
                    for r in rows.clone() {
                        // Zero is all-zero bits in f32 and in bf16.
                        std::ptr::write_bytes(out.get().add(class.offset(geo, r)), 0, geo.c);
                    }
                    return;
                }
                block_rows::<D, O>(
                    unit,
                    isa,
                    rows.clone(),
                    class.taps.len(),
                    cgo,
                    (zp.get(), geo.c_out),
                    (&packed[*ci][groups.clone()], (cgo, cgi)),
                    in_place,
                    |r, row| {
                        class.pointers(geo, dyp.get(), zp.get(), g * cgo, r, |t, p| row[t] = p)
                    },
                    |r| out.get().wrapping_add(class.offset(geo, r) + g * cgi),
                )
            })
        })
    }
}

/// dw of y = conv(x, w) given dy (f32 or bf16), in bf16 products, in torchvision's layout.
///
/// One operand of the weight gradient is transposed (K is the pixels), which costs more
/// than pairing the other's rows when the transposed side is wide: a 1x1 convolution that
/// widens (more output than input channels) transposes its input instead of its output
/// gradient. Both orders give the same bits: each sum takes the same pixel pairs in the
/// same order, chunk by chunk and split by split, and the units' pair products are
/// symmetric in their operands.
pub(crate) fn weight_grad<X: Source, D: Source>(
    x: &[X],
    dy: &[D],
    geo: &Geometry,
    unit: Unit,
    isa: Isa,
) -> Vec<f32> {
    if geo.taps() == 1 && geo.cgi() < geo.cgo() {
        weight_grad_by_input_columns(x, dy, geo, unit, isa)
    } else {
        weight_grad_by_gradient_columns(x, dy, geo, unit, isa)
    }
}

/// `f` as it is: binds an `#[inline(always)]` closure to a name (attributes on closures are
/// stable in argument position only). Inlined, it is compiled with the unit's features of
/// the session that calls it.
fn named<F>(f: F) -> F {
    f
}

/// Room for `len` f32 values, the first at the start of a cache line (see `Lines`), not
/// yet written: the buffer, its length the index of that first value (the values before
/// it are zeros).
fn line_aligned_room(len: usize) -> (Vec<f32>, usize) {
    let mut room: Vec<f32> = Vec::with_capacity(len + 16);
    let first = room.as_ptr().align_offset(64).min(16);
    room.resize(first, 0f32);
    (room, first)
}

/// The pixels of a weight-gradient chunk, the same in both orders of the product: its
/// packed input (B, `taps * cgi` columns on the input side) stays within about 1 MB.
/// Where the tasks split those columns into blocks (a weight larger than the output
/// gradient: the late stages), each task packs only its block, and the chunk grows to
/// 512 pixels as long as that block's B fits: a task reads and writes its tiles of C once
/// per chunk, and in those layers they outgrow the second-level cache. Chunks stay whole
/// K steps, so each sum takes the same pixel pairs in the same order whatever the chunk.
fn grad_chunk(geo: &Geometry) -> usize {
    let n = geo.taps() * geo.cgi();
    let base = if n > 1024 { CHUNK } else { 2 * CHUNK };
    let panels = n.div_ceil(BLOCK);
    let (blocks, _) = grad_split(geo, geo.groups, panels, false);
    if blocks <= 1 {
        return base;
    }
    let task_columns = panels.div_ceil(blocks) * BLOCK;
    let mut chunk = base;
    while chunk < 4 * CHUNK && 2 * chunk * task_columns * 2 <= 1 << 20 {
        chunk *= 2;
    }
    chunk
}

/// A of a weight gradient's chunks of pixels, each `m_blocks` blocks of rows
/// `padded_k(len)` apart whose first `rows` hold values: built by `fill(g, first, len, a)`
/// after the zeros the blocks need. Where
/// the tasks split the columns (`blocks` > 1; never the pixels, then) they all multiply the
/// same A, so every chunk of every group is built once, in parallel, and shared; otherwise
/// each task builds its chunks into its own buffers (`TaskChunk`).
struct ChunksOfA<F> {
    fill: F,
    rows: usize,
    m_blocks: usize,
    chunk: usize,
    chunks_per_group: usize,
    shared: Option<Vec<Lines<u16>>>,
}

/// A task's buffers for the chunks of A it builds itself (empty where A is shared).
struct TaskChunk {
    a: Lines<u16>,
}

impl<F: Fn(usize, usize, usize, &mut [u16]) + Sync> ChunksOfA<F> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        unit: Unit,
        geo: &Geometry,
        (blocks, splits): (usize, usize),
        chunk: usize,
        (rows, m_blocks): (usize, usize),
        fill: F,
    ) -> Self {
        let pixels = geo.out_pixels();
        let mut chunks = ChunksOfA {
            fill,
            rows,
            m_blocks,
            chunk,
            chunks_per_group: pixels.div_ceil(chunk),
            shared: None,
        };
        if blocks > 1 {
            debug_assert_eq!(splits, 1);
            let parts: Vec<(usize, Range<usize>)> = (0..geo.groups)
                .flat_map(|g| ranges(pixels, chunk).map(move |part| (g, part)))
                .collect();
            let shared = parts
                .par_iter()
                .map(|(g, part)| {
                    let mut a = Lines::<u16>::zeroed(m_blocks * BLOCK * padded_k(part.len()));
                    unit.session(
                        #[inline(always)]
                        || chunks.build((*g, part.start, part.len()), &mut a),
                    );
                    a
                })
                .collect();
            chunks.shared = Some(shared);
        }
        chunks
    }

    /// A of group g over pixels first..first + len, into `a`. Inside a unit's session.
    #[inline(always)]
    fn build(&self, (g, first, len): (usize, usize, usize), a: &mut [u16]) {
        // The fill writes its rows whole, zeros past the pixels included; rows past the
        // product's stay zero.
        if self.rows < self.m_blocks * BLOCK {
            a.fill(0);
        }
        (self.fill)(g, first, len, a)
    }

    fn task_buffers(&self) -> TaskChunk {
        let own = self.shared.is_none();
        TaskChunk {
            a: Lines::zeroed(if own {
                self.m_blocks * BLOCK * padded_k(self.chunk)
            } else {
                0
            }),
        }
    }

    /// A of group g over the chunk of pixels `first..first + len` (`first` a chunk's start,
    /// from 0 when A is shared): the shared one, or built into the task's buffers. Inside a
    /// unit's session.
    #[inline(always)]
    fn get<'a>(
        &'a self,
        (g, first, len): (usize, usize, usize),
        task: &'a mut TaskChunk,
    ) -> &'a [u16] {
        match &self.shared {
            Some(shared) => &shared[g * self.chunks_per_group + first / self.chunk],
            None => {
                self.build((g, first, len), &mut task.a);
                &task.a
            }
        }
    }
}

/// dw^T [co, (tap, ci)]: A = the output gradient's channels over a chunk of pixels
/// (transposed), B = the input rows of the chunk's taps in pixel pairs.
fn weight_grad_by_gradient_columns<X: Source, D: Source>(
    x: &[X],
    dy: &[D],
    geo: &Geometry,
    unit: Unit,
    isa: Isa,
) -> Vec<f32> {
    let (cgi, cgo, taps) = (geo.cgi(), geo.cgo(), geo.taps());
    let n = taps * cgi;
    let panels = n.div_ceil(BLOCK);
    let m_blocks = cgo.div_ceil(BLOCK);
    let pixels = geo.out_pixels();
    let chunk = grad_chunk(geo);
    let (blocks, splits) = grad_split(geo, geo.groups, panels, false);
    let panel_blocks: Vec<Range<usize>> = ranges(panels, panels.div_ceil(blocks)).collect();
    let tile = BLOCK * BLOCK;
    // Per split, C as tiles [group][m block][panel][32][32]. Each task zeroes its own tiles
    // of its split before summing into them (in parallel, and into its cache) rather than
    // the whole buffer being zeroed first.
    let part_len = geo.groups * m_blocks * panels * tile;
    let (mut parts, first) = line_aligned_room(splits * part_len);
    let pp = SendPtr(parts.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let zero = vec![X::ZERO; geo.c];
    let zeros = address_range(zero.as_ptr(), zero.len());
    let offsets = tap_offsets(geo);
    let (xp, zp) = (
        SendPtr(x.as_ptr() as *mut X),
        SendPtr(zero.as_ptr() as *mut X),
    );
    // Each tap reads whole input pixels (one group), so a window's kernel row is one run.
    let whole_pixels = cgi == geo.c;
    // A: the gradient's channels of group g over pixels first..first + len, transposed.
    let fill_a = named(
        #[inline(always)]
        |g: usize, first: usize, len: usize, a: &mut [u16]| {
            // SAFETY: each row is a pixel's, from the group's channels: cgo values; A holds
            // cgo rows of padded_k(len) values.
            unsafe {
                transpose_rows(
                    len,
                    |p| dy[(first + p) * geo.c_out + g * cgo..].as_ptr(),
                    cgo,
                    a.as_mut_ptr(),
                    padded_k(len),
                )
            };
        },
    );
    let chunks_of_a = ChunksOfA::new(unit, geo, (blocks, splits), chunk, (cgo, m_blocks), fill_a);
    let tasks: Vec<(usize, Range<usize>, usize)> = (0..geo.groups)
        .flat_map(|g| {
            let panel_blocks = &panel_blocks;
            panel_blocks
                .iter()
                .flat_map(move |b| (0..splits).map(move |s| (g, b.clone(), s)))
        })
        .collect();
    tasks.par_iter().for_each(|(g, block, s)| {
        for mb in 0..m_blocks {
            let at = s * part_len + ((g * m_blocks + mb) * panels + block.start) * tile;
            // SAFETY: the tiles of this task's group, m block and block of panels in its
            // split, inside `parts`' capacity; no other task writes them.
            unsafe { std::ptr::write_bytes(pp.get().add(at), 0, block.len() * tile) };
        }
        let span = ranges(pixels, pixels.div_ceil(splits))
            .nth(*s)
            .unwrap_or(0..0);
        let kcp = padded_k(chunk);
        let mut task_chunk = chunks_of_a.task_buffers();
        let mut b = Lines::<u16>::zeroed(block.len() * kcp * BLOCK);
        // The pointers of a pair's taps, [tap][pixel of the pair], where the windows are
        // not both inside the image.
        let mut table = vec![zp.get() as *const X; taps * 2];
        let _ = isa;
        unit.session(
            #[inline(always)]
            || {
                for part in ranges(span.len(), chunk) {
                    let first = span.start + part.start;
                    let len = part.len();
                    let kc = padded_k(len);
                    // A: the gradient's channels of the group over the chunk's pixels.
                    let a = chunks_of_a.get((*g, first, len), &mut task_chunk);
                    // B: the input rows of each tap, pixels in pairs, panels of `block`.
                    let cols = (block.start * BLOCK)..(block.end * BLOCK).min(n);
                    // Columns past the product's in the last panel stay zero. (Pairs past
                    // the chunk's pixels meet zeros in A.)
                    if cols.end < block.end * BLOCK {
                        b.fill(0);
                    }
                    // Columns lo..hi of the pair kp, column c read at r0 + (c - origin) and
                    // r1 + (c - origin), in runs of up to 16 columns within one panel.
                    //
                    // SAFETY (of each call): both rows hold the values of columns lo..hi
                    // there.
                    let put = named(
                        #[inline(always)]
                        |b: &mut [u16],
                         kp: usize,
                         (lo, hi): (usize, usize),
                         (r0, r1): (*const X, *const X),
                         origin: usize| {
                            let mut col = lo;
                            while col < hi {
                                let local = col - block.start * BLOCK;
                                let (panel, j) = (local / BLOCK, local % BLOCK);
                                let run = (hi - col).min(BLOCK - j).min(16);
                                let dst = b[(panel * kc + 2 * kp) * BLOCK + 2 * j..].as_mut_ptr();
                                // SAFETY: the caller's promise for the rows; 2 * run slots
                                // from dst lie in the panel's row.
                                unsafe {
                                    interleave_rows(
                                        r0.add(col - origin),
                                        r1.add(col - origin),
                                        dst,
                                        run,
                                    )
                                };
                                col += run;
                            }
                        },
                    );
                    for kp in 0..len.div_ceil(2) {
                        let (p0, p1) = (2 * kp, 2 * kp + 1);
                        let inside = if whole_pixels && p1 < len {
                            window_inside(geo, first + p0).zip(window_inside(geo, first + p1))
                        } else {
                            None
                        };
                        if let Some((base0, base1)) = inside {
                            // Both windows inside the image, each tap reading whole pixels:
                            // a kernel row's taps are one run of k * cgi values in each.
                            let run = geo.k * cgi;
                            for ky in 0..geo.k {
                                let lo = (ky * run).max(cols.start);
                                let hi = ((ky + 1) * run).min(cols.end);
                                if lo < hi {
                                    let row = ky * geo.w * geo.c;
                                    // (the run's columns lie in the kernel row of both
                                    // windows, inside the image)
                                    put(
                                        &mut b,
                                        kp,
                                        (lo, hi),
                                        (
                                            xp.get().wrapping_add(base0 + row) as *const X,
                                            xp.get().wrapping_add(base1 + row) as *const X,
                                        ),
                                        ky * run,
                                    );
                                }
                            }
                            continue;
                        }
                        for (i, p) in [p0, p1].into_iter().enumerate() {
                            if p < len {
                                forward_pointers(
                                    geo,
                                    &offsets,
                                    xp.get(),
                                    zp.get(),
                                    g * cgi,
                                    first + p,
                                    |t, q| table[t * 2 + i] = q,
                                );
                            } else {
                                for t in 0..taps {
                                    table[t * 2 + i] = zp.get();
                                }
                            }
                        }
                        let mut t = 0;
                        while t < taps {
                            let (r0, r1) = (table[t * 2], table[t * 2 + 1]);
                            // Taps whose rows follow each other in memory in both pixels (a
                            // kernel row inside the image, when a tap reads the whole pixel)
                            // are one run of columns.
                            let mut end = t + 1;
                            let apart = |p: *const X, q: *const X, taps: usize| {
                                q == p.wrapping_add(taps * cgi) && !zeros.contains(&(q as usize))
                            };
                            if p1 < len
                                && !zeros.contains(&(r0 as usize))
                                && !zeros.contains(&(r1 as usize))
                            {
                                while end < taps
                                    && apart(r0, table[end * 2], end - t)
                                    && apart(r1, table[end * 2 + 1], end - t)
                                {
                                    end += 1;
                                }
                            }
                            let lo = (t * cgi).max(cols.start);
                            let hi = (end * cgi).min(cols.end);
                            // (the pointers are pixel rows, or the zero row, with cgi values
                            // after the group's offset, and taps t..end of both pixels are
                            // contiguous, so columns lo..hi lie in the rows)
                            put(&mut b, kp, (lo, hi), (r0, r1), t * cgi);
                            t = end;
                        }
                    }
                    for mb in 0..m_blocks {
                        for (local, panel) in block.clone().enumerate() {
                            let c = pp.get().wrapping_add(
                                s * part_len + ((g * m_blocks + mb) * panels + panel) * tile,
                            );
                            // SAFETY: A rows mb*32.. of kc values, the panel kc deep, C a
                            // 32 x 32 tile of this task's (group, panel) in its split.
                            unsafe {
                                unit.block(
                                    a[mb * BLOCK * kc..].as_ptr(),
                                    kc,
                                    kc,
                                    b[local * kc * BLOCK..].as_ptr(),
                                    c,
                                    BLOCK,
                                    true,
                                    (cgo - mb * BLOCK, n - panel * BLOCK),
                                )
                            };
                        }
                    }
                }
            },
        );
    });
    // SAFETY: the tasks cover every group, block of panels and split, and each zeroed its
    // tiles for every m block before adding into them.
    unsafe { parts.set_len(first + splits * part_len) };
    let total = sum_parts(&mut parts[first..], part_len);
    // Weight rows in parallel (the late stages' weights are megabytes).
    let mut grad = vec![0f32; geo.c_out * cgi * taps];
    grad.par_chunks_mut(cgi * taps)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, out)| {
            let (g, co) = (row / cgo, row % cgo);
            let (mb, i) = (co / BLOCK, co % BLOCK);
            for panel in 0..panels {
                let row =
                    &total[((g * m_blocks + mb) * panels + panel) * tile + i * BLOCK..][..BLOCK];
                for (j, &v) in row.iter().enumerate() {
                    let col = panel * BLOCK + j;
                    if col < n {
                        let (t, ci) = (col / cgi, col % cgi);
                        out[ci * taps + t] = v;
                    }
                }
            }
        });
    grad
}

/// dw [ci, co] of a 1x1 convolution: A = the input's channels over a chunk of pixels
/// (transposed), B = the output
/// gradient's rows in pixel pairs. The chunks and splits are those of
/// `weight_grad_by_gradient_columns`, so the sums are the same.
fn weight_grad_by_input_columns<X: Source, D: Source>(
    x: &[X],
    dy: &[D],
    geo: &Geometry,
    unit: Unit,
    isa: Isa,
) -> Vec<f32> {
    let (cgi, cgo) = (geo.cgi(), geo.cgo());
    debug_assert_eq!(geo.taps(), 1);
    let panels = cgo.div_ceil(BLOCK);
    let m_blocks = cgi.div_ceil(BLOCK);
    let pixels = geo.out_pixels();
    let chunk = grad_chunk(geo);
    // The split by pixels is the other order's: it depends on the shapes only, not on the
    // blocks of columns.
    let (blocks, splits) = grad_split(geo, geo.groups, panels, false);
    let panel_blocks: Vec<Range<usize>> = ranges(panels, panels.div_ceil(blocks)).collect();
    let tile = BLOCK * BLOCK;
    // Per split, C as tiles [group][m block][panel][32][32]. Each task zeroes its own tiles
    // of its split before summing into them (in parallel, and into its cache) rather than
    // the whole buffer being zeroed first.
    let part_len = geo.groups * m_blocks * panels * tile;
    let (mut parts, first) = line_aligned_room(splits * part_len);
    let pp = SendPtr(parts.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let (zero_x, zero_dy) = (vec![X::ZERO; geo.c], vec![D::ZERO; geo.c_out]);
    let offsets = tap_offsets(geo);
    let (xp, zxp, dyp, zdp) = (
        SendPtr(x.as_ptr() as *mut X),
        SendPtr(zero_x.as_ptr() as *mut X),
        SendPtr(dy.as_ptr() as *mut D),
        SendPtr(zero_dy.as_ptr() as *mut D),
    );
    // A: the input's channels of group g over pixels first..first + len, transposed.
    let fill_a = named(
        #[inline(always)]
        |g: usize, first: usize, len: usize, a: &mut [u16]| {
            let row = |p: usize| {
                let mut from = zxp.get() as *const X;
                forward_pointers(
                    geo,
                    &offsets,
                    xp.get(),
                    zxp.get(),
                    g * cgi,
                    first + p,
                    |_, q| from = q,
                );
                from
            };
            // SAFETY: a pixel row (or the zero row) holds the group's cgi values after its
            // pointer; A holds cgi rows of padded_k(len) values.
            unsafe { transpose_rows(len, row, cgi, a.as_mut_ptr(), padded_k(len)) };
        },
    );
    let chunks_of_a = ChunksOfA::new(unit, geo, (blocks, splits), chunk, (cgi, m_blocks), fill_a);
    let tasks: Vec<(usize, Range<usize>, usize)> = (0..geo.groups)
        .flat_map(|g| {
            let panel_blocks = &panel_blocks;
            panel_blocks
                .iter()
                .flat_map(move |b| (0..splits).map(move |s| (g, b.clone(), s)))
        })
        .collect();
    tasks.par_iter().for_each(|(g, block, s)| {
        for mb in 0..m_blocks {
            let at = s * part_len + ((g * m_blocks + mb) * panels + block.start) * tile;
            // SAFETY: the tiles of this task's group, m block and block of panels in its
            // split, inside `parts`' capacity; no other task writes them.
            unsafe { std::ptr::write_bytes(pp.get().add(at), 0, block.len() * tile) };
        }
        let span = ranges(pixels, pixels.div_ceil(splits))
            .nth(*s)
            .unwrap_or(0..0);
        let kcp = padded_k(chunk);
        let mut task_chunk = chunks_of_a.task_buffers();
        let mut b = Lines::<u16>::zeroed(block.len() * kcp * BLOCK);
        let cols = (block.start * BLOCK)..(block.end * BLOCK).min(cgo);
        let _ = isa;
        unit.session(
            #[inline(always)]
            || {
                for part in ranges(span.len(), chunk) {
                    let first = span.start + part.start;
                    let len = part.len();
                    let kc = padded_k(len);
                    // A: the input's channels of the group over the chunk's pixels.
                    let a = chunks_of_a.get((*g, first, len), &mut task_chunk);
                    // B: the gradient's rows of the block's columns, pixels in pairs.
                    // Columns past the group's in the last panel stay zero. (Pairs past the
                    // chunk's pixels meet zeros in A.)
                    if cols.end < block.end * BLOCK {
                        b.fill(0);
                    }
                    for kp in 0..len.div_ceil(2) {
                        let (p0, p1) = (first + 2 * kp, first + 2 * kp + 1);
                        let r0 = dyp.get().wrapping_add(p0 * geo.c_out + g * cgo) as *const D;
                        let r1 = if 2 * kp + 1 < len {
                            dyp.get().wrapping_add(p1 * geo.c_out + g * cgo) as *const D
                        } else {
                            zdp.get() as *const D
                        };
                        // Runs of up to 16 columns within one panel.
                        let mut col = cols.start;
                        while col < cols.end {
                            let local = col - cols.start;
                            let (panel, j) = (local / BLOCK, local % BLOCK);
                            let run = (cols.end - col).min(BLOCK - j).min(16);
                            let dst = b[(panel * kc + 2 * kp) * BLOCK + 2 * j..].as_mut_ptr();
                            // SAFETY: the run's columns lie in each row (the group's cgo
                            // values; the zero row holds c_out), and 2 * run slots from dst
                            // in the panel's row.
                            unsafe { interleave_rows(r0.add(col), r1.add(col), dst, run) };
                            col += run;
                        }
                    }
                    for mb in 0..m_blocks {
                        for (local, panel) in block.clone().enumerate() {
                            let c = pp.get().wrapping_add(
                                s * part_len + ((g * m_blocks + mb) * panels + panel) * tile,
                            );
                            // SAFETY: A rows mb*32.. of kc values, the panel kc deep, C a
                            // 32 x 32 tile of this task's (group, panel) in its split.
                            unsafe {
                                unit.block(
                                    a[mb * BLOCK * kc..].as_ptr(),
                                    kc,
                                    kc,
                                    b[local * kc * BLOCK..].as_ptr(),
                                    c,
                                    BLOCK,
                                    true,
                                    (cgi - mb * BLOCK, cgo - panel * BLOCK),
                                )
                            };
                        }
                    }
                }
            },
        );
    });
    // SAFETY: the tasks cover every group, block of panels and split, and each zeroed its
    // tiles for every m block before adding into them.
    unsafe { parts.set_len(first + splits * part_len) };
    let total = sum_parts(&mut parts[first..], part_len);
    // The tiles transposed, a weight row at a time (written column by column, consecutive
    // values would lie a weight row apart, kilobytes in the wide layers, each store
    // missing the cache), rows in parallel.
    let mut grad = vec![0f32; geo.c_out * cgi];
    grad.par_chunks_mut(cgi)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, out)| {
            let (g, co) = (row / cgo, row % cgo);
            let (panel, j) = (co / BLOCK, co % BLOCK);
            for mb in 0..m_blocks {
                let tile_at = &total[((g * m_blocks + mb) * panels + panel) * tile..][..tile];
                let cis = (mb * BLOCK)..((mb + 1) * BLOCK).min(cgi);
                for (i, v) in out[cis].iter_mut().enumerate() {
                    *v = tile_at[i * BLOCK + j];
                }
            }
        });
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;
    use candle_core::DType;

    /// A widening 1x1 convolution's weight gradient is the same bits whichever operand is
    /// transposed, on every unit the machine has, with f32 and bf16 operands: one chunk
    /// and several, odd chunks, splits by pixels, blocks of columns, stride 2, groups,
    /// channel counts off the 16- and 32-wide runs.
    #[test]
    fn both_transposes_of_the_weight_gradient_give_the_same_bits() {
        // (n, c, h, w, c_out, stride, groups)
        let cases = [
            (2, 16, 8, 8, 64, 1, 1),
            (3, 32, 17, 17, 128, 1, 1),
            (2, 24, 9, 9, 40, 2, 1),
            (2, 64, 6, 6, 128, 1, 2),
            (1, 64, 3, 3, 1024, 1, 1),
            (2, 40, 7, 5, 72, 2, 2),
        ];
        let units: Vec<(Isa, Unit)> = crate::isa::available()
            .into_iter()
            .filter_map(|isa| Unit::of(isa).map(|u| (isa, u)))
            .collect();
        for (isa, unit) in units {
            for (i, &(n, c, h, w, c_out, s, g)) in cases.iter().enumerate() {
                let geo = Geometry::new(&[n, h, w, c], &[c_out, c / g, 1, 1], s, 0, g).unwrap();
                assert!(geo.cgi() < geo.cgo());
                let draw = |len: usize, seed: u64| -> Vec<f32> {
                    seeded(&[len], DType::F32, seed).to_vec1().unwrap()
                };
                let x = draw(n * h * w * c, 7 * i as u64);
                let dy = draw(geo.out_pixels() * c_out, 7 * i as u64 + 1);
                let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let dyb: Vec<half::bf16> = dy.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let bits = |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
                let expect = bits(weight_grad_by_gradient_columns(&x, &dy, &geo, unit, isa));
                let what = format!("{isa} case {i} {:?}", cases[i]);
                assert_eq!(
                    bits(weight_grad_by_input_columns(&x, &dy, &geo, unit, isa)),
                    expect,
                    "{what}: f32 operands"
                );
                assert_eq!(
                    bits(weight_grad_by_input_columns(&xb, &dyb, &geo, unit, isa)),
                    expect,
                    "{what}: bf16 operands"
                );
                assert_eq!(
                    bits(weight_grad_by_gradient_columns(&xb, &dyb, &geo, unit, isa)),
                    expect,
                    "{what}: bf16 operands, gradient columns"
                );
                assert_eq!(
                    bits(weight_grad(&x, &dyb, &geo, unit, isa)),
                    expect,
                    "{what}"
                );
            }
        }
    }
}
