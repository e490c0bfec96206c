//! Grouped 3x3 convolutions of padding 1 with few channels per group, walked image row by
//! image row: the group-lanes products of `gemm::group_lanes_tile` with each
//! input vector's permutes shared by every output that reads it.
//!
//! A group-lanes tile reads a row's vector once per tap and permutes it once per product,
//! so a narrow group pays a permute (on the port that also multiplies) for every
//! multiply-add, and a table of tap pointers for every output. Here one pass walks a source
//! image row for one row of taps: each source pixel is loaded and permuted once, and its
//! permuted vectors feed the three outputs of the row that its three taps reach. Three
//! accumulators roll along the row (the output the pixel reaches first, through tap 0, the
//! one it reaches through tap 1, and the one it completes through tap 2), and the three
//! passes of a 3x3 window add into the output row in turn. Where the path's registers have
//! room, a pass holds its weights there for the whole row instead of reading them again at
//! every pixel.
//!
//! The same walk serves the forward product (source: the input, taps reading right and
//! down) and the input gradient (source: the output gradient, taps reading left and up):
//! stride 1 makes the input gradient one product over all nine taps. At stride 2 the
//! walks step differently but keep the idea: walking forward, a source pixel reaches one
//! output (an even column) or two (an odd one) from one permutation; walking back, each
//! output-gradient pixel reaches three input pixels, and the input gradient needs no split
//! into stride classes. The weight gradient walks the input's rows likewise at stride 1,
//! each pixel rotated once (see `gemm::group_lanes_wgrad`) for the three taps whose sums it
//! enters.
//!
//! A pass over groups too wide for its weights to stay in the registers (7 or 8 channels
//! on AVX-512) reads a weight for every multiply-add, and those reads bound it; at stride
//! 1 the same row of two images then walks together, each weight read once for both.
//!
//! Each output's sum runs over (tap, input of the group) in the order of the tile, each
//! weight-gradient sum over the same chunks of pixels in the same order, and the padding's
//! taps, which the tiles multiply by a row of zeros, are skipped: adding a zero product to
//! a sum that starts at +0 leaves it as it is, so the results are the tiles' bit for bit.

use std::ops::Range;

use rayon::prelude::*;

use crate::conv::{written_by, Geometry};
use crate::cpu::SendPtr;
use crate::gemm::{self, load_upto, GroupLanes, MAX_GROUP};
use crate::isa::Isa;
use crate::simd::{array_in_line, simd_call, Element, Simd, VectorPath};

/// Image rows of one task: enough work to pay for handing it to a thread.
const ROWS_PER_TASK: usize = 8;

/// Whether the forward product and the input gradient take this path on `path`: a
/// group-lanes product (see `Geometry::group_lanes`) of a 3x3 window, padding 1, stride 1,
/// or stride 2 where the passes hold their weights in registers. At stride 2 a pixel
/// reaches fewer outputs (one and a half on average walking forward), and passes that read
/// their weights at every pixel are slower than the tiles.
pub(crate) fn walks_products(geo: &Geometry, path: VectorPath) -> bool {
    let registers = match path {
        VectorPath::Avx512 => 32,
        VectorPath::Avx2 => 16,
        VectorPath::Scalar => 0,
    };
    let strided = geo.stride == 2 && holds_weights(1, geo.cgi(), registers);
    geo.group_lanes(path) && geo.k == 3 && geo.pad == 1 && (geo.stride == 1 || strided)
}

/// Whether a pass of `nv` vectors over groups of `cg` channels has room for its weights in
/// `registers` vector registers: 3 * cg * nv weights, 3 * nv sums, nv loaded vectors, cg
/// permutations and the permuted vector in use. Where even one vector's do not fit, the
/// compiler would move some of them to the stack and back at every pixel, which costs more
/// than reading the weights where they lie.
const fn holds_weights(nv: usize, cg: usize, registers: usize) -> bool {
    let held = nv * (3 * cg + 4) + cg + 1;
    held <= registers
}

/// Whether the weight gradient takes this path on `path`: as [`walks_products`], stride 1.
pub(crate) fn walks_weight_grad(geo: &Geometry, path: VectorPath) -> bool {
    walks_products(geo, path) && geo.stride == 1
}

/// Whether a stride-1 walk takes the same row of two images together (see
/// [`pair_row_pass`]): where its passes read their weights from memory, groups too wide
/// for the registers to hold them, and on AVX-512, whose 32 registers hold both rows' sums
/// for two vectors (AVX2's 16 would spill them).
fn pair_walks(lg: GroupLanes, path: VectorPath) -> bool {
    path == VectorPath::Avx512 && !holds_weights(1, lg.cg, 32)
}

/// Which product a walk computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// y = conv(x, w): tap (ky, kx) of output (y, x) reads source pixel
    /// (s * y + ky - 1, s * x + kx - 1), s the stride.
    Forward,
    /// dx from dy: tap (ky, kx) of input pixel (y, x) reads output-gradient pixel
    /// ((y + 1 - ky) / s, (x + 1 - kx) / s) where both divide exactly.
    InputGrad,
}

/// The product over the nine taps of `src` (`geo`'s input walking forward, its output
/// gradient walking back, of `lg.channels` channels) by weights `wl` in the [`GroupLanes`]
/// layout of taps 0..9 (tap ky * 3 + kx): `geo`'s output, or its input gradient.
pub(crate) fn product<T: Element>(
    src: &[T],
    wl: &[T],
    lg: GroupLanes,
    geo: &Geometry,
    walk: Walk,
    blocks: &[Range<usize>],
    isa: Isa,
) -> Vec<T> {
    let (src_image, out_image) = match walk {
        Walk::Forward => ((geo.h, geo.w), (geo.ho, geo.wo)),
        Walk::InputGrad => ((geo.ho, geo.wo), (geo.h, geo.w)),
    };
    let images = Images {
        src: src_image,
        out: out_image,
        stride: geo.stride,
    };
    let plane = src_image.0 * src_image.1 * lg.channels;
    assert_eq!(src.len(), geo.n * plane, "group-rows source size");
    let tap_len = lg.tap_len(crate::simd::tile_shape::<T>(isa).0);
    assert_eq!(wl.len(), 9 * tap_len, "group-rows weight size");
    let image_rows = geo.n * out_image.0;
    // At stride 1, the same row of two images walks together (one task unit a pair of
    // rows), each weight read once for both; an odd batch's last image walks alone.
    let pairs = if geo.stride == 1 && pair_walks(lg, VectorPath::of(isa)) {
        geo.n / 2
    } else {
        0
    };
    let pair_units = pairs * out_image.0;
    let single = (2 * pairs * out_image.0)..image_rows;
    let mut tasks: Vec<RowsTask> = crate::conv::ranges(pair_units, ROWS_PER_TASK / 2)
        .map(|r| (r, true))
        .chain(
            crate::conv::ranges(single.len(), ROWS_PER_TASK)
                .map(|r| (r.start + single.start..r.end + single.start, false)),
        )
        .flat_map(|(rows, paired)| {
            blocks.iter().map(move |vectors| RowsTask {
                rows: rows.clone(),
                vectors: vectors.clone(),
                paired,
            })
        })
        .collect();
    // The input gradient walks each row right to left, so it takes its rows, and its tasks,
    // last first: the whole sweep then runs down through memory, a stream the hardware's
    // prefetchers follow, where rows taken first to last would turn it back at every row.
    // The order of the rows changes no sum.
    if walk == Walk::InputGrad {
        tasks.reverse();
    }
    let sp = SendPtr(src.as_ptr() as *mut T);
    // SAFETY: the tasks cover every image row and channel vector once (a paired task's
    // unit is two images' rows); each writes the channels of its vectors on its rows,
    // every pixel of them (`row_pass` and `pair_row_pass` store every
    // output of the row, and every row has a source row to walk through tap row 1, or at
    // stride 2 walking back an odd row through tap row 2, which always lies in the image).
    unsafe {
        written_by(image_rows * out_image.1 * lg.channels, |out: SendPtr<T>| {
            tasks.par_iter().for_each(|task| {
                let (src, out, wl, task) = (sp.get(), out.get(), wl.as_ptr(), task.clone());
                match images.stride {
                    1 => simd_call!(isa, T, rows_task(src, out, images, lg, wl, walk, task)),
                    _ => simd_call!(
                        isa,
                        T,
                        strided_rows_task(src, out, images, lg, wl, walk, task)
                    ),
                }
            })
        })
    }
}

/// The image sizes of a walk: its source's and its output's (height, width), and the
/// stride.
#[derive(Debug, Clone, Copy)]
struct Images {
    src: (usize, usize),
    out: (usize, usize),
    stride: usize,
}

/// One task of a walk: its channel vectors `vectors` over its `rows`, each the image row
/// image * height + y, or, where `paired`, pair * height + y: row y of images 2 * pair and
/// 2 * pair + 1, walked together.
#[derive(Clone)]
struct RowsTask {
    rows: Range<usize>,
    vectors: Range<usize>,
    paired: bool,
}

/// Defines `$name`, the entry of the walks at stride `$stride` (see `walk_rows`), one
/// function per stride.
macro_rules! rows_task_at {
    ($(#[$doc:meta])* $name:ident, $stride:literal) => {
        $(#[$doc])*
        #[inline(always)]
        unsafe fn $name<S: Simd, const MR: usize>(
            src: *const S::E,
            out: *mut S::E,
            images: Images,
            lg: GroupLanes,
            wl: *const S::E,
            walk: Walk,
            task: RowsTask,
        ) {
            // SAFETY: passed on.
            unsafe { walk_rows::<S, $stride>(src, out, images, lg, wl, walk, task) }
        }
    };
}

rows_task_at!(
    /// The output's image rows of `task` (see [`RowsTask`]) of the product, at stride 1.
    ///
    /// # Safety
    /// `src` and `out` hold n images of `images`' sizes, pixels of `lg.channels` values
    /// (`out` for writes, n * height above every image row of the task's), `wl` the nine
    /// taps' weights as [`GroupLanes`] lays them out for `S`'s lanes, the task's vectors lie
    /// within `lg.vectors`, `lg.cg <= S::LANES`; the CPU runs `S`.
    rows_task,
    1
);
rows_task_at!(
    /// [`rows_task`] at stride 2: an entry of its own, so that the stride-1 walks' code is
    /// compiled apart from the stride-2 walks'.
    ///
    /// # Safety
    /// As [`rows_task`].
    strided_rows_task,
    2
);

/// [`rows_task`] at stride `STRIDE` (`images.stride`).
///
/// # Safety
/// As [`rows_task`].
#[inline(always)]
unsafe fn walk_rows<S: Simd, const STRIDE: usize>(
    src: *const S::E,
    out: *mut S::E,
    images: Images,
    lg: GroupLanes,
    wl: *const S::E,
    walk: Walk,
    task: RowsTask,
) {
    let RowsTask {
        rows,
        vectors,
        paired,
    } = task;
    let Images {
        src: (src_h, src_w),
        out: (out_h, out_w),
        ..
    } = images;
    let stride = STRIDE;
    let tap_len = lg.tap_len(S::LANES);
    // SAFETY: the path's CPU and `lg.cg` within its lanes (the caller's promise).
    let bcast = unsafe { gemm::group_broadcasts::<S>(lg.cg) };
    // The task's i-th row: last first for the input gradient (see `product`).
    let row_at = |i: usize| {
        if walk == Walk::InputGrad {
            rows.end - 1 - i
        } else {
            rows.start + i
        }
    };
    // Task row r's image and row y in it (with a pair, the first image's).
    let image_row = |r: usize| {
        if paired {
            (2 * (r / out_h), r % out_h)
        } else {
            (r / out_h, r % out_h)
        }
    };
    // The source rows, counted over the images, that tap rows 0, 1 and 2 of task row r
    // read, where they lie inside the image (and, walking back, where the stride divides
    // their distance).
    let src_rows = |r: usize| -> [Option<usize>; 3] {
        let (image, y) = image_row(r);
        std::array::from_fn(|ky| {
            let sy = match walk {
                Walk::Forward => (y * stride + ky).checked_sub(1),
                Walk::InputGrad => (y + 1)
                    .checked_sub(ky)
                    .filter(|d| d % stride == 0)
                    .map(|d| d / stride),
            };
            sy.filter(|&sy| sy < src_h).map(|sy| image * src_h + sy)
        })
    };
    // A row's walk reads the source rows the row before did not (one at stride 1, two at
    // stride 2), from memory or a far cache. Asked for a row ahead, they arrive while the
    // row before is walked. Walking forward at stride 1 through one image the hardware's
    // prefetchers keep up, and the requests cost more than they save; walking back, at
    // stride 2, or through two images' rows at once, they do not.
    let ahead = walk == Walk::InputGrad || STRIDE == 2 || paired;
    // The channels of the task's vectors, which its walks read of each source pixel.
    let task_cols = vectors.start * lg.width..(vectors.end * lg.width).min(lg.channels);
    for i in 0..rows.len() {
        let now = src_rows(row_at(i));
        if ahead && i + 1 < rows.len() {
            for s_row in src_rows(row_at(i + 1)).into_iter().flatten() {
                if now.contains(&Some(s_row)) {
                    continue;
                }
                for image in 0..1 + usize::from(paired) {
                    prefetch_row(src, s_row + image * src_h, src_w, lg.channels, &task_cols);
                }
            }
        }
        let (image, y) = image_row(row_at(i));
        let r = image * out_h + y;
        // Walking back at stride 2, an output row (four times the source's pixels) lies in
        // lines the cache has mostly lost since the output was last written, and each
        // first store to one waits for it to be read: the next row's lines are asked for,
        // to be written, while this row is walked. (The other walks store each output row
        // after three passes of sums, and the requests cost them more than they save.)
        if walk == Walk::InputGrad && STRIDE == 2 && i + 1 < rows.len() {
            let (image, y) = image_row(row_at(i + 1));
            let next = out.wrapping_add((image * out_h + y) * out_w * lg.channels);
            for col in 0..out_w {
                let pixel = next.wrapping_add(col * lg.channels + task_cols.start);
                crate::simd::prefetch_write_run(pixel, task_cols.len());
            }
        }
        let mut first = true;
        for (ky, s_row) in now.into_iter().enumerate() {
            let Some(s_row) = s_row else {
                continue;
            };
            // SAFETY: rows within the images (the caller's promise); tap row ky's weights.
            unsafe {
                let s_row = src.add(s_row * src_w * lg.channels);
                let o_row = out.add(r * out_w * lg.channels);
                let wt = wl.add(ky * 3 * tap_len);
                let taps = RowTaps::<S> {
                    src: s_row,
                    out: o_row,
                    pair: if paired {
                        Some((
                            s_row.add(src_h * src_w * lg.channels),
                            o_row.add(out_h * out_w * lg.channels),
                        ))
                    } else {
                        None
                    },
                    src_w,
                    out_w,
                    lg,
                    wt,
                    bcast: &bcast,
                    first,
                    backward: walk == Walk::InputGrad,
                };
                macro_rules! passes {
                    ($($cg:literal)*) => {
                        match lg.cg {
                            $($cg => row_passes::<S, $cg, STRIDE>(taps, vectors.clone()),)*
                            _ => row_passes::<S, 0, STRIDE>(taps, vectors.clone()),
                        }
                    };
                }
                // Groups of up to six channels may hold their weights in registers; no
                // path has room for wider groups' weights beside their sums.
                passes!(1 2 3 4 5 6);
            }
            first = false;
        }
    }
}

/// Asks the second-level cache for the channels `cols` of every pixel of row `row` (counted
/// over the images) of `x`, whose rows hold `w` pixels of `c` values.
#[inline(always)]
fn prefetch_row<E>(x: *const E, row: usize, w: usize, c: usize, cols: &Range<usize>) {
    let pixels = x.wrapping_add(row * w * c + cols.start);
    for col in 0..w {
        crate::simd::prefetch_run(pixels.wrapping_add(col * c), cols.len());
    }
}

/// One row of taps over one source row, as every pass over its channel vectors shares it.
///
/// `src` holds `src_w` pixels of `lg.channels` values, `out` `out_w` (for reads and writes;
/// for reads only where not `first`, of values this walk stored): the same width at stride
/// 1; at stride 2 (the walk's `STRIDE`) `out_w` is the forward's output width,
/// `(src_w - 1) / 2 + 1`, or walking back its input width, `src_w` then that of its
/// output; `wt` holds tap row ky's three
/// taps of weights (`lg.tap_len(S::LANES)` values each, [`GroupLanes`] layout); `bcast` is
/// `group_broadcasts::<S>(lg.cg)`.
#[derive(Clone, Copy)]
struct RowTaps<'a, S: Simd> {
    src: *const S::E,
    out: *mut S::E,
    /// The next image's same rows, walked together with these.
    pair: Option<(*const S::E, *mut S::E)>,
    src_w: usize,
    out_w: usize,
    lg: GroupLanes,
    wt: *const S::E,
    bcast: &'a [S::Ix; MAX_GROUP],
    /// Whether the sums start at zero, not from what the output row holds.
    first: bool,
    /// Whether the taps read left (the input gradient's walk), not right.
    backward: bool,
}

/// The row passes of one row of taps over one source row for the channel vectors
/// `vectors`. With CG > 0 (groups of CG channels) and room in the path's registers, each
/// pass holds its weights in registers, with as many vectors a pass as leave room for
/// them; otherwise (CG = 0: any group width) the passes read their weights from memory at
/// each pixel, four vectors a pass where they can (see [`row_pass`]), or, where `taps`
/// holds a pair of images' rows, two vectors of both rows a pass (see [`pair_row_pass`]).
///
/// # Safety
/// As [`row_pass`] for each pass, with `vectors` within `taps.lg.vectors` and, for CG > 0,
/// `taps.lg.cg == CG`.
#[inline(always)]
unsafe fn row_passes<S: Simd, const CG: usize, const STRIDE: usize>(
    taps: RowTaps<S>,
    vectors: Range<usize>,
) {
    let fits = |nv: usize| {
        CG > 0 && S::LANES > 1 && nv <= S::NV_MAX && holds_weights(nv, CG, S::REGISTERS)
    };
    let mut v = vectors.start;
    if taps.pair.is_some() {
        // Pairs are walked only where the passes read their weights from memory (see
        // `pair_walks`).
        debug_assert!(STRIDE == 1 && !fits(1));
        // SAFETY: passed on, each pass's vectors within `vectors`.
        unsafe {
            while v < vectors.end {
                if vectors.end - v >= 2 && S::LANES > 1 {
                    pair_row_pass::<S, 2>(taps, v);
                    v += 2;
                } else {
                    pair_row_pass::<S, 1>(taps, v);
                    v += 1;
                }
            }
        }
        return;
    }
    // SAFETY (loops): passed on, each pass's vectors within `vectors`.
    unsafe {
        if fits(1) {
            while v < vectors.end {
                let left = vectors.end - v;
                if left >= 4 && fits(4) {
                    held_row_pass::<S, CG, 4, STRIDE>(taps, v);
                    v += 4;
                } else if left >= 2 && fits(2) {
                    held_row_pass::<S, CG, 2, STRIDE>(taps, v);
                    v += 2;
                } else {
                    held_row_pass::<S, CG, 1, STRIDE>(taps, v);
                    v += 1;
                }
            }
        } else {
            while v < vectors.end {
                let left = vectors.end - v;
                if left >= 4 && S::NV_MAX >= 4 && S::LANES > 1 {
                    row_pass::<S, 4, STRIDE>(taps, v);
                    v += 4;
                } else if left >= 2 && S::LANES > 1 {
                    row_pass::<S, 2, STRIDE>(taps, v);
                    v += 2;
                } else {
                    row_pass::<S, 1, STRIDE>(taps, v);
                    v += 1;
                }
            }
        }
    }
}

/// One row of taps over one source row, for channel vectors `v0..v0 + NV`: each output o of
/// the row gains, for kx = 0, 1, 2 in turn and each input b of its group in turn, the
/// source pixel s's permuted vector times the weight of tap (ky, kx), where s = o - 1 + kx
/// walking forward, s = o + 1 - kx walking backward (`backward`), at stride 1; at stride 2,
/// s = 2o - 1 + kx forward and o = 2s - 1 + kx backward; pixels past the row's ends are
/// the padding and add nothing. The sums start at zero where `first`, else from
/// what the output row holds.
///
/// # Safety
/// `taps` is as [`RowTaps`] states, and `v0 + NV <= taps.lg.vectors`; the CPU runs `S`.
#[inline(always)]
unsafe fn row_pass<S: Simd, const NV: usize, const STRIDE: usize>(taps: RowTaps<S>, v0: usize) {
    let RowTaps { lg, wt, bcast, .. } = taps;
    let tap_len = lg.tap_len(S::LANES);
    // SAFETY: the walk's promises are the caller's; weights within tap row ky's layout.
    unsafe {
        walk_row::<S, NV, STRIDE>(
            taps,
            v0,
            #[inline(always)]
            |x, [mut fresh, mut mid, mut last]| {
                let mut wb = wt.add(v0 * S::LANES);
                for &idx in bcast.iter().take(lg.cg) {
                    for j in 0..NV {
                        let p = S::permute(x[j], idx);
                        let wj = wb.add(j * S::LANES);
                        if let Some(a) = &mut fresh {
                            a[j] = S::fma(p, S::load(wj), a[j]);
                        }
                        if let Some(a) = &mut mid {
                            a[j] = S::fma(p, S::load(wj.add(tap_len)), a[j]);
                        }
                        if let Some(a) = &mut last {
                            a[j] = S::fma(p, S::load(wj.add(2 * tap_len)), a[j]);
                        }
                    }
                    wb = wb.add(lg.vectors * S::LANES);
                }
            },
        );
    }
}

/// [`row_pass`] over the same row of two images (`taps.pair`), stride 1: each weight read
/// once for both rows' products. A pass that reads its weights from memory reads one
/// for every multiply-add, and those reads, not the multiply-adds or the permutes, bound
/// it; the two images' rows share their padding, their taps and so their weights, and
/// each row's sums run as the row's own walk runs them.
///
/// # Safety
/// As [`row_pass`] for both rows.
#[inline(always)]
unsafe fn pair_row_pass<S: Simd, const NV: usize>(taps: RowTaps<S>, v0: usize) {
    let RowTaps { lg, wt, bcast, .. } = taps;
    let tap_len = lg.tap_len(S::LANES);
    // SAFETY: the walk's promises are the caller's; weights within tap row ky's layout.
    unsafe {
        walk_row_pair::<S, NV>(
            taps,
            v0,
            #[inline(always)]
            |xa, xb, [fa, ma, la], [fb, mb, lb]| {
                let mut wb = wt.add(v0 * S::LANES);
                for &idx in bcast.iter().take(lg.cg) {
                    for j in 0..NV {
                        let pa = S::permute(xa[j], idx);
                        let pb = S::permute(xb[j], idx);
                        let wj = wb.add(j * S::LANES);
                        let w0 = S::load(wj);
                        fa[j] = S::fma(pa, w0, fa[j]);
                        fb[j] = S::fma(pb, w0, fb[j]);
                        let w1 = S::load(wj.add(tap_len));
                        ma[j] = S::fma(pa, w1, ma[j]);
                        mb[j] = S::fma(pb, w1, mb[j]);
                        let w2 = S::load(wj.add(2 * tap_len));
                        la[j] = S::fma(pa, w2, la[j]);
                        lb[j] = S::fma(pb, w2, lb[j]);
                    }
                    wb = wb.add(lg.vectors * S::LANES);
                }
            },
        );
    }
}

/// [`walk_row`] at stride 1 over the same row of two images (`taps.pair`), the products of
/// both rows' pixels at each step.
///
/// # Safety
/// As [`walk_row`] for both rows.
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn walk_row_pair<S: Simd, const NV: usize>(
    taps: RowTaps<S>,
    v0: usize,
    mut products: impl FnMut(&[S::V; NV], &[S::V; NV], [&mut [S::V; NV]; 3], [&mut [S::V; NV]; 3]),
) {
    let (src, out, w, lg, first) = (taps.src, taps.out, taps.src_w, taps.lg, taps.first);
    let backward = taps.backward;
    let (src2, out2) = taps.pair.expect("a pair");
    let filled: [usize; NV] = std::array::from_fn(|j| lg.filled(v0 + j));
    let at = |col: usize, j: usize| col * lg.channels + (v0 + j) * lg.width;
    let column = |step: usize| if backward { w - 1 - step } else { step };
    // SAFETY: as `walk_row`, for each row.
    unsafe {
        let mut mid_a = start::<S, NV>(out, at(column(0), 0), lg.width, &filled, first);
        let mut mid_b = start::<S, NV>(out2, at(column(0), 0), lg.width, &filled, first);
        let mut last_a = [S::zero(); NV];
        let mut last_b = [S::zero(); NV];
        for step in 0..w {
            let col = column(step);
            let (mut fresh_a, mut fresh_b) = if step + 1 < w {
                let next = at(column(step + 1), 0);
                (
                    start::<S, NV>(out, next, lg.width, &filled, first),
                    start::<S, NV>(out2, next, lg.width, &filled, first),
                )
            } else {
                ([S::zero(); NV], [S::zero(); NV])
            };
            let xa = load_vectors::<S, NV>(src, at(col, 0), lg.width, &filled);
            let xb = load_vectors::<S, NV>(src2, at(col, 0), lg.width, &filled);
            products(
                &xa,
                &xb,
                [&mut fresh_a, &mut mid_a, &mut last_a],
                [&mut fresh_b, &mut mid_b, &mut last_b],
            );
            if step > 0 {
                let prev = at(column(step - 1), 0);
                store::<S, NV>(out, prev, lg.width, &filled, &last_a);
                store::<S, NV>(out2, prev, lg.width, &filled, &last_b);
            }
            last_a = mid_a;
            mid_a = fresh_a;
            last_b = mid_b;
            mid_b = fresh_b;
        }
        let end = at(column(w - 1), 0);
        store::<S, NV>(out, end, lg.width, &filled, &last_a);
        store::<S, NV>(out2, end, lg.width, &filled, &last_b);
    }
}

/// [`row_pass`] for groups of CG channels, with the pass's weights and its group's
/// permutations read into registers once for the row: the same sums, each in the same
/// order.
///
/// # Safety
/// As [`row_pass`], with `taps.lg.cg == CG`.
#[inline(always)]
unsafe fn held_row_pass<S: Simd, const CG: usize, const NV: usize, const STRIDE: usize>(
    taps: RowTaps<S>,
    v0: usize,
) {
    let RowTaps { lg, wt, bcast, .. } = taps;
    let tap_len = lg.tap_len(S::LANES);
    // SAFETY: the walk's promises are the caller's; weights within tap row ky's layout.
    unsafe {
        // Read in the walk, the weights would be read again at every pixel: the compiler
        // cannot tell that the stores to the output row leave them be.
        // weights[kx][b][j]: tap kx, input b, vector j.
        let weights: [[[S::V; NV]; CG]; 3] = array_in_line!([[S::zero(); NV]; CG]; 3, |kx| {
            array_in_line!([S::zero(); NV]; CG, |b| {
                array_in_line!(S::zero(); NV, |j| {
                    S::load(wt.add(kx * tap_len + (b * lg.vectors + v0 + j) * S::LANES))
                })
            })
        });
        let bcast: [S::Ix; CG] = std::array::from_fn(|b| bcast[b]);
        walk_row::<S, NV, STRIDE>(
            taps,
            v0,
            #[inline(always)]
            |x, [mut fresh, mut mid, mut last]| {
                for (b, &idx) in bcast.iter().enumerate() {
                    for j in 0..NV {
                        let p = S::permute(x[j], idx);
                        if let Some(a) = &mut fresh {
                            a[j] = S::fma(p, weights[0][b][j], a[j]);
                        }
                        if let Some(a) = &mut mid {
                            a[j] = S::fma(p, weights[1][b][j], a[j]);
                        }
                        if let Some(a) = &mut last {
                            a[j] = S::fma(p, weights[2][b][j], a[j]);
                        }
                    }
                }
            },
        );
    }
}

/// What a row pass's walk hands its products: a source pixel's vectors, and the sums of the
/// outputs it reaches through taps 0, 1 and 2 (kx) of the pass's row of taps, where it
/// reaches one. Each call site names which it reaches, so that the compiler drops the
/// others' products.
type Reached<'a, V, const NV: usize> = [Option<&'a mut [V; NV]>; 3];

/// The walk of a row pass over the source row `src` into the output row `out` for channel
/// vectors `v0..v0 + NV`: `products(x, reached)` adds the products of source pixel x into
/// the outputs it reaches (see [`Reached`]), and the walk rolls them along, storing each
/// output once its taps of this row are in, its sum over kx in order. Stride 1 walks
/// forward left to right (each pixel reaches three outputs) and back right to left; stride
/// 2 see [`walk_forward_by_2`] and [`walk_back_by_2`].
///
/// # Safety
/// As [`row_pass`].
#[inline(always)]
unsafe fn walk_row<S: Simd, const NV: usize, const STRIDE: usize>(
    taps: RowTaps<S>,
    v0: usize,
    mut products: impl FnMut(&[S::V; NV], Reached<S::V, NV>),
) {
    let RowTaps {
        src,
        out,
        src_w: w,
        lg,
        first,
        backward,
        ..
    } = taps;
    // SAFETY: the caller's promises.
    unsafe {
        match (STRIDE, backward) {
            (1, _) => {}
            (_, false) => return walk_forward_by_2::<S, NV>(taps, v0, products),
            (_, true) => return walk_back_by_2::<S, NV>(taps, v0, products),
        }
    }
    let filled: [usize; NV] = std::array::from_fn(|j| lg.filled(v0 + j));
    // Where vector j of column col starts in a row.
    let at = |col: usize, j: usize| col * lg.channels + (v0 + j) * lg.width;
    let column = |step: usize| if backward { w - 1 - step } else { step };
    // SAFETY (whole body): every column is below `w` and every vector within the row's
    // channels (the last cut to its filled lanes) (the caller's promises).
    unsafe {
        // The output the walk's first pixel reaches through tap 1 (its tap 0 reads the
        // padding); `last` is idle at the first pixel, which completes no output.
        let mut mid = start::<S, NV>(out, at(column(0), 0), lg.width, &filled, first);
        let mut last = [S::zero(); NV];
        for step in 0..w {
            let col = column(step);
            let mut fresh = if step + 1 < w {
                start::<S, NV>(out, at(column(step + 1), 0), lg.width, &filled, first)
            } else {
                [S::zero(); NV]
            };
            let x = load_vectors::<S, NV>(src, at(col, 0), lg.width, &filled);
            products(&x, [Some(&mut fresh), Some(&mut mid), Some(&mut last)]);
            if step > 0 {
                store::<S, NV>(out, at(column(step - 1), 0), lg.width, &filled, &last);
            }
            last = mid;
            mid = fresh;
        }
        // The walk's last pixel's tap-1 output is complete: its tap 2 reads the padding.
        store::<S, NV>(out, at(column(w - 1), 0), lg.width, &filled, &last);
    }
}

/// A row pass's columns, for channel vectors `v0..v0 + NV`: source pixels to load, and
/// outputs whose sums start at zero (`first`) or from what the output row holds, and which
/// are stored back.
struct Columns<'a, S: Simd, const NV: usize> {
    taps: RowTaps<'a, S>,
    v0: usize,
    filled: [usize; NV],
}

impl<'a, S: Simd, const NV: usize> Columns<'a, S, NV> {
    #[inline(always)]
    fn new(taps: RowTaps<'a, S>, v0: usize) -> Self {
        let filled = std::array::from_fn(|j| taps.lg.filled(v0 + j));
        Columns { taps, v0, filled }
    }

    /// Where vector j of column col starts in a row.
    #[inline(always)]
    fn at(&self, col: usize, j: usize) -> usize {
        col * self.taps.lg.channels + (self.v0 + j) * self.taps.lg.width
    }

    /// Source pixel `col`'s vectors.
    ///
    /// # Safety
    /// `col` is below the source row's width; the pass's promises (see [`row_pass`]).
    #[inline(always)]
    unsafe fn load(&self, col: usize) -> [S::V; NV] {
        // SAFETY: the caller's promise; each vector cut to its filled lanes.
        unsafe {
            load_vectors::<S, NV>(
                self.taps.src,
                self.at(col, 0),
                self.taps.lg.width,
                &self.filled,
            )
        }
    }

    /// Output `col`'s sums so far.
    ///
    /// # Safety
    /// As [`Columns::load`], for the output row.
    #[inline(always)]
    unsafe fn begin(&self, col: usize) -> [S::V; NV] {
        let t = &self.taps;
        // SAFETY: the caller's promise.
        unsafe { start::<S, NV>(t.out, self.at(col, 0), t.lg.width, &self.filled, t.first) }
    }

    /// Stores output `col`'s sums.
    ///
    /// # Safety
    /// As [`Columns::begin`].
    #[inline(always)]
    unsafe fn put(&self, col: usize, v: &[S::V; NV]) {
        let t = &self.taps;
        // SAFETY: the caller's promise.
        unsafe { store::<S, NV>(t.out, self.at(col, 0), t.lg.width, &self.filled, v) }
    }
}

/// [`walk_row`] forward at stride 2: output m reads source pixels 2m - 1, 2m and 2m + 1
/// through taps 0, 1 and 2. Left to right, an even pixel 2m reaches output m (tap 1); an
/// odd one, 2m + 1, completes output m (tap 2) and starts output m + 1 (tap 0), both from
/// one permutation of it.
///
/// # Safety
/// As [`row_pass`] at stride 2, with `taps.out_w == (taps.src_w - 1) / 2 + 1`.
#[inline(always)]
unsafe fn walk_forward_by_2<S: Simd, const NV: usize>(
    taps: RowTaps<S>,
    v0: usize,
    mut products: impl FnMut(&[S::V; NV], Reached<S::V, NV>),
) {
    let (src_w, out_w) = (taps.src_w, taps.out_w);
    let cols = Columns::<S, NV>::new(taps, v0);
    // SAFETY (whole body): source columns below `src_w`, output columns below `out_w` (the
    // last output, (src_w - 1) / 2, is the last even pixel's) (the caller's promises).
    unsafe {
        let load = |col: usize| cols.load(col);
        // Output 0's tap 0 reads the padding.
        let mut cur = cols.begin(0);
        let mut m = 0;
        while 2 * m + 1 < src_w {
            products(&load(2 * m), [None, Some(&mut cur), None]);
            let odd = load(2 * m + 1);
            if m + 1 < out_w {
                let mut next = cols.begin(m + 1);
                products(&odd, [Some(&mut next), None, Some(&mut cur)]);
                cols.put(m, &cur);
                cur = next;
            } else {
                products(&odd, [None, None, Some(&mut cur)]);
            }
            m += 1;
        }
        if 2 * m < src_w {
            // An odd width ends on an even pixel: its output's tap 2 reads the padding.
            products(&load(2 * m), [None, Some(&mut cur), None]);
        } else {
            m -= 1;
        }
        cols.put(m, &cur);
    }
}

/// [`walk_row`] back at stride 2 (the input gradient): source pixel m (of the output
/// gradient) reaches input pixels 2m - 1, 2m and 2m + 1 through taps 0, 1 and 2. Right to
/// left, each pixel starts input 2m - 1 (tap 0, the first of its two), completes input 2m
/// (tap 1, its only one) and completes input 2m + 1 (tap 2, after tap 0 from pixel m + 1).
///
/// # Safety
/// As [`row_pass`] at stride 2, with `taps.src_w == (taps.out_w - 1) / 2 + 1`.
#[inline(always)]
unsafe fn walk_back_by_2<S: Simd, const NV: usize>(
    taps: RowTaps<S>,
    v0: usize,
    mut products: impl FnMut(&[S::V; NV], Reached<S::V, NV>),
) {
    let (src_w, out_w) = (taps.src_w, taps.out_w);
    let cols = Columns::<S, NV>::new(taps, v0);
    // SAFETY (whole body): source columns below `src_w`, input columns below `out_w`
    // (2m + 1 only where it is) (the caller's promises).
    unsafe {
        let load = |col: usize| cols.load(col);
        let begin = |col: usize| cols.begin(col);
        let put = |col: usize, v: &[S::V; NV]| cols.put(col, v);
        let mut m = src_w - 1;
        // The last pixel's input 2m + 1, if the input has it: its tap 0 reads the padding.
        let mut carried = if 2 * m + 1 < out_w {
            begin(2 * m + 1)
        } else {
            [S::zero(); NV]
        };
        let mut mid = begin(2 * m);
        if m == 0 {
            let x = load(0);
            if 2 * m + 1 < out_w {
                products(&x, [None, Some(&mut mid), Some(&mut carried)]);
                put(1, &carried);
            } else {
                products(&x, [None, Some(&mut mid), None]);
            }
            put(0, &mid);
            return;
        }
        let mut fresh = begin(2 * m - 1);
        if 2 * m + 1 < out_w {
            products(
                &load(m),
                [Some(&mut fresh), Some(&mut mid), Some(&mut carried)],
            );
            put(2 * m + 1, &carried);
        } else {
            products(&load(m), [Some(&mut fresh), Some(&mut mid), None]);
        }
        put(2 * m, &mid);
        carried = fresh;
        m -= 1;
        while m > 0 {
            let mut mid = begin(2 * m);
            let mut fresh = begin(2 * m - 1);
            products(
                &load(m),
                [Some(&mut fresh), Some(&mut mid), Some(&mut carried)],
            );
            put(2 * m + 1, &carried);
            put(2 * m, &mid);
            carried = fresh;
            m -= 1;
        }
        let mut mid = begin(0);
        products(&load(0), [None, Some(&mut mid), Some(&mut carried)]);
        put(1, &carried);
        put(0, &mid);
    }
}

/// The NV vectors at `row + offset` (vector j at `offset + j * width`, cut to `filled[j]`
/// lanes), or zeros where `first`.
///
/// # Safety
/// Where not `first`, the vectors lie within `row`'s values; the CPU runs `S`.
#[inline(always)]
unsafe fn start<S: Simd, const NV: usize>(
    row: *const S::E,
    offset: usize,
    width: usize,
    filled: &[usize; NV],
    first: bool,
) -> [S::V; NV] {
    if first {
        // SAFETY: the CPU runs `S`.
        return [unsafe { S::zero() }; NV];
    }
    // SAFETY: the caller's promise.
    unsafe { load_vectors::<S, NV>(row, offset, width, filled) }
}

/// The NV vectors at `row + offset`, vector j at `offset + j * width`, cut to `filled[j]`
/// lanes: a pixel's vectors of a row pass, whether source values or sums so far.
///
/// # Safety
/// The vectors lie within `row`'s values; the CPU runs `S`.
#[inline(always)]
unsafe fn load_vectors<S: Simd, const NV: usize>(
    row: *const S::E,
    offset: usize,
    width: usize,
    filled: &[usize; NV],
) -> [S::V; NV] {
    // SAFETY: the caller's promise.
    unsafe {
        array_in_line!(S::zero(); NV, |j| load_upto::<S>(row.add(offset + j * width), filled[j]))
    }
}

/// Stores `v` as `start` reads it.
///
/// # Safety
/// The vectors lie within `row`'s values, for writes; the CPU runs `S`.
#[inline(always)]
unsafe fn store<S: Simd, const NV: usize>(
    row: *mut S::E,
    offset: usize,
    width: usize,
    filled: &[usize; NV],
    v: &[S::V; NV],
) {
    for j in 0..NV {
        // SAFETY: the caller's promise.
        unsafe {
            let p = row.add(offset + j * width);
            if filled[j] == S::LANES {
                S::store(p, v[j]);
            } else {
                S::store_partial(p, v[j], filled[j]);
            }
        }
    }
}

/// The group-lanes weight gradient's sums over the output pixels `chunk` (image, y and x
/// flattened) for the channel vectors `vectors`, added into `out` as
/// `gemm::group_lanes_wgrad` adds them: per tap, input rotation and vector, a sum that
/// starts at zero and runs over the chunk's pixels in order, then added to what `out`
/// holds. Here a pass per row of taps walks the source pixels of each image row the chunk
/// covers, rotating each once for the three taps that read it; or, for groups narrow
/// enough that the nine taps' sums fit the registers, one pass walks the output pixels,
/// each gradient entering all nine.
///
/// # Safety
/// `x` and `dy` hold n * h * w pixels of `lg.channels` values, with `chunk` within them;
/// `out` holds the nine taps' [`GroupLanes`] layout for `S`'s lanes, for reads and writes;
/// `vectors` lies within `lg.vectors`; `lg.cg <= S::LANES`; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weight_grad_chunk<S: Simd, const MR: usize>(
    x: *const S::E,
    dy: *const S::E,
    h: usize,
    w: usize,
    lg: GroupLanes,
    chunk: Range<usize>,
    vectors: Range<usize>,
    out: *mut S::E,
) {
    macro_rules! sums {
        ($rotations:ident, $v:ident, $cols:ident; $($cg:literal)*) => {
            match lg.cg {
                // SAFETY: passed on.
                $($cg => unsafe {
                    chunk_sums::<S, $cg>(
                        x,
                        dy,
                        h,
                        w,
                        lg,
                        &$rotations,
                        chunk.clone(),
                        $v,
                        ($v == vectors.start).then_some(&$cols),
                        out,
                    )
                },)*
                other => unreachable!("a group-lanes product of {other} channels per group"),
            }
        };
    }
    // SAFETY: the path's CPU and `lg.cg` within its lanes (the caller's promise).
    let rotations = unsafe { gemm::group_rotations::<S>(lg.cg) };
    // The first vector's walk reads the chunk's rows from memory; those after it find them
    // cached.
    let task_cols = vectors.start * lg.width..(vectors.end * lg.width).min(lg.channels);
    for v in vectors.clone() {
        sums!(rotations, v, task_cols; 1 2 3 4 5 6 7 8);
    }
}

/// [`weight_grad_chunk`] for vector `v` and groups of CG channels.
///
/// # Safety
/// As [`weight_grad_chunk`], with `rotations` `gemm::group_rotations::<S>(CG)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_sums<S: Simd, const CG: usize>(
    x: *const S::E,
    dy: *const S::E,
    h: usize,
    w: usize,
    lg: GroupLanes,
    rotations: &[S::Ix; MAX_GROUP],
    chunk: Range<usize>,
    v: usize,
    ahead: Option<&Range<usize>>,
    out: *mut S::E,
) {
    let (c, ch, n) = (lg.channels, v * lg.width, lg.filled(v));
    // The source rows, counted over the images, of output row `row`'s three rows of taps
    // (none in the padding).
    let src_rows = |row: usize| -> [Option<usize>; 3] {
        let (image, y) = (row / h, row % h);
        std::array::from_fn(|ky| {
            (y + ky)
                .checked_sub(1)
                .filter(|&sy| sy < h)
                .map(|sy| image * h + sy)
        })
    };
    // With `ahead` (channels), asks for the gradient row after `row` within the chunk and
    // those of its source rows `taps` (rows of taps, of `src_rows`) that `row`'s own rows of
    // `taps` did not read: the rows a pass over those rows of taps reads next.
    let prefetch_next = |row: usize, taps: &[usize]| {
        let Some(cols) = ahead else {
            return;
        };
        let next = row + 1;
        if next * w >= chunk.end {
            return;
        }
        prefetch_row(dy, next, w, c, cols);
        let (now, then) = (src_rows(row), src_rows(next));
        for &ky in taps {
            if let Some(s_row) = then[ky].filter(|&r| taps.iter().all(|&k| now[k] != Some(r))) {
                prefetch_row(x, s_row, w, c, cols);
            }
        }
    };
    // Where all nine taps' sums fit the registers beside a pixel's rotations and its
    // gradient, each output pixel's gradient is read once and enters nine sums, where a
    // row of taps at a time reads it three times over, and each sum has eight others beside
    // it to cover the latency of its chain of multiply-adds. Each sum still starts at zero
    // and runs over the chunk's pixels in order, so the sums are the same.
    if 10 * CG + 3 <= S::REGISTERS {
        let rotations: [S::Ix; CG] = std::array::from_fn(|d| rotations[d]);
        // acc[ky][kx][d]: tap (ky, kx), the input rotated by d within its group.
        // SAFETY: the CPU runs `S`.
        let mut acc = [[[unsafe { S::zero() }; CG]; 3]; 3];
        for (row, cols) in chunk_rows(chunk.clone(), w) {
            prefetch_next(row, &[0, 1, 2]);
            // SAFETY (loop): rows within the images, columns within the row, channels
            // within the pixel (the vector cut to its filled lanes); the caller's bounds.
            unsafe {
                // The source row of each row of taps; in the padding it adds nothing.
                let x_rows = src_rows(row).map(|s_row| s_row.map(|r| x.add(r * w * c + ch)));
                let dy_row = dy.add(row * w * c + ch);
                for o in cols {
                    let g = load_upto::<S>(dy_row.add(o * c), n);
                    for (sums, x_row) in acc.iter_mut().zip(x_rows) {
                        let Some(x_row) = x_row else {
                            continue;
                        };
                        // Tap kx reads source column o + kx - 1.
                        for (kx, sums) in sums.iter_mut().enumerate() {
                            if (kx == 0 && o == 0) || (kx == 2 && o + 1 == w) {
                                continue;
                            }
                            let xv = load_upto::<S>(x_row.add((o + kx - 1) * c), n);
                            for (d, sum) in sums.iter_mut().enumerate() {
                                let r = if d == 0 {
                                    xv
                                } else {
                                    S::permute(xv, rotations[d])
                                };
                                *sum = S::fma(r, g, *sum);
                            }
                        }
                    }
                }
            }
        }
        for (ky, sums) in acc.iter().enumerate() {
            // SAFETY: the caller's promise.
            unsafe { add_sums::<S, CG>(out, ky, sums, lg, v) };
        }
        return;
    }
    // The sums, the three rotated source pixels an output reads and its gradient, in
    // registers: each output's gradient is then read once, not once per tap.
    let window_fits = 6 * CG + 2 <= S::REGISTERS;
    for ky in 0..3 {
        // acc[kx][d]: tap (ky, kx), the input rotated by d within its group.
        // SAFETY: the CPU runs `S`.
        let mut acc = [[unsafe { S::zero() }; CG]; 3];
        for (row, cols) in chunk_rows(chunk.clone(), w) {
            // The later rows of taps read what this one brought in, but for a last row.
            if ky == 0 {
                prefetch_next(row, &[0]);
            }
            let (a, b) = (cols.start, cols.end);
            // The source row of this row of taps; in the padding it adds nothing.
            let Some(s_row) = src_rows(row)[ky] else {
                continue;
            };
            // SAFETY (loop): columns within the row, channels within the pixel (the
            // vector cut to its filled lanes); the caller's bounds.
            unsafe {
                let x_row = x.add(s_row * w * c + ch);
                let dy_row = dy.add(row * w * c + ch);
                if window_fits {
                    row_sums::<S, CG>(x_row, dy_row, c, n, w, rotations, a..b, &mut acc);
                    continue;
                }
                // Source column q reaches output column q + 1 - kx through tap kx.
                for q in a.saturating_sub(1)..(b + 1).min(w) {
                    let xv = load_upto::<S>(x_row.add(q * c), n);
                    let rotated: [S::V; CG] = array_in_line!(xv; CG, |d| {
                        if d == 0 {
                            xv
                        } else {
                            S::permute(xv, rotations[d])
                        }
                    });
                    for (kx, sums) in acc.iter_mut().enumerate() {
                        let Some(o) = (q + 1).checked_sub(kx).filter(|o| (a..b).contains(o)) else {
                            continue;
                        };
                        let g = load_upto::<S>(dy_row.add(o * c), n);
                        for (sum, &r) in sums.iter_mut().zip(&rotated) {
                            *sum = S::fma(r, g, *sum);
                        }
                    }
                }
            }
        }
        // SAFETY: the caller's promise.
        unsafe { add_sums::<S, CG>(out, ky, &acc, lg, v) };
    }
}

/// The image rows a chunk of pixels (image, y and x flattened, rows `w` wide) covers: each
/// row (image * h + y) with its columns in the chunk.
fn chunk_rows(chunk: Range<usize>, w: usize) -> impl Iterator<Item = (usize, Range<usize>)> {
    let mut p = chunk.start;
    std::iter::from_fn(move || {
        (p < chunk.end).then(|| {
            let (row, a) = (p / w, p % w);
            let end = chunk.end.min((row + 1) * w);
            let b = a + (end - p);
            p = end;
            (row, a..b)
        })
    })
}

/// Adds the sums of tap row ky (`sums[kx][d]`: tap (ky, kx), the input rotated by d) for
/// vector `v` to the weight gradient `out`.
///
/// # Safety
/// `out` holds the nine taps' [`GroupLanes`] layout for `S`'s lanes, for reads and writes,
/// and `v < lg.vectors`, `CG == lg.cg`; the CPU runs `S`.
#[inline(always)]
unsafe fn add_sums<S: Simd, const CG: usize>(
    out: *mut S::E,
    ky: usize,
    sums: &[[S::V; CG]; 3],
    lg: GroupLanes,
    v: usize,
) {
    let tap_len = lg.tap_len(S::LANES);
    for (kx, sums) in sums.iter().enumerate() {
        for (d, &sum) in sums.iter().enumerate() {
            // SAFETY: within the layout of tap ky * 3 + kx (the caller's promise).
            unsafe {
                let o = out.add((ky * 3 + kx) * tap_len + (d * lg.vectors + v) * S::LANES);
                S::store(o, S::add(S::load(o), sum));
            }
        }
    }
}

/// [`chunk_sums`]'s sums for one row of taps over the output columns `cols` of an image
/// row, walked by output: each output column o's gradient `dy_row[o]` times the rotations
/// of source columns o - 1, o and o + 1 (taps 0, 1 and 2; columns outside the row are the
/// padding and add nothing), each rotated once and held while the three outputs that read
/// it pass. Each sum gains its products in the order of the output columns, as walking by
/// source column adds them.
///
/// # Safety
/// `x_row` and `dy_row` point at a vector of `n` filled lanes in column 0 of rows of `w`
/// pixels of `c` values; `cols` lies within `0..w`; `rotations` is
/// `gemm::group_rotations::<S>(CG)`; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_sums<S: Simd, const CG: usize>(
    x_row: *const S::E,
    dy_row: *const S::E,
    c: usize,
    n: usize,
    w: usize,
    rotations: &[S::Ix; MAX_GROUP],
    cols: Range<usize>,
    acc: &mut [[S::V; CG]; 3],
) {
    // SAFETY (whole body): every column read is within the row (the caller's promise).
    unsafe {
        let rotated = |q: usize| -> [S::V; CG] {
            let xv = load_upto::<S>(x_row.add(q * c), n);
            array_in_line!(xv; CG, |d| {
                if d == 0 {
                    xv
                } else {
                    S::permute(xv, rotations[d])
                }
            })
        };
        let zeros = [S::zero(); CG];
        // Source columns o - 1 and o for the output column o in hand.
        let mut before = if cols.start > 0 {
            rotated(cols.start - 1)
        } else {
            zeros
        };
        let mut here = rotated(cols.start);
        for o in cols {
            let g = load_upto::<S>(dy_row.add(o * c), n);
            let after = if o + 1 < w { rotated(o + 1) } else { zeros };
            if o > 0 {
                for (sum, &r) in acc[0].iter_mut().zip(&before) {
                    *sum = S::fma(r, g, *sum);
                }
            }
            for (sum, &r) in acc[1].iter_mut().zip(&here) {
                *sum = S::fma(r, g, *sum);
            }
            if o + 1 < w {
                for (sum, &r) in acc[2].iter_mut().zip(&after) {
                    *sum = S::fma(r, g, *sum);
                }
            }
            before = here;
            here = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{forward_with, input_grad_with, weight_grad_with};
    use crate::isa::available;
    use crate::testing::seeded;
    use candle_core::DType;

    /// Seeded values with every fifth one zero, as after a ReLU, so that zero products
    /// occur inside the image as well as in the padding.
    fn values<T: Element>(len: usize, dtype: DType, seed: u64) -> Vec<T> {
        let mut v = seeded(&[len], dtype, seed).to_vec1::<T>().expect("values");
        for x in v.iter_mut().step_by(5) {
            *x = T::zero();
        }
        v
    }

    /// The walks' forward, input gradient and weight gradient against the tiles' of `geo`,
    /// bit for bit.
    fn check<T: Element>(geo: &Geometry, dtype: DType, isa: Isa) {
        let x = values::<T>(geo.n * geo.h * geo.w * geo.c, dtype, 1);
        let w = values::<T>(geo.c_out * geo.cgi() * 9, dtype, 2);
        let dy = values::<T>(geo.n * geo.ho * geo.wo * geo.c_out, dtype, 3);
        let bits = |v: Vec<T>| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
        for (what, walked, tiled) in [
            (
                "forward",
                forward_with(&x, &w, geo, isa, true),
                forward_with(&x, &w, geo, isa, false),
            ),
            (
                "input gradient",
                input_grad_with(&dy, &w, geo, isa, true),
                input_grad_with(&dy, &w, geo, isa, false),
            ),
            (
                "weight gradient",
                weight_grad_with(&x, &dy, geo, isa, true),
                weight_grad_with(&x, &dy, geo, isa, false),
            ),
        ] {
            assert!(tiled.iter().any(|v| v.to_f64() != 0.0), "{what} {geo:?}");
            assert_eq!(
                bits(walked),
                bits(tiled),
                "{what} {dtype:?} {isa:?} {geo:?}"
            );
        }
    }

    /// On every path the machine runs, in f32 and f64: groups of 1 to 8 channels; rows of
    /// one vector, of several, and with a part-filled last (so the walks of four, two and
    /// one vectors all run); images 1 to 14 pixels wide and 1 to 6 high; stride 1 and 2;
    /// batches of one image, even ones and odd ones (on AVX-512, pairs of images walked
    /// together and an image alone).
    #[test]
    fn row_walks_give_the_group_lanes_tiles_outputs_bit_for_bit() {
        // (n, h, w, channels, groups)
        let shapes = [
            (2, 5, 14, 56, 8),   // 7 per group, four full vectors of 14
            (3, 2, 3, 64, 32),   // 2 per group
            (1, 1, 1, 4, 4),     // depthwise, one pixel
            (2, 4, 2, 21, 3),    // 7 per group, a vector of 14 and one of 7
            (1, 3, 5, 24, 3),    // 8 per group
            (2, 6, 7, 40, 8),    // 5 per group, three vectors (15, 15, 10)
            (1, 2, 9, 36, 9),    // 4 per group, a part-filled last vector
            (2, 3, 4, 120, 40),  // 3 per group, more vectors than one walk takes
            (3, 14, 14, 64, 32), // weight gradient: two pixel splits, chunks ending mid-row
            (4, 11, 13, 28, 4),  // 7 per group, the same with two vectors
            (3, 3, 5, 28, 4),    // 7 per group, an odd batch: a pair of images, then one
            (3, 2, 6, 32, 4),    // 8 per group, the same
        ];
        // Stride 2 (the forward and the input gradient), groups whose weights the passes
        // hold: even and odd sides, down to one pixel.
        let strided = [
            (2, 14, 14, 128, 32), // 4 per group, the 32x2d cell's
            (2, 7, 7, 96, 16),    // 6 per group, odd sides
            (1, 5, 6, 64, 32),    // 2 per group
            (1, 4, 5, 64, 64),    // depthwise, passes of four vectors
            (2, 1, 1, 12, 4),     // 3 per group, one pixel
            (1, 2, 3, 40, 8),     // 5 per group, a part-filled last vector
            (2, 3, 2, 20, 5),     // 4 per group, a part-filled last vector
        ];
        let (mut ran, mut ran_strided, mut ran_paired) = (0, 0, 0);
        for isa in available() {
            let shapes = shapes.iter().map(|&s| (s, 1));
            for ((n, h, w, c, g), stride) in shapes.chain(strided.iter().map(|&s| (s, 2))) {
                let geo = Geometry::new(&[n, h, w, c], &[c, c / g, 3, 3], stride, 1, g).unwrap();
                if walks_products(&geo, VectorPath::of(isa)) {
                    check::<f32>(&geo, DType::F32, isa);
                    check::<f64>(&geo, DType::F64, isa);
                    ran += 1;
                    ran_strided += usize::from(stride == 2);
                    let lg = GroupLanes::new(c, c / g, crate::simd::tile_shape::<f32>(isa).0);
                    ran_paired +=
                        usize::from(stride == 1 && n > 1 && pair_walks(lg, VectorPath::of(isa)));
                }
            }
        }
        let vectors = available()
            .iter()
            .any(|&i| VectorPath::of(i) != VectorPath::Scalar);
        assert!(!vectors || ran > 0, "no shape took the row walks");
        assert!(
            !vectors || ran_strided > 0,
            "no shape took the stride-2 walks"
        );
        let avx512 = available()
            .iter()
            .any(|&i| VectorPath::of(i) == VectorPath::Avx512);
        assert!(
            !avx512 || ran_paired > 0,
            "no shape walked two images together"
        );
    }
}
