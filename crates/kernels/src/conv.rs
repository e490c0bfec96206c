//! 2-d convolution of channels-last (NHWC) activations, as one candle custom op with its
//! backward pass.
//!
//! Every product runs over the whole batch: the rows of a product are the batch's output
//! pixels (N * Ho * Wo of them), its columns output channels. Each row reads the input
//! through one pointer per kernel tap (see `gemm::igemm_tile`), so no unfolded copy of the
//! input is made, and a 1x1 convolution is one product of [N*H*W, Cin] x [Cin, Cout].
//!
//! - **Forward**: per group, an indirect product over the taps, tiled over rows and column
//!   panels, the tiles spread over threads; a tile's row pointers serve several groups
//!   (`GroupBlock`).
//! - **Input gradient**: the transposed convolution as a gather. For stride s the input
//!   pixels fall into s x s classes by (y mod s, x mod s); within a class the same taps
//!   reach an output pixel, so each class is one indirect product over only those taps
//!   (no product with zeros).
//! - **Weight gradient**: a product summed over the pixels, in chunks whose gradient rows
//!   stay in cache while every tap uses them. Work is split into fixed ranges of pixels
//!   whose partial sums are added in order (every group in each, where the weight is small
//!   beside the output gradient), else over groups and blocks of input channels: the split
//!   depends on the shapes only, so results are bit-identical on every run and thread
//!   count.
//! - **Grouped convolutions with few channels per group** (up to 8 on AVX-512, 4 on AVX2)
//!   take the group-lanes path (`gemm::group_lanes_tile`): vectorized across groups, each
//!   vector holding whole groups, instead of products a few columns wide. Their 3x3
//!   products of stride 1 (forward, input and weight gradients) walk image rows instead
//!   (`group_rows`), which permutes each loaded vector once for the three taps of a row
//!   that read it.
//!
//! Weights keep torchvision's layout [Cout, Cin / groups, k, k]; they are packed for the
//! kernels on every call, and the weight gradient is returned in the same layout.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::bf16::{round_vec, Lines};
use crate::cpu::{contiguous, cpu_slice, SendPtr};
use crate::gemm::{self, GroupLanes, Packed, Panel, MAX_GROUP};
use crate::group_rows::{self, Walk};
use crate::isa::{self, Isa};
use crate::profile;
use crate::simd::{simd_call, tile_shape, Element, Simd, VectorPath};

/// The sizes of one convolution: input [n, h, w, c], weight [c_out, c / groups, k, k].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    /// Checks that the shapes fit together.
    pub fn new(
        x: &[usize],
        weight: &[usize],
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<Geometry> {
        let (&[n, h, w, c], &[c_out, c_group, kh, kw]) = (x, weight) else {
            candle_core::bail!(
                "conv2d: expected a 4-d NHWC input and a 4-d weight, got {x:?} and {weight:?}"
            );
        };
        if stride == 0 || groups == 0 {
            candle_core::bail!("conv2d: stride and groups must be at least 1");
        }
        if kh != kw || c_group * groups != c || c_out % groups != 0 || c_out == 0 {
            candle_core::bail!(
                "conv2d: weight {weight:?} does not fit the NHWC input {x:?} in {groups} groups"
            );
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!("conv2d: input {x:?} is smaller than the kernel {kh}x{kw}");
        }
        Ok(Geometry {
            n,
            h,
            w,
            c,
            c_out,
            k: kh,
            stride,
            pad,
            groups,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }

    pub fn cgi(&self) -> usize {
        self.c / self.groups
    }

    pub fn cgo(&self) -> usize {
        self.c_out / self.groups
    }

    pub fn taps(&self) -> usize {
        self.k * self.k
    }

    pub fn in_pixels(&self) -> usize {
        self.n * self.h * self.w
    }

    pub fn out_pixels(&self) -> usize {
        self.n * self.ho * self.wo
    }

    /// The profile table's line for `what` ("conv forward", say): the shape, the kind it is
    /// summed under (1x1, dense or grouped kxk) and its multiply-adds.
    pub(crate) fn label(&self, what: &str) -> profile::Label {
        let grouped = if self.groups > 1 { " grouped" } else { "" };
        profile::Label {
            name: format!(
                "{what} {}x{}x{}x{}->{} k{} s{} g{}",
                self.n, self.h, self.w, self.c, self.c_out, self.k, self.stride, self.groups
            ),
            kind: format!("{what} {k}x{k}{grouped}", k = self.k),
            macs: self.macs(),
        }
    }

    /// Multiply-adds of one of its products: the forward's count, which its input and
    /// weight gradients share (padding taps included, as complexity counts them).
    pub fn macs(&self) -> u64 {
        (self.n * self.ho * self.wo * self.c_out * self.cgi() * self.k * self.k) as u64
    }

    /// The output shape [n, ho, wo, c_out].
    pub fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.ho, self.wo, self.c_out))
    }

    /// (image, y, x) of output pixel `r`.
    #[inline(always)]
    fn out_pixel(&self, r: usize) -> (usize, usize, usize) {
        let (img, rest) = div_rem(r, self.ho * self.wo);
        let (y, x) = div_rem(rest, self.wo);
        (img, y, x)
    }

    /// Offset of input pixel (img, y, x) in values, or None where it lies in the padding.
    #[inline(always)]
    fn in_offset(&self, img: usize, y: isize, x: isize) -> Option<usize> {
        if y < 0 || x < 0 || y >= self.h as isize || x >= self.w as isize {
            return None;
        }
        Some(((img * self.h + y as usize) * self.w + x as usize) * self.c)
    }

    /// Whether a grouped convolution takes the group-lanes path on `path`: its groups are
    /// square and narrow enough that whole groups side by side in a vector, each group's
    /// inputs broadcast across its lanes, do less work than products padded to whole
    /// vectors.
    pub(crate) fn group_lanes(&self, path: VectorPath) -> bool {
        let limit = match path {
            VectorPath::Avx512 => MAX_GROUP,
            VectorPath::Avx2 => 4,
            VectorPath::Scalar => 0,
        };
        self.groups > 1 && self.cgi() == self.cgo() && self.cgi() <= limit
    }
}

/// Rows of an output block handed to one task: whole tiles of every path's row count.
pub(crate) const ROW_BLOCK: usize = 96;
/// Bytes of packed weights one task keeps in cache while it walks its rows.
const PANEL_BUDGET: usize = 256 << 10;
/// Bytes of group-lanes weights one task keeps in cache while it walks its rows: such a
/// task takes as many channel vectors as fit, so that it finds each row's tap pointers once
/// for all of them (for groups of two or four channels, finding the pointers costs as much
/// as the products of a vector or two).
const GROUP_LANES_BUDGET: usize = 48 << 10;
/// Pixels of a weight-gradient chunk: its gradient rows stay in cache across the taps.
pub(crate) const CHUNK: usize = 128;
/// Tasks the weight gradient aims for (a fixed number, so that its split, and so its
/// rounding, does not depend on the thread count).
pub(crate) const GRAD_TASKS: usize = 8;
/// Pixels a partial weight gradient sums at least: each partial costs a weight-sized buffer
/// to zero and to add.
const SPLIT_PIXELS: usize = 512;

/// (a / b, a % b), in 32 bits where both fit: every product row finds its pixel by two
/// divisions, and a 64-bit division costs several times a 32-bit one on many x86 cores.
#[inline(always)]
fn div_rem(a: usize, b: usize) -> (usize, usize) {
    match (u32::try_from(a), u32::try_from(b)) {
        (Ok(a), Ok(b)) => ((a / b) as usize, (a % b) as usize),
        _ => (a / b, a % b),
    }
}

/// `total` cut into consecutive ranges of `size` (the last shorter).
pub(crate) fn ranges(total: usize, size: usize) -> impl Iterator<Item = Range<usize>> {
    let size = size.max(1);
    (0..total.div_ceil(size)).map(move |i| i * size..((i + 1) * size).min(total))
}

/// Panels cut into groups whose packed values stay within `PANEL_BUDGET`.
fn panel_groups<T>(panels: &[Panel], depth: usize, lanes: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in panels.iter().enumerate() {
        let size = depth * p.nv * lanes * std::mem::size_of::<T>();
        if i > start && bytes + size > PANEL_BUDGET {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < panels.len() {
        groups.push(start..panels.len());
    }
    groups
}

/// A vector of `len` values that the tasks write in full through raw pointers.
///
/// # Safety
/// `fill` must write every one of the `len` values (from any threads, at disjoint places).
pub(crate) unsafe fn written_by<T>(len: usize, fill: impl FnOnce(SendPtr<T>)) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(len);
    fill(SendPtr(out.as_mut_ptr()));
    // SAFETY: the caller's promise: all `len` values were written.
    unsafe { out.set_len(len) };
    out
}

/// Offsets (in values) of each tap's pixel from the top-left pixel of its window.
pub(crate) fn tap_offsets(geo: &Geometry) -> Vec<usize> {
    (0..geo.k)
        .flat_map(|ky| (0..geo.k).map(move |kx| (ky * geo.w + kx) * geo.c))
        .collect()
}

/// Where the window of output row `r` lies inside the image: the index of its top-left
/// pixel's first value in the input.
#[inline(always)]
pub(crate) fn window_inside(geo: &Geometry, r: usize) -> Option<usize> {
    let (img, oy, ox) = geo.out_pixel(r);
    let (y0, x0) = (
        (oy * geo.stride) as isize - geo.pad as isize,
        (ox * geo.stride) as isize - geo.pad as isize,
    );
    let k = geo.k as isize;
    (y0 >= 0 && x0 >= 0 && y0 + k <= geo.h as isize && x0 + k <= geo.w as isize)
        .then(|| ((img * geo.h + y0 as usize) * geo.w + x0 as usize) * geo.c)
}

/// Input gather of a forward product: for output row `r`, the pointer each tap reads
/// (`x + pixel + offset`), or the zero row (`zero + offset`) in the padding. Windows that
/// lie inside the image (most of them) take one base plus the precomputed `taps`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_pointers<T>(
    geo: &Geometry,
    taps: &[usize],
    x: *const T,
    zero: *const T,
    offset: usize,
    r: usize,
    mut put: impl FnMut(usize, *const T),
) {
    if let Some(base) = window_inside(geo, r) {
        for (t, &tap) in taps.iter().enumerate() {
            put(t, x.wrapping_add(base + offset + tap));
        }
        return;
    }
    let (img, oy, ox) = geo.out_pixel(r);
    let (y0, x0) = (
        (oy * geo.stride) as isize - geo.pad as isize,
        (ox * geo.stride) as isize - geo.pad as isize,
    );
    for ky in 0..geo.k {
        for kx in 0..geo.k {
            let p = match geo.in_offset(img, y0 + ky as isize, x0 + kx as isize) {
                Some(at) => x.wrapping_add(at + offset),
                None => zero.wrapping_add(offset),
            };
            put(ky * geo.k + kx, p);
        }
    }
}

/// One class of the input gradient for stride s: the input pixels (y mod s, x mod s) =
/// (ry, rx), and the taps that reach them.
pub(crate) struct Class {
    ry: usize,
    rx: usize,
    ny: usize,
    nx: usize,
    pub(crate) taps: Vec<(usize, usize)>,
    /// Per class tap, the offset (in values) of that output row from row (img, yy, xx).
    deltas: Vec<isize>,
    /// The least and greatest shift (y, x) from the class pixel (yy, xx) to the output row
    /// a tap reads: a pixel whose every tap lies inside the output takes one base plus
    /// the deltas.
    low: (isize, isize),
    high: (isize, isize),
}

pub(crate) fn classes(geo: &Geometry) -> Vec<Class> {
    let s = geo.stride;
    let mut out = Vec::with_capacity(s * s);
    for ry in 0..s {
        for rx in 0..s {
            let fits = |r: usize, t: usize| (r + geo.pad) as isize - t as isize;
            let taps: Vec<(usize, usize)> = (0..geo.k)
                .flat_map(|ky| (0..geo.k).map(move |kx| (ky, kx)))
                .filter(|&(ky, kx)| {
                    fits(ry, ky).rem_euclid(s as isize) == 0
                        && fits(rx, kx).rem_euclid(s as isize) == 0
                })
                .collect();
            // Tap (ky, kx) reads output row (yy + dy, xx + dx) for class pixel (yy, xx): the
            // division by the stride is exact for a class tap.
            let shifts: Vec<(isize, isize)> = taps
                .iter()
                .map(|&(ky, kx): &(usize, usize)| {
                    (
                        fits(ry, ky).div_euclid(s as isize),
                        fits(rx, kx).div_euclid(s as isize),
                    )
                })
                .collect();
            let deltas = shifts
                .iter()
                .map(|&(dy, dx)| (dy * geo.wo as isize + dx) * geo.c_out as isize)
                .collect();
            let fold = |pick: fn(isize, isize) -> isize, init: isize| {
                shifts
                    .iter()
                    .fold((init, init), |(y, x), &(dy, dx)| (pick(y, dy), pick(x, dx)))
            };
            let (low, high) = if shifts.is_empty() {
                ((0, 0), (0, 0))
            } else {
                (fold(isize::min, isize::MAX), fold(isize::max, isize::MIN))
            };
            out.push(Class {
                ry,
                rx,
                ny: geo.h.saturating_sub(ry).div_ceil(s),
                nx: geo.w.saturating_sub(rx).div_ceil(s),
                taps,
                deltas,
                low,
                high,
            });
        }
    }
    out
}

impl Class {
    pub(crate) fn rows(&self, geo: &Geometry) -> usize {
        geo.n * self.ny * self.nx
    }

    /// (image, y, x) of the class's input pixel `r`.
    #[inline(always)]
    fn pixel(&self, geo: &Geometry, r: usize) -> (usize, usize, usize) {
        let (img, rest) = div_rem(r, self.ny * self.nx);
        let (y, x) = div_rem(rest, self.nx);
        (img, self.ry + geo.stride * y, self.rx + geo.stride * x)
    }

    /// For input pixel `r` of the class, the output-gradient row each class tap comes
    /// from (`dy + offset`), or the zero row where it lies outside the output.
    #[inline(always)]
    pub(crate) fn pointers<T>(
        &self,
        geo: &Geometry,
        dy: *const T,
        zero: *const T,
        offset: usize,
        r: usize,
        mut put: impl FnMut(usize, *const T),
    ) {
        let (img, rest) = div_rem(r, self.ny * self.nx);
        let (yy, xx) = div_rem(rest, self.nx);
        let (yy, xx) = (yy as isize, xx as isize);
        if yy + self.low.0 >= 0
            && xx + self.low.1 >= 0
            && yy + self.high.0 < geo.ho as isize
            && xx + self.high.1 < geo.wo as isize
        {
            let base = (((img * geo.ho) as isize + yy) * geo.wo as isize + xx) * geo.c_out as isize
                + offset as isize;
            for (t, &delta) in self.deltas.iter().enumerate() {
                put(t, dy.wrapping_offset(base + delta));
            }
            return;
        }
        self.pointers_at_border(geo, dy, zero, offset, r, put);
    }

    /// `pointers` tap by tap, each checked against the output's bounds.
    #[inline(always)]
    fn pointers_at_border<T>(
        &self,
        geo: &Geometry,
        dy: *const T,
        zero: *const T,
        offset: usize,
        r: usize,
        mut put: impl FnMut(usize, *const T),
    ) {
        let (img, y, x) = self.pixel(geo, r);
        let shift = match geo.stride {
            1 => Some(0),
            2 => Some(1),
            _ => None,
        };
        for (t, &(ky, kx)) in self.taps.iter().enumerate() {
            // (y + pad - ky) is a multiple of the stride for a class tap.
            let (ny, nx) = (
                (y + geo.pad) as isize - ky as isize,
                (x + geo.pad) as isize - kx as isize,
            );
            let (oy, ox) = match shift {
                Some(bits) => (ny >> bits, nx >> bits),
                None => (ny / geo.stride as isize, nx / geo.stride as isize),
            };
            let inside = ny >= 0 && nx >= 0 && oy < geo.ho as isize && ox < geo.wo as isize;
            let p = if inside {
                let at = ((img * geo.ho + oy as usize) * geo.wo + ox as usize) * geo.c_out;
                dy.wrapping_add(at + offset)
            } else {
                zero.wrapping_add(offset)
            };
            put(t, p);
        }
    }

    /// Offset of the class's input pixel `r` in the input (gradient).
    #[inline(always)]
    pub(crate) fn offset(&self, geo: &Geometry, r: usize) -> usize {
        let (img, y, x) = self.pixel(geo, r);
        ((img * geo.h + y) * geo.w + x) * geo.c
    }
}

/// Rows `rows` of a product, tile by tile: for each tile of MR rows (the last may have
/// fewer `valid` ones) the tap pointers of its rows, tap-major (`table[t * MR + i]`, from
/// `pointers(r, row)`; the zero row for absent rows), and where each row's output starts
/// (`out_row(r)`; null for absent rows), handed to `product` with the next tile's table
/// (empty after the last tile), which it may ask the cache for while it works: a tile's
/// rows are read once, so they come from memory, and a tile ahead is far enough for the
/// lines to arrive before they are needed, where the sub-tile before is not.
#[inline(always)]
fn for_each_tile<E, const MR: usize>(
    rows: Range<usize>,
    taps: usize,
    zero: *const E,
    pointers: impl Fn(usize, &mut [*const E]),
    out_row: impl Fn(usize) -> *mut E,
    mut product: impl FnMut(&[*const E], &[*const E], &[*mut E; MR], usize),
) {
    let mut row = vec![zero; taps];
    let mut fill = |tile: usize, table: &mut [*const E]| {
        for i in 0..MR {
            if tile + i < rows.end {
                pointers(tile + i, &mut row);
                for t in 0..taps {
                    table[t * MR + i] = row[t];
                }
            } else {
                for t in 0..taps {
                    table[t * MR + i] = zero;
                }
            }
        }
    };
    let mut table = vec![zero; taps * MR];
    let mut ahead = vec![zero; taps * MR];
    let mut tile = rows.start;
    if tile < rows.end {
        fill(tile, &mut table);
    }
    while tile < rows.end {
        let valid = (rows.end - tile).min(MR);
        let next = tile + MR;
        if next < rows.end {
            fill(next, &mut ahead);
        }
        let starts: [*mut E; MR] = std::array::from_fn(|i| {
            if i < valid {
                out_row(tile + i)
            } else {
                std::ptr::null_mut()
            }
        });
        let ahead_table: &[*const E] = if next < rows.end { &ahead } else { &[] };
        product(&table, ahead_table, &starts, valid);
        std::mem::swap(&mut table, &mut ahead);
        tile = next;
    }
}

/// The groups of a grouped product that one task runs, sharing each tile's row pointers:
/// group g multiplies its own channels of the rows those pointers give by `packed[g]`'s
/// panels `panels` and writes its own columns of each output row (see `product_rows`).
/// Computing the pointers once for the groups, rather than once per group, is what keeps
/// narrow groups (a few channels each) from spending more time on their pointers than on
/// their products.
#[derive(Clone)]
pub(crate) struct GroupBlock {
    pub groups: Range<usize>,
    pub panels: Range<usize>,
}

/// Group blocks covering every (group, panel) of a grouped product once: groups whose packed
/// weights fit one task's cache budget whole are taken several at a time (as many as fit),
/// wider ones one group and one cache-sized range of its panels at a time.
pub(crate) fn group_blocks<T: Element>(
    packed: &[Packed<T>],
    depth: usize,
    lanes: usize,
) -> Vec<GroupBlock> {
    let panels = &packed[0].panels;
    let per_group = panel_groups::<T>(panels, depth, lanes);
    if per_group.len() > 1 {
        return (0..packed.len())
            .flat_map(|g| {
                per_group.iter().map(move |p| GroupBlock {
                    groups: g..g + 1,
                    panels: p.clone(),
                })
            })
            .collect();
    }
    let bytes = packed[0].data.len() * std::mem::size_of::<T>();
    let together = (PANEL_BUDGET / bytes.max(1)).max(1);
    ranges(packed.len(), together)
        .map(|groups| GroupBlock {
            groups,
            panels: 0..panels.len(),
        })
        .collect()
}

/// How a grouped product writes its output rows (see [`product_rows`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stores {
    /// Each group's columns straight into the output.
    Direct,
    /// Each tile's columns into a buffer, then copied whole to the output.
    Staged,
    /// As `Staged`, the copies streamed (see [`copy_columns`]).
    Streamed,
}

/// Bytes of a cache line on the CPUs the vector paths target.
const LINE_BYTES: usize = 64;

impl Stores {
    /// How a product of `groups` groups of `width` columns into `len` values writes them;
    /// `gaps`: whether the rows of a tile lie apart in the output (a strided input
    /// gradient's classes of pixels). Stores of a group's columns rarely fill whole cache
    /// lines; where a group is narrower than a line, or a tile's rows lie apart, a line
    /// the cache lacks is read from memory for each such store to part of it, which costs
    /// more than the copy. Where the output would overflow a core's cache, the copies
    /// stream.
    pub(crate) fn of<T>(groups: usize, width: usize, len: usize, gaps: bool) -> Stores {
        let value_bytes = std::mem::size_of::<T>();
        if groups == 1 || !(width * value_bytes < LINE_BYTES || gaps) {
            Stores::Direct
        } else if len * value_bytes >= crate::simd::STREAM_BYTES {
            Stores::Streamed
        } else {
            Stores::Staged
        }
    }
}

/// Rows of indirect products (see `for_each_tile`); each tile runs every group and panel of
/// `block`, group g reading its channels `g * skip..` of the rows and writing its columns
/// `g * width..` (see [`GroupBlock`]).
///
/// `stores` says whether the products write the output rows directly or through a buffer
/// (see [`Stores`]).
///
/// # Safety
/// Pointers given by `pointers` are valid for `skip * block.groups.end` reads (the zero row
/// where a row is absent), every `packed[g]` holds `taps * kc`-deep panels, and
/// `out_row(r) + g * width + panel.col` is valid for `panel.width` writes for every row r of
/// `rows` and group g of the block; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn product_rows<S: Simd, const MR: usize>(
    rows: Range<usize>,
    taps: usize,
    kc: usize,
    zero: *const S::E,
    packed: &[Packed<S::E>],
    block: &GroupBlock,
    skip: usize,
    width: usize,
    stores: Stores,
    pointers: impl Fn(usize, &mut [*const S::E]),
    out_row: impl Fn(usize) -> *mut S::E,
) {
    // The block's columns of a row, one run: all of each of its groups, or one group's run
    // of panels.
    let panels = &packed[0].panels[block.panels.clone()];
    let (first, last) = (panels[0], panels[panels.len() - 1]);
    let cols = block.groups.start * width + first.col
        ..(block.groups.end - 1) * width + last.col + last.width;
    let (staged, stream) = (stores != Stores::Direct, stores == Stores::Streamed);
    let mut buffer: Vec<S::E> = Vec::with_capacity(if staged { MR * cols.len() } else { 0 });
    let buffer_rows: [*mut S::E; MR] =
        std::array::from_fn(|i| buffer.as_mut_ptr().wrapping_add(i * cols.len()));
    // Where the products write: their columns' place in the buffer, or in the output.
    let base = if staged { cols.start } else { 0 };
    for_each_tile::<S::E, MR>(
        rows,
        taps,
        zero,
        pointers,
        out_row,
        #[inline(always)]
        |table, ahead, out_rows, valid| {
            let starts = if staged { &buffer_rows } else { out_rows };
            // Only a 1x1 product reads each input row in one tile; a wider window's next
            // tile reads mostly rows this one has brought in.
            let ahead = if taps == 1 { ahead } else { &[] };
            for g in block.groups.clone() {
                let packed = &packed[g];
                let panels = &packed.panels[block.panels.clone()];
                for (p, panel) in panels.iter().enumerate() {
                    // The next group's channels of the same rows run next, after this
                    // group's last panel.
                    let then = if p + 1 == panels.len() && g + 1 < block.groups.end {
                        g + 1
                    } else {
                        g
                    };
                    // SAFETY: the caller's promises, for this tile, group and panel.
                    unsafe {
                        gemm::igemm_panel::<S, MR>(
                            table,
                            // The group's first panel asks for the next tile's rows; the
                            // panels after it read the same channels.
                            if p == 0 { ahead } else { &[] },
                            g * skip,
                            taps,
                            kc,
                            packed.data.as_ptr().add(panel.offset),
                            *panel,
                            starts,
                            g * width + panel.col - base,
                            valid,
                            then * skip,
                        );
                    }
                }
            }
            if staged {
                // Whole rows one after another in the output (a stride-1 product's) are
                // copied as one run, so that only its ends share lines with other tiles.
                let len = cols.len();
                let run = cols.start == 0
                    && len == width * packed.len()
                    && (1..valid).all(|i| out_rows[i] == out_rows[0].wrapping_add(i * len));
                // SAFETY: the buffer rows hold the block's columns, written above, one after
                // another; each output row has them from `cols.start`, and in a run the rows
                // follow one another (the caller's promise, and the check above).
                unsafe {
                    if run {
                        copy_columns::<S>(buffer.as_ptr(), out_rows[0], valid * len, stream);
                    } else {
                        for (&from, &to) in buffer_rows.iter().zip(out_rows).take(valid) {
                            copy_columns::<S>(from, to.add(cols.start), len, stream);
                        }
                    }
                }
            }
        },
    );
    if staged && stream {
        // SAFETY: the CPU runs `S` (the caller's promise).
        unsafe { S::fence() };
    }
}

/// Copies `len` values from `from` to `to`, whole vectors at a time; where `stream`, those
/// on addresses aligned to a vector's bytes are streamed (see `Simd::stream`), which spares
/// an output larger than the caches the reads of lines that are only to be overwritten.
/// Streamed stores must be fenced before the output is handed on.
///
/// # Safety
/// `from` is valid for `len` reads and `to` for `len` writes; the CPU runs `S`.
#[inline(always)]
unsafe fn copy_columns<S: Simd>(from: *const S::E, to: *mut S::E, len: usize, stream: bool) {
    let value_bytes = std::mem::size_of::<S::E>();
    let [head, body, tail] = if stream {
        crate::simd::stream_parts(0..len, to as usize, value_bytes, S::LANES)
    } else {
        [
            0..0,
            0..len / S::LANES * S::LANES,
            len / S::LANES * S::LANES..len,
        ]
    };
    // SAFETY: every part lies within the `len` values (the caller's promise); head and tail
    // hold fewer than LANES values, the body whole vectors, aligned where streamed.
    unsafe {
        for part in [head, tail] {
            if !part.is_empty() {
                let v = S::load_partial(from.add(part.start), part.len());
                S::store_partial(to.add(part.start), v, part.len());
            }
        }
        for at in body.step_by(S::LANES) {
            let v = S::load(from.add(at));
            if stream {
                S::stream(to.add(at), v);
            } else {
                S::store(to.add(at), v);
            }
        }
    }
}

/// Rows of group-lanes products (see `for_each_tile`) for the channel vectors `vectors`,
/// each tile vector by vector or, `rows_first`, rows by rows (see
/// `gemm::group_lanes_vectors`).
///
/// # Safety
/// As `product_rows`, for rows of `lg.channels` values and weights `w` of
/// `taps * lg.tap_len(LANES)` values laid out as [`GroupLanes`] says, with `vectors`
/// within `lg.vectors`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_lanes_rows<S: Simd, const MR: usize>(
    rows: Range<usize>,
    rows_first: bool,
    taps: usize,
    lg: GroupLanes,
    w: &[S::E],
    vectors: Range<usize>,
    zero: *const S::E,
    pointers: impl Fn(usize, &mut [*const S::E]),
    out_row: impl Fn(usize) -> *mut S::E,
) {
    // SAFETY: the path's CPU (the caller's promise); `lg.cg` fits (`GroupLanes::new`).
    let bcast = unsafe { gemm::group_broadcasts::<S>(lg.cg) };
    for_each_tile::<S::E, MR>(rows, taps, zero, pointers, out_row, |table, _, c, valid| {
        // SAFETY: the caller's promises, for this tile.
        unsafe {
            gemm::group_lanes_vectors::<S, MR>(
                vectors.len(),
                table,
                taps,
                lg,
                w.as_ptr(),
                &bcast,
                vectors.start,
                c,
                valid,
                rows_first,
            )
        };
    });
}

/// `gemm::wgrad_rows` as an entry of `simd_call!`.
///
/// # Safety
/// As `gemm::wgrad_rows`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_entry<S: Simd, const MR: usize>(
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
    ahead: gemm::Lookahead,
) {
    // SAFETY: passed on.
    unsafe { gemm::wgrad_rows::<S>(rows, nv, x, skip, dy, ldy, width, readable, out, ldo, ahead) }
}

/// The group-lanes weight gradient of the channel vectors `vectors` for every tap, taps
/// in blocks of `gemm::group_lanes_wgrad_taps` (see `gemm::group_lanes_wgrad`): tap t's
/// pixel pointers are `x[t * stride..][..len]`, its output `out + t * tap_len`.
///
/// # Safety
/// As `gemm::group_lanes_wgrad` for each tap, with `vectors` within `lg.vectors`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_lanes_wgrad_rows<S: Simd, const MR: usize>(
    x: &[*const S::E],
    stride: usize,
    len: usize,
    taps: usize,
    dy: *const S::E,
    ldy: usize,
    lg: GroupLanes,
    vectors: Range<usize>,
    out: *mut S::E,
) {
    let tap_len = lg.tap_len(S::LANES);
    let block = gemm::group_lanes_wgrad_taps(lg.cg);
    // SAFETY: passed on; the path's CPU (the caller's promise).
    unsafe {
        let rotations = gemm::group_rotations::<S>(lg.cg);
        // Vector by vector, every tap: a vector's columns of the chunk's rows stay in the
        // first-level cache across the taps.
        for v in vectors {
            for t in ranges(taps, block) {
                gemm::group_lanes_wgrad_block::<S>(
                    &x[t.start * stride..],
                    stride,
                    len,
                    t.len(),
                    dy,
                    ldy,
                    lg,
                    &rotations,
                    v,
                    out.add(t.start * tap_len),
                )
            }
        }
    }
}

/// Weights in the [`GroupLanes`] layout for the taps `taps`: at (tap index i, b), lane l of
/// vector v holds `weight(ch, b, taps[i])` for channel ch = v * width + l of the row (zero
/// past the whole groups and past the row's end).
fn group_lanes_weights<T: Element>(
    lg: GroupLanes,
    lanes: usize,
    taps: &[usize],
    weight: impl Fn(usize, usize, usize) -> T,
) -> Lines<T> {
    let tap_len = lg.tap_len(lanes);
    let mut out = Lines::zeroed(taps.len() * tap_len);
    for (i, &t) in taps.iter().enumerate() {
        for b in 0..lg.cg {
            for v in 0..lg.vectors {
                for l in 0..lg.filled(v) {
                    out[i * tap_len + (b * lg.vectors + v) * lanes + l] =
                        weight(v * lg.width + l, b, t);
                }
            }
        }
    }
    out
}

/// The input gradient's group-lanes weights for the taps `taps` of a weight with `all_taps`
/// taps: dx[q][ci] sums dy[p][o] * w[o][ci] over the outputs o of ci's group, so input
/// channel ci's b-th weight is that of its group's output b to it (each group's weights
/// transposed).
fn input_grad_weights<T: Element>(
    lg: GroupLanes,
    lanes: usize,
    taps: &[usize],
    w: &[T],
    all_taps: usize,
) -> Lines<T> {
    let cg = lg.cg;
    group_lanes_weights(lg, lanes, taps, |ci, o, t| {
        w[(((ci / cg) * cg + o) * cg + ci % cg) * all_taps + t]
    })
}

/// The channel vectors of a group-lanes product cut into the blocks one task takes: as
/// many vectors as keep the block's weights (`taps` taps) within `GROUP_LANES_BUDGET`.
fn group_lanes_blocks<T>(lg: GroupLanes, taps: usize, lanes: usize) -> Vec<Range<usize>> {
    let per_vector = taps * lg.cg * lanes * std::mem::size_of::<T>();
    let together = (GROUP_LANES_BUDGET / per_vector.max(1)).max(1);
    ranges(lg.vectors, together).collect()
}

/// y = conv(x, w): [n, ho, wo, c_out].
pub(crate) fn forward<T: Element>(x: &[T], w: &[T], geo: &Geometry, isa: Isa) -> Vec<T> {
    forward_with(x, w, geo, isa, true)
}

/// `forward`, with the row walks of `group_rows` where they apply if `by_rows`, else the
/// group-lanes tiles (which the tests hold the walks to, bit for bit).
pub(crate) fn forward_with<T: Element>(
    x: &[T],
    w: &[T],
    geo: &Geometry,
    isa: Isa,
    by_rows: bool,
) -> Vec<T> {
    let (lanes, nv_max, _) = tile_shape::<T>(isa);
    let zero = vec![T::zero(); geo.c.max(geo.c_out)];
    let (xp, zp) = (
        SendPtr(x.as_ptr() as *mut T),
        SendPtr(zero.as_ptr() as *mut T),
    );
    let rows = geo.out_pixels();
    let taps = geo.taps();
    let offsets = tap_offsets(geo);
    if geo.group_lanes(VectorPath::of(isa)) {
        let (cg, all_taps) = (geo.cgi(), (0..taps).collect::<Vec<_>>());
        let lg = GroupLanes::new(geo.c, cg, lanes);
        let wl = group_lanes_weights(lg, lanes, &all_taps, |ch, b, t| w[(ch * cg + b) * taps + t]);
        let blocks = group_lanes_blocks::<T>(lg, taps, lanes);
        if by_rows && group_rows::walks_products(geo, VectorPath::of(isa)) {
            return group_rows::product(x, &wl, lg, geo, Walk::Forward, &blocks, isa);
        }
        let tasks: Vec<(Range<usize>, Range<usize>)> = ranges(rows, ROW_BLOCK)
            .flat_map(|r| blocks.iter().map(move |v| (r.clone(), v.clone())))
            .collect();
        // SAFETY: the tasks cover every row and channel vector once; each writes the
        // channels of its vectors for its rows.
        return unsafe {
            written_by(rows * geo.c_out, |out: SendPtr<T>| {
                tasks.par_iter().for_each(|(rows, vectors)| {
                    simd_call!(
                        isa,
                        T,
                        group_lanes_rows(
                            rows.clone(),
                            false,
                            taps,
                            lg,
                            &wl,
                            vectors.clone(),
                            zp.get(),
                            |r, row| forward_pointers(
                                geo,
                                &offsets,
                                xp.get(),
                                zp.get(),
                                0,
                                r,
                                |t, p| row[t] = p
                            ),
                            |r| out.get().wrapping_add(r * geo.c_out),
                        )
                    )
                })
            })
        };
    }
    let (cgi, cgo) = (geo.cgi(), geo.cgo());
    let depth = taps * cgi;
    let packed: Vec<Packed<T>> = (0..geo.groups)
        .map(|g| {
            // Row (t, ci) of B is the weight of input channel ci at tap t; column o that of
            // output channel o, whose weights lie together.
            Packed::from_columns(
                cgo,
                depth,
                lanes,
                nv_max,
                &w[g * cgo * cgi * taps..],
                cgi * taps,
                |row| (row % cgi) * taps + row / cgi,
            )
        })
        .collect();
    let blocks = group_blocks(&packed, depth, lanes);
    let stores = Stores::of::<T>(geo.groups, cgo, rows * geo.c_out, false);
    let tasks: Vec<(Range<usize>, &GroupBlock)> = ranges(rows, ROW_BLOCK)
        .flat_map(|r| blocks.iter().map(move |b| (r.clone(), b)))
        .collect();
    // SAFETY: tasks cover every (row, group, panel) once, and a panel's columns lie in its
    // group's; pointers read rows of c values or the zero row (c values too).
    unsafe {
        written_by(rows * geo.c_out, |out: SendPtr<T>| {
            tasks.par_iter().for_each(|(rows, block)| {
                simd_call!(
                    isa,
                    T,
                    product_rows(
                        rows.clone(),
                        taps,
                        cgi,
                        zp.get(),
                        &packed,
                        block,
                        cgi,
                        cgo,
                        stores,
                        |r, row| forward_pointers(
                            geo,
                            &offsets,
                            xp.get(),
                            zp.get(),
                            0,
                            r,
                            |t, p| row[t] = p
                        ),
                        |r| out.get().wrapping_add(r * geo.c_out),
                    )
                )
            })
        })
    }
}

/// dx of y = conv(x, w) given dy: [n, h, w, c].
pub(crate) fn input_grad<T: Element>(dy: &[T], w: &[T], geo: &Geometry, isa: Isa) -> Vec<T> {
    input_grad_with(dy, w, geo, isa, true)
}

/// `input_grad`, with the row walks of `group_rows` where they apply if `by_rows` (see
/// `forward_with`).
pub(crate) fn input_grad_with<T: Element>(
    dy: &[T],
    w: &[T],
    geo: &Geometry,
    isa: Isa,
    by_rows: bool,
) -> Vec<T> {
    let (lanes, nv_max, _) = tile_shape::<T>(isa);
    if by_rows && group_rows::walks_products(geo, VectorPath::of(isa)) {
        // The walks take every tap, each input pixel's in order, as its class does (see
        // `classes`); each group's weights transposed, as below.
        let (cg, taps) = (geo.cgi(), geo.taps());
        let lg = GroupLanes::new(geo.c, cg, lanes);
        let all_taps = (0..taps).collect::<Vec<_>>();
        let wl = input_grad_weights(lg, lanes, &all_taps, w, taps);
        let blocks = group_lanes_blocks::<T>(lg, taps, lanes);
        return group_rows::product(dy, &wl, lg, geo, Walk::InputGrad, &blocks, isa);
    }
    let zero = vec![T::zero(); geo.c.max(geo.c_out)];
    let (dyp, zp) = (
        SendPtr(dy.as_ptr() as *mut T),
        SendPtr(zero.as_ptr() as *mut T),
    );
    let taps = geo.taps();
    let classes = classes(geo);
    let group_lanes = geo.group_lanes(VectorPath::of(isa));
    let (cgi, cgo) = (geo.cgi(), geo.cgo());
    // Per class: the packed weights of its taps (per group), or the group-lanes weights.
    enum Weights<T> {
        Products(Vec<Packed<T>>),
        GroupLanes(GroupLanes, Lines<T>),
        None,
    }
    let weights: Vec<Weights<T>> = classes
        .iter()
        .map(|class| {
            let ct = class.taps.len();
            if ct == 0 {
                return Weights::None;
            }
            if group_lanes {
                // The forward product with each group's weights transposed.
                let lg = GroupLanes::new(geo.c, cgi, lanes);
                let class_taps: Vec<usize> =
                    class.taps.iter().map(|&(ky, kx)| ky * geo.k + kx).collect();
                let wt = input_grad_weights(lg, lanes, &class_taps, w, taps);
                return Weights::GroupLanes(lg, wt);
            }
            let depth = ct * cgo;
            let class_taps: Vec<usize> =
                class.taps.iter().map(|&(ky, kx)| ky * geo.k + kx).collect();
            Weights::Products(
                (0..geo.groups)
                    .map(|g| {
                        // Row (ti, o) of B, column ci, is the weight of output channel o
                        // and input channel ci at the class's tap ti: each output channel's
                        // weights, one run, give its rows at every tap of the class.
                        // SAFETY: source o puts rows ti * cgo + o, each once, of cgi values.
                        unsafe {
                            Packed::from_rows(cgi, depth, lanes, nv_max, cgo, |o, put| {
                                let weights = &w[(g * cgo + o) * cgi * taps..][..cgi * taps];
                                // The run read once, in order, into a row per tap (a 1x1's
                                // run is its one row already).
                                let transposed: Vec<T>;
                                let by_tap = if taps == 1 {
                                    weights
                                } else {
                                    let mut rows = vec![T::zero(); taps * cgi];
                                    for (ci, tap_weights) in weights.chunks_exact(taps).enumerate()
                                    {
                                        for (t, &value) in tap_weights.iter().enumerate() {
                                            rows[t * cgi + ci] = value;
                                        }
                                    }
                                    transposed = rows;
                                    &transposed
                                };
                                for (ti, &tap) in class_taps.iter().enumerate() {
                                    put(ti * cgo + o, &by_tap[tap * cgi..][..cgi]);
                                }
                            })
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    // What a task does for its class's rows.
    enum Work {
        Products(GroupBlock),
        Vectors(Range<usize>),
        Zeros,
    }
    // Tasks: (class, rows, work).
    let mut tasks: Vec<(usize, Range<usize>, Work)> = Vec::new();
    for (ci, class) in classes.iter().enumerate() {
        let rows = class.rows(geo);
        match &weights[ci] {
            Weights::Products(packed) => {
                let depth = class.taps.len() * cgo;
                let blocks = group_blocks(packed, depth, lanes);
                for r in ranges(rows, ROW_BLOCK) {
                    for b in &blocks {
                        tasks.push((ci, r.clone(), Work::Products(b.clone())));
                    }
                }
            }
            Weights::GroupLanes(lg, _) => {
                let blocks = group_lanes_blocks::<T>(*lg, class.taps.len(), lanes);
                for r in ranges(rows, ROW_BLOCK) {
                    for v in &blocks {
                        tasks.push((ci, r.clone(), Work::Vectors(v.clone())));
                    }
                }
            }
            Weights::None => {
                for r in ranges(rows, ROW_BLOCK) {
                    tasks.push((ci, r, Work::Zeros));
                }
            }
        }
    }
    let stores = Stores::of::<T>(geo.groups, cgi, geo.in_pixels() * geo.c, geo.stride > 1);
    // SAFETY: the classes partition the input pixels; within a class the tasks cover every
    // row, group and panel (or vector) once, and tap-less classes write their rows' zeros.
    unsafe {
        written_by(geo.in_pixels() * geo.c, |out: SendPtr<T>| {
            tasks.par_iter().for_each(|(ci, rows, work)| {
                let class = &classes[*ci];
                let ct = class.taps.len();
                match (&weights[*ci], work) {
                    (Weights::Products(packed), Work::Products(block)) => {
                        simd_call!(
                            isa,
                            T,
                            product_rows(
                                rows.clone(),
                                ct,
                                cgo,
                                zp.get(),
                                packed,
                                block,
                                cgo,
                                cgi,
                                stores,
                                |r, row| class
                                    .pointers(geo, dyp.get(), zp.get(), 0, r, |t, p| row[t] = p),
                                |r| out.get().wrapping_add(class.offset(geo, r)),
                            )
                        )
                    }
                    (Weights::GroupLanes(lg, wt), Work::Vectors(vectors)) => {
                        simd_call!(
                            isa,
                            T,
                            group_lanes_rows(
                                rows.clone(),
                                true,
                                ct,
                                *lg,
                                wt,
                                vectors.clone(),
                                zp.get(),
                                |r, row| class
                                    .pointers(geo, dyp.get(), zp.get(), 0, r, |t, p| row[t] = p),
                                |r| out.get().wrapping_add(class.offset(geo, r)),
                            )
                        )
                    }
                    (_, Work::Zeros) => {
                        for r in rows.clone() {
                            let row = out.get().add(class.offset(geo, r));
                            for i in 0..geo.c {
                                row.add(i).write(T::zero());
                            }
                        }
                    }
                    _ => unreachable!("a task's work matches its class's weights"),
                }
            })
        })
    }
}

/// How the weight gradient's sum is split: blocks of the weight (up to `max_blocks`; each
/// re-reads the output gradient) or ranges of pixels (each adds a partial gradient);
/// whichever costs less memory traffic, up to `GRAD_TASKS` tasks. Where a task can take
/// every group (`whole_groups`), a small weight is split by pixels whatever the groups:
/// each task then reads whole rows and finds each pixel's pointers once, rather than a
/// task per few groups walking every pixel. Depends on the shapes only.
pub(crate) fn grad_split(
    geo: &Geometry,
    groups: usize,
    max_blocks: usize,
    whole_groups: bool,
) -> (usize, usize) {
    let weight_size = geo.c_out * geo.cgi() * geo.taps();
    let grad_size = geo.out_pixels() * geo.c_out;
    let ranges = geo.out_pixels().div_ceil(SPLIT_PIXELS);
    if whole_groups && weight_size <= grad_size {
        return (1, GRAD_TASKS.min(ranges).max(1));
    }
    if groups >= GRAD_TASKS {
        return (1, 1);
    }
    let wanted = GRAD_TASKS.div_ceil(groups);
    if weight_size <= grad_size {
        (1, wanted.min(ranges).max(1))
    } else {
        (wanted.min(max_blocks).max(1), 1)
    }
}

/// The first `len` values of `parts` plus each later run of `len`, added in order (the
/// weight gradient's partial sums over its pixel ranges): a fixed order, so the same
/// rounding on every run. Pieces of the sum run in parallel, each adding every part into
/// its piece before the next piece (which then stays in cache).
pub(crate) fn sum_parts<T>(parts: &mut [T], len: usize) -> &[T]
where
    T: Copy + std::ops::AddAssign + Send + Sync,
{
    const PIECE: usize = 4096;
    let (first, rest) = parts.split_at_mut(len);
    let rest = &*rest;
    first
        .par_chunks_mut(PIECE)
        .enumerate()
        .for_each(|(i, piece)| {
            for part in rest.chunks_exact(len) {
                for (a, &b) in piece.iter_mut().zip(&part[i * PIECE..]) {
                    *a += b;
                }
            }
        });
    first
}

/// dw of y = conv(x, w) given dy, in torchvision's layout [c_out, c / groups, k, k].
pub(crate) fn weight_grad<T: Element>(x: &[T], dy: &[T], geo: &Geometry, isa: Isa) -> Vec<T> {
    weight_grad_with(x, dy, geo, isa, true)
}

/// `weight_grad`, with the row walks of `group_rows` where they apply if `by_rows` (see
/// `forward_with`).
pub(crate) fn weight_grad_with<T: Element>(
    x: &[T],
    dy: &[T],
    geo: &Geometry,
    isa: Isa,
    by_rows: bool,
) -> Vec<T> {
    let (lanes, nv_max, mr) = tile_shape::<T>(isa);
    let zero = vec![T::zero(); geo.c.max(geo.c_out)];
    let (xp, dyp, zp) = (
        SendPtr(x.as_ptr() as *mut T),
        SendPtr(dy.as_ptr() as *mut T),
        SendPtr(zero.as_ptr() as *mut T),
    );
    let (taps, cgi, cgo) = (geo.taps(), geo.cgi(), geo.cgo());
    let pixels = geo.out_pixels();
    let offsets = tap_offsets(geo);
    if geo.group_lanes(VectorPath::of(isa)) {
        let lg = GroupLanes::new(geo.c, cgi, lanes);
        // Split by pixels first: a task then finds each of its pixels' pointers once for
        // every channel vector (the weight, a few values per channel, is small to keep per
        // split); by channel vectors only where the pixels are too few to share.
        let vectors = lg.vectors;
        let splits = GRAD_TASKS.min(pixels.div_ceil(SPLIT_PIXELS)).max(1);
        let wanted = GRAD_TASKS.div_ceil(splits);
        let blocks: Vec<Range<usize>> = ranges(vectors, vectors.div_ceil(wanted)).collect();
        let tap_len = lg.tap_len(lanes);
        let part_len = taps * tap_len;
        let mut parts = vec![T::zero(); splits * part_len];
        let pp = SendPtr(parts.as_mut_ptr());
        let tasks: Vec<(Range<usize>, usize)> = blocks
            .iter()
            .flat_map(|b| (0..splits).map(move |s| (b.clone(), s)))
            .collect();
        let walk = by_rows && group_rows::walks_weight_grad(geo, VectorPath::of(isa));
        tasks.par_iter().for_each(|(vectors, s)| {
            let span = ranges(pixels, pixels.div_ceil(splits))
                .nth(*s)
                .unwrap_or(0..0);
            // The chunk's tap pointers (the walks find their pixels row by row instead).
            let mut table = match walk {
                true => Vec::new(),
                false => vec![zp.get() as *const T; taps * CHUNK],
            };
            for chunk in ranges(span.len(), CHUNK) {
                let chunk = span.start + chunk.start..span.start + chunk.end;
                let len = chunk.len();
                let out = pp.get().wrapping_add(s * part_len);
                if walk {
                    // SAFETY: x and dy hold the images' pixels of c values (stride 1 and
                    // padding 1 keep the output's size), and the task owns the vectors
                    // `vectors` of its split's part, which is zeroed.
                    simd_call!(
                        isa,
                        T,
                        group_rows::weight_grad_chunk(
                            xp.get(),
                            dyp.get(),
                            geo.h,
                            geo.w,
                            lg,
                            chunk.clone(),
                            vectors.clone(),
                            out
                        )
                    );
                    continue;
                }
                for (i, r) in chunk.clone().enumerate() {
                    forward_pointers(geo, &offsets, xp.get(), zp.get(), 0, r, |t, p| {
                        table[t * CHUNK + i] = p
                    });
                }
                let dy_rows = dyp.get().wrapping_add(chunk.start * geo.c_out) as *const T;
                // SAFETY: pointers are pixel rows of c values (or the zero row), the
                // gradient rows hold c values, and the task owns the vectors `vectors` of
                // its split's part, which is zeroed.
                simd_call!(
                    isa,
                    T,
                    group_lanes_wgrad_rows(
                        &table,
                        CHUNK,
                        len,
                        taps,
                        dy_rows,
                        geo.c_out,
                        lg,
                        vectors.clone(),
                        out
                    )
                );
            }
        });
        let cg = cgi;
        let total = sum_parts(&mut parts, part_len);
        let mut grad = vec![T::zero(); geo.c_out * cg * taps];
        for v in 0..lg.vectors {
            for l in 0..lg.filled(v) {
                let ch = v * lg.width + l;
                for b in 0..cg {
                    // Input b of the group sits at rotation d from ch's own place.
                    let d = (b + cg - ch % cg) % cg;
                    for t in 0..taps {
                        grad[(ch * cg + b) * taps + t] =
                            total[t * tap_len + (d * lg.vectors + v) * lanes + l];
                    }
                }
            }
        }
        return grad;
    }
    let rows_per_block = mr * 4;
    let (ci_blocks, splits) = grad_split(geo, geo.groups, cgi.div_ceil(rows_per_block), true);
    let block_rows = cgi.div_ceil(ci_blocks);
    let panels = gemm::panels(cgo, 1, lanes, nv_max);
    let part_len = geo.groups * taps * cgi * cgo;
    let mut parts = vec![T::zero(); splits * part_len];
    let pp = SendPtr(parts.as_mut_ptr());
    // A task takes several groups where their channels are not split, so that a chunk's
    // pointers serve them all: every group where the pixels are split, else enough groups
    // for a few tasks per thread (each group's sums, and so the result, are the same however
    // the groups are shared out, which may then follow the thread count).
    let together = match (ci_blocks, splits) {
        (1, 1) => geo.groups.div_ceil(2 * rayon::current_num_threads()).max(1),
        (1, _) => geo.groups,
        _ => 1,
    };
    let tasks: Vec<(Range<usize>, Range<usize>, usize)> = ranges(geo.groups, together)
        .flat_map(|g| {
            ranges(cgi, block_rows).flat_map(move |b| {
                let g = g.clone();
                (0..splits).map(move |s| (g.clone(), b.clone(), s))
            })
        })
        .collect();
    // Pack the gradient's panels where enough row tiles re-read each panel to pay for the
    // copy and, on AVX-512, where its rows are a kilobyte or more apart. On AVX2 the copy
    // pays for a dense convolution's rows whatever their length (those of 64 and 128
    // channels too), but not for a grouped one's narrow panels in rows under half a
    // kilobyte; docs/speed.md has the timings behind each.
    let panel_stride = nv_max * lanes;
    let row_bytes = geo.c_out * std::mem::size_of::<T>();
    let pack_dy = match VectorPath::of(isa) {
        VectorPath::Avx2 => taps * cgi >= 2 * mr && (geo.groups == 1 || row_bytes >= 512),
        _ => row_bytes >= 1024 && taps * cgi >= 4 * mr,
    };
    // Likewise the input rows of a dense 1x1 convolution (one tap, so one copy serves the
    // product): each run of `mr` channels of the chunk's rows, as rows `mr` values apart.
    let pack_x = taps == 1 && geo.groups == 1 && geo.c * std::mem::size_of::<T>() >= 1024;
    // A dense convolution at stride 1 with the output's size (1x1, or 3x3 padded by 1)
    // reads each chunk's pixels as two runs of memory, its input rows and its gradient
    // rows; where those come from memory (in training, as a rule) each chunk's first tiles
    // would wait for them. The tiles of each chunk ask for the next chunk's rows instead
    // (see `gemm::Lookahead`). A 3x3 window reaches an image row and a pixel beyond each
    // end of the chunk's pixels (its `halo`); where that crosses into the next image the
    // run takes that image's rows too, cut to the batch's pixels.
    let look_ahead = geo.stride == 1
        && geo.groups == 1
        && (geo.k == 1 && geo.pad == 0 || geo.k == 3 && geo.pad == 1);
    let halo = geo.pad * (geo.w + 1);
    let all_pixels = geo.n * geo.h * geo.w;
    tasks.par_iter().for_each(|(groups, block, s)| {
        // The tiles' calls per chunk, which share the next chunk's lines.
        let calls = groups.len() * panels.len() * taps * block.len().div_ceil(mr);
        let span = ranges(pixels, pixels.div_ceil(splits))
            .nth(*s)
            .unwrap_or(0..0);
        let mut table = vec![zp.get() as *const T; taps * CHUNK];
        let mut packed = vec![T::zero(); if pack_dy { CHUNK * panel_stride } else { 0 }];
        let runs = block.len().div_ceil(mr);
        let mut x_packed = vec![T::zero(); if pack_x { runs * CHUNK * mr } else { 0 }];
        let mut x_rows = vec![zp.get() as *const T; if pack_x { runs * CHUNK } else { 0 }];
        for chunk in ranges(span.len(), CHUNK) {
            let chunk = span.start + chunk.start..span.start + chunk.end;
            let len = chunk.len();
            for (i, r) in chunk.clone().enumerate() {
                forward_pointers(geo, &offsets, xp.get(), zp.get(), 0, r, |t, p| {
                    table[t * CHUNK + i] = p
                });
            }
            let ahead = if look_ahead {
                // The input rows are one run where the task reads all their channels;
                // else only the gradient rows are asked for.
                let next = chunk.end..(chunk.end + CHUNK).min(span.end);
                let x_span = next.start.saturating_sub(halo)..(next.end + halo).min(all_pixels);
                let x_run = if block.len() == geo.c {
                    x_span.len() * geo.c
                } else {
                    0
                };
                gemm::Lookahead::of([
                    (
                        xp.get().wrapping_add(x_span.start * geo.c) as *const T,
                        x_run,
                    ),
                    (
                        dyp.get().wrapping_add(next.start * geo.c_out) as *const T,
                        next.len() * geo.c_out,
                    ),
                ])
            } else {
                gemm::Lookahead::default()
            };
            let mut call = 0;
            if pack_x {
                for (run, channels) in ranges(block.len(), mr).enumerate() {
                    let from = block.start + channels.start;
                    for i in 0..len {
                        let at = (run * CHUNK + i) * mr;
                        // SAFETY: each pointer is a pixel row of c values or the zero row
                        // (as long), which hold channels `block`.
                        let src = unsafe {
                            std::slice::from_raw_parts(table[i].add(from), channels.len())
                        };
                        x_packed[at..at + channels.len()].copy_from_slice(src);
                    }
                }
                // Taken again after every copy: a pointer taken before a write through the
                // vector would not be valid after it.
                for (k, row) in x_rows.iter_mut().enumerate() {
                    *row = x_packed[k * mr..].as_ptr();
                }
            }
            // Group by group, panel by panel, every tap and row tile: a panel's columns of
            // the chunk's gradient rows stay in the first-level cache while every tile reads
            // them.
            for g in groups.clone() {
                for panel in &panels {
                    let col = g * cgo + panel.col;
                    // Gradient rows a kilobyte or more apart fall into a few cache sets and
                    // evict each other: their panel columns are copied into adjacent rows.
                    let (dy_panel, ldy, readable) = if pack_dy {
                        for (i, r) in chunk.clone().enumerate() {
                            let src = &dy[r * geo.c_out + col..][..panel.width];
                            packed[i * panel_stride..][..panel.width].copy_from_slice(src);
                        }
                        (packed.as_ptr(), panel_stride, panel_stride)
                    } else {
                        (
                            dyp.get().wrapping_add(chunk.start * geo.c_out + col) as *const T,
                            geo.c_out,
                            geo.c_out - col,
                        )
                    };
                    for t in 0..taps {
                        let out = pp
                            .get()
                            .wrapping_add(s * part_len + ((g * taps + t) * cgi) * cgo);
                        let mut ci = block.start;
                        while ci < block.end {
                            let rows = (block.end - ci).min(mr);
                            let (ptrs, skip) = if pack_x {
                                let run = (ci - block.start) / mr;
                                (&x_rows[run * CHUNK..run * CHUNK + len], 0)
                            } else {
                                (&table[t * CHUNK..t * CHUNK + len], g * cgi + ci)
                            };
                            // SAFETY: pointers are pixel rows (or the zero row) of c values,
                            // so they hold g * cgi + ci + rows, or packed runs of `mr`
                            // channels from ci; the panel's gradient rows are readable for
                            // `readable` values (to the row's end, or the packed row's whole
                            // stride); the task owns rows `block` of (g, t) for its groups
                            // in its split's zeroed part.
                            simd_call!(
                                isa,
                                T,
                                wgrad_entry(
                                    rows,
                                    panel.nv,
                                    ptrs,
                                    skip,
                                    dy_panel,
                                    ldy,
                                    panel.width,
                                    readable,
                                    out.add(ci * cgo + panel.col),
                                    cgo,
                                    ahead.share(call, calls),
                                )
                            );
                            call += 1;
                            ci += rows;
                        }
                    }
                }
            }
        }
    });
    let total = sum_parts(&mut parts, part_len);
    // [ci, o] to [o, ci] per group and tap, in squares of 32 x 32: written one whole row
    // after the other, consecutive values would lie a weight row apart (kilobytes in the
    // wide layers), each store missing the cache.
    const SQUARE: usize = 32;
    let mut grad = vec![T::zero(); geo.c_out * cgi * taps];
    for g in 0..geo.groups {
        for t in 0..taps {
            let from = &total[(g * taps + t) * cgi * cgo..][..cgi * cgo];
            for os in ranges(cgo, SQUARE) {
                for cis in ranges(cgi, SQUARE) {
                    for o in os.clone() {
                        for ci in cis.clone() {
                            grad[((g * cgo + o) * cgi + ci) * taps + t] = from[ci * cgo + o];
                        }
                    }
                }
            }
        }
    }
    grad
}

/// The three products of one f32 convolution on slices, on the selected path, for
/// benchmarks that time them apart: (y, dx, dw) from (x, w, dy).
#[doc(hidden)]
pub fn products_f32(x: &[f32], w: &[f32], dy: &[f32], geo: &Geometry, which: usize) -> Vec<f32> {
    let isa = isa::selected();
    match which {
        0 => forward(x, w, geo, isa),
        1 => input_grad(dy, w, geo, isa),
        _ => weight_grad(x, dy, geo, isa),
    }
}

/// The three products of one bf16-mixed convolution on f32 slices (see `products_f32`).
#[doc(hidden)]
pub fn products_bf16(x: &[f32], w: &[f32], dy: &[f32], geo: &Geometry, which: usize) -> Vec<f32> {
    let isa = isa::selected();
    let op = Conv2d {
        stride: geo.stride,
        pad: geo.pad,
        groups: geo.groups,
        input_grad: true,
        bf16: true,
        out_bf16: false,
    };
    match which {
        0 => op.forward_bf16(Bf16Input::F32(x), w, geo, isa),
        1 => op.input_grad_bf16::<f32>(Bf16Input::F32(dy), w, geo, isa),
        _ => op.weight_grad_bf16(Bf16Input::F32(x), Bf16Input::F32(dy), geo, isa),
    }
}

/// The convolution op: geometry besides the shapes, whether its input needs a gradient,
/// and whether its products run in bf16.
#[derive(Debug, Clone, Copy)]
struct Conv2d {
    stride: usize,
    pad: usize,
    groups: usize,
    input_grad: bool,
    bf16: bool,
    out_bf16: bool,
}

/// An input of the bf16 convolution: f32 (rounded as it is packed) or bf16 values.
#[derive(Clone, Copy)]
enum Bf16Input<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl Bf16Input<'_> {
    /// The values rounded to bf16, as f32: what the f32 kernels multiply on the paths
    /// without a bf16 unit (and on the group-lanes path).
    fn rounded(&self, isa: Isa) -> Vec<f32> {
        match self {
            Bf16Input::F32(v) => crate::bf16::round_vec(v, isa),
            Bf16Input::Bf16(v) => crate::bf16::from_bf16_vec(v, isa),
        }
    }
}

/// How a convolution's bf16 products run on a bf16 unit: `merge` consecutive groups taken
/// as one group whose weights are block-diagonal (zeros between the merged groups), so
/// that narrow groups fill the unit's columns (see `Product`). The zero products add
/// nothing to the sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OnUnit {
    unit: crate::bf16::Unit,
    merge: usize,
}

impl OnUnit {
    /// The geometry with merged groups.
    fn geometry(&self, geo: &Geometry) -> Geometry {
        Geometry {
            groups: geo.groups / self.merge,
            ..*geo
        }
    }

    /// The weights [c_out, c / groups, k, k] in the merged groups' layout
    /// [c_out, merge * c / groups, k, k], zero off the diagonal blocks.
    fn weights(&self, w: &[f32], geo: &Geometry) -> Vec<f32> {
        if self.merge == 1 {
            return w.to_vec();
        }
        let (cgi, cgo, taps) = (geo.cgi(), geo.cgo(), geo.taps());
        let wide = self.merge * cgi;
        let mut out = vec![0f32; geo.c_out * wide * taps];
        for o in 0..geo.c_out {
            // The output channel's group within its merged group.
            let j = (o % (self.merge * cgo)) / cgo;
            let from = &w[o * cgi * taps..][..cgi * taps];
            out[(o * wide + j * cgi) * taps..][..cgi * taps].copy_from_slice(from);
        }
        out
    }

    /// The weight gradient of the merged groups' layout back in the convolution's.
    fn unmerge_grad(&self, merged: Vec<f32>, geo: &Geometry) -> Vec<f32> {
        if self.merge == 1 {
            return merged;
        }
        let (cgi, cgo, taps) = (geo.cgi(), geo.cgo(), geo.taps());
        let wide = self.merge * cgi;
        let mut out = vec![0f32; geo.c_out * cgi * taps];
        for o in 0..geo.c_out {
            let j = (o % (self.merge * cgo)) / cgo;
            out[o * cgi * taps..][..cgi * taps]
                .copy_from_slice(&merged[(o * wide + j * cgi) * taps..][..cgi * taps]);
        }
        out
    }
}

/// Which of a convolution's bf16 products is to run: the forward and the input gradient
/// multiply rows of pixels, which `VDPBF16PS` reads in place, a pair and a vector of 16
/// columns at a time, so narrow groups merge only up to 16 channels there (each merged
/// group's zeros cost it products); the weight gradient packs both operands, whose cost
/// per group outweighs those zeros, so its groups merge up to a whole 32-column block, as
/// every product's do on AMX, whose tiles are that wide whatever they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    Rows,
    WeightGradient,
}

impl Conv2d {
    /// Where this convolution's bf16 products run: on the machine's bf16 unit, narrow
    /// groups merged (the most consecutive groups whose channels fit `Merge`'s columns
    /// together), or, without a unit, on the f32 kernels on rounded values. Groups of one
    /// channel (depthwise) stay on the group-lanes path: merged, almost all of the unit's
    /// products would be zeros. So does the stride-1 weight gradient of groups that would
    /// merge 4 or more to a `VDPBF16PS` block (three quarters of its products zeros, and
    /// both operands packed per group), on values rounded to bf16: the same products,
    /// summed in f32 (strided ones stay on the unit, whose packing reads their scattered
    /// rows better).
    fn unit(&self, geo: &Geometry, isa: Isa, product: Product) -> Option<OnUnit> {
        let unit = crate::bf16::Unit::of(isa)?;
        let widest = geo.cgi().max(geo.cgo());
        if geo.groups > 1 && geo.cgi().min(geo.cgo()) < 2 && geo.group_lanes(VectorPath::of(isa)) {
            return None;
        }
        let columns = match (unit, product) {
            (crate::bf16::Unit::DotBf16, Product::Rows) => 16,
            _ => crate::bf16::BLOCK,
        };
        let merge = if geo.groups > 1 && widest < columns {
            (1..=geo.groups)
                .rev()
                .find(|&m| geo.groups % m == 0 && m * widest <= columns)
                .unwrap_or(1)
        } else {
            1
        };
        if unit == crate::bf16::Unit::DotBf16
            && product == Product::WeightGradient
            && merge >= 4
            && geo.stride == 1
            && geo.group_lanes(VectorPath::of(isa))
        {
            return None;
        }
        Some(OnUnit { unit, merge })
    }

    /// The output in f32 or, where `O` is bf16, rounded to bf16 (autocast's output).
    fn forward_bf16<O: crate::bf16::Sink>(
        &self,
        x: Bf16Input,
        w: &[f32],
        geo: &Geometry,
        isa: Isa,
    ) -> Vec<O> {
        use crate::conv_bf16::forward as on_unit;
        match (self.unit(geo, isa, Product::Rows), x) {
            (Some(u), Bf16Input::F32(x)) => {
                on_unit(x, &u.weights(w, geo), &u.geometry(geo), u.unit, isa)
            }
            (Some(u), Bf16Input::Bf16(x)) => {
                on_unit(x, &u.weights(w, geo), &u.geometry(geo), u.unit, isa)
            }
            (None, x) => {
                O::from_f32_vec(forward(&x.rounded(isa), &round_vec(w, isa), geo, isa), isa)
            }
        }
    }

    /// The input gradient in f32 or, where `O` is bf16 (a bf16 input's), rounded to bf16.
    fn input_grad_bf16<O: crate::bf16::Sink>(
        &self,
        dy: Bf16Input,
        w: &[f32],
        geo: &Geometry,
        isa: Isa,
    ) -> Vec<O> {
        use crate::conv_bf16::input_grad as on_unit;
        match (self.unit(geo, isa, Product::Rows), dy) {
            (Some(u), Bf16Input::F32(dy)) => {
                on_unit(dy, &u.weights(w, geo), &u.geometry(geo), u.unit, isa)
            }
            (Some(u), Bf16Input::Bf16(dy)) => {
                on_unit(dy, &u.weights(w, geo), &u.geometry(geo), u.unit, isa)
            }
            (None, dy) => O::from_f32_vec(
                input_grad(&dy.rounded(isa), &round_vec(w, isa), geo, isa),
                isa,
            ),
        }
    }

    fn weight_grad_bf16(&self, x: Bf16Input, dy: Bf16Input, geo: &Geometry, isa: Isa) -> Vec<f32> {
        use crate::conv_bf16::weight_grad as on_unit;
        let Some(u) = self.unit(geo, isa, Product::WeightGradient) else {
            return weight_grad(&x.rounded(isa), &dy.rounded(isa), geo, isa);
        };
        let (merged, unit) = (u.geometry(geo), u.unit);
        let grad = match (x, dy) {
            (Bf16Input::F32(x), Bf16Input::F32(dy)) => on_unit(x, dy, &merged, unit, isa),
            (Bf16Input::F32(x), Bf16Input::Bf16(dy)) => on_unit(x, dy, &merged, unit, isa),
            (Bf16Input::Bf16(x), Bf16Input::F32(dy)) => on_unit(x, dy, &merged, unit, isa),
            (Bf16Input::Bf16(x), Bf16Input::Bf16(dy)) => on_unit(x, dy, &merged, unit, isa),
        };
        u.unmerge_grad(grad, geo)
    }
}

macro_rules! conv_dispatch {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("conv2d: dtype {other:?} is not supported"),
        }
    };
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad, self.groups)?;
        let isa = isa::selected();
        if self.bf16 {
            let w = contiguous(s2.as_slice::<f32>()?, l2, "conv2d")?;
            let x = match s1.dtype() {
                DType::BF16 => {
                    Bf16Input::Bf16(contiguous(s1.as_slice::<half::bf16>()?, l1, "conv2d")?)
                }
                _ => Bf16Input::F32(contiguous(s1.as_slice::<f32>()?, l1, "conv2d")?),
            };
            let y = profile::time(
                || geo.label("conv bf16 forward"),
                || {
                    if self.out_bf16 {
                        CpuStorage::BF16(self.forward_bf16(x, w, &geo, isa))
                    } else {
                        CpuStorage::F32(self.forward_bf16(x, w, &geo, isa))
                    }
                },
            );
            return Ok((y, geo.out_shape()));
        }
        let y = profile::time(
            || geo.label("conv forward"),
            || -> Result<_> {
                Ok(
                    conv_dispatch!(s1.dtype(), T => T::to_cpu_storage_owned(forward::<T>(
                        contiguous(s1.as_slice::<T>()?, l1, "conv2d")?,
                        contiguous(s2.as_slice::<T>()?, l2, "conv2d")?,
                        &geo,
                        isa,
                    ))),
                )
            },
        )?;
        Ok((y, geo.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geo = Geometry::new(x.dims(), weight.dims(), self.stride, self.pad, self.groups)?;
        let isa = isa::selected();
        let grad = grad_res.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        if self.bf16 {
            let wv = cpu_slice::<f32>(&ws, wl, "conv2d")?;
            let input = match x.dtype() {
                DType::BF16 => Bf16Input::Bf16(cpu_slice::<half::bf16>(&xs, xl, "conv2d")?),
                _ => Bf16Input::F32(cpu_slice::<f32>(&xs, xl, "conv2d")?),
            };
            // The gradient of a bf16 output is bf16; either is rounded as it is packed.
            let gv = match grad.dtype() {
                DType::BF16 => Bf16Input::Bf16(cpu_slice::<half::bf16>(&gs, gl, "conv2d")?),
                _ => Bf16Input::F32(cpu_slice::<f32>(&gs, gl, "conv2d")?),
            };
            let bf16_input = matches!(input, Bf16Input::Bf16(_));
            let dx = if self.input_grad {
                let label = || geo.label("conv bf16 input grad");
                // The gradient of a bf16 tensor is bf16 (as autocast's).
                Some(if bf16_input {
                    let dx: Vec<half::bf16> =
                        profile::time(label, || self.input_grad_bf16(gv, wv, &geo, isa));
                    Tensor::from_vec(dx, x.shape(), x.device())?
                } else {
                    let dx: Vec<f32> =
                        profile::time(label, || self.input_grad_bf16(gv, wv, &geo, isa));
                    Tensor::from_vec(dx, x.shape(), x.device())?
                })
            } else {
                None
            };
            let dw = profile::time(
                || geo.label("conv bf16 weight grad"),
                || self.weight_grad_bf16(input, gv, &geo, isa),
            );
            let dw = Tensor::from_vec(dw, weight.shape(), weight.device())?;
            return Ok((dx, Some(dw)));
        }
        conv_dispatch!(x.dtype(), T => {
            let (xv, wv, gv) = (
                cpu_slice::<T>(&xs, xl, "conv2d")?,
                cpu_slice::<T>(&ws, wl, "conv2d")?,
                cpu_slice::<T>(&gs, gl, "conv2d")?,
            );
            let dx = if self.input_grad {
                let dx = profile::time(|| geo.label("conv input grad"), || input_grad(gv, wv, &geo, isa));
                Some(Tensor::from_vec(dx, x.shape(), x.device())?)
            } else {
                None
            };
            let dw = profile::time(|| geo.label("conv weight grad"), || weight_grad(xv, gv, &geo, isa));
            let dw = Tensor::from_vec(dw, weight.shape(), weight.device())?;
            Ok((dx, Some(dw)))
        })
    }
}

/// How a convolution is applied, besides the shapes of its input and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    /// Whether the backward pass may compute the input's gradient. It does only where the
    /// input is tracked by candle's graph (a variable or computed from one), so a network's
    /// first convolution, whose input is data, skips it either way.
    pub input_grad: bool,
    /// bf16-mixed: the products take the input and the weight rounded to bf16 and
    /// accumulate in f32 (the weight stays f32, the master copy); the input may be an f32
    /// or a bf16 tensor, the output is f32 (bf16 with `out_bf16`). Off: the products run in
    /// the input's dtype.
    pub bf16: bool,
    /// With `bf16`: the output is rounded to bf16, as autocast's convolutions write theirs
    /// (the f32 sums are rounded once, as they are stored). Its gradient may then be bf16 too.
    pub out_bf16: bool,
}

impl ConvOptions {
    pub fn new(stride: usize, padding: usize, groups: usize) -> ConvOptions {
        ConvOptions {
            stride,
            padding,
            groups,
            input_grad: true,
            bf16: false,
            out_bf16: false,
        }
    }

    /// The same convolution with bf16 products (see `bf16`).
    pub fn bf16(self, on: bool) -> ConvOptions {
        ConvOptions { bf16: on, ..self }
    }

    /// The same convolution writing a bf16 output (see `out_bf16`; needs `bf16`).
    pub fn out_bf16(self, on: bool) -> ConvOptions {
        ConvOptions {
            out_bf16: on,
            ..self
        }
    }
}

/// conv2d of a channels-last input x [N, H, W, C] with weight [Cout, C / groups, k, k]
/// (square kernels, any stride, padding and groups): [N, Ho, Wo, Cout]. f32 and f64 on the
/// CPU; other devices and dtypes go to candle's conv2d through a channels-first view.
pub fn conv2d(x: &Tensor, weight: &Tensor, opts: ConvOptions) -> Result<Tensor> {
    let ConvOptions {
        stride,
        padding,
        groups,
        input_grad,
        bf16,
        out_bf16,
    } = opts;
    Geometry::new(x.dims(), weight.dims(), stride, padding, groups)?;
    if out_bf16 && !bf16 {
        candle_core::bail!("conv2d: a bf16 output (out_bf16) needs bf16 products (bf16)");
    }
    let supported = x.device().is_cpu()
        && x.elem_count() > 0
        && if bf16 {
            matches!(x.dtype(), DType::F32 | DType::BF16) && weight.dtype() == DType::F32
        } else {
            matches!(x.dtype(), DType::F32 | DType::F64) && x.dtype() == weight.dtype()
        };
    if !supported {
        let (x, weight) = if bf16 {
            // Off the CPU kernels: candle's conv2d on the rounded values (f32 sums on the
            // CPU; on other devices as candle computes bf16).
            (x.to_dtype(DType::BF16)?, weight.to_dtype(DType::BF16)?)
        } else {
            (x.clone(), weight.clone())
        };
        let y = x
            .permute((0, 3, 1, 2))?
            .conv2d(&weight, padding, stride, 1, groups)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        return match (bf16, out_bf16) {
            (true, true) => Ok(y),
            (true, false) => y.to_dtype(DType::F32),
            _ => Ok(y),
        };
    }
    let op = Conv2d {
        stride,
        pad: padding,
        groups,
        input_grad: input_grad && x.track_op(),
        bf16,
        out_bf16,
    };
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff, seeded};
    use candle_core::Var;

    /// (n, c, h, w, c_out, k, stride, padding, groups)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );

    const CASES: [Case; 27] = [
        (3, 28, 10, 10, 28, 3, 2, 1, 1),
        (3, 256, 10, 10, 28, 1, 1, 0, 1),
        (3, 256, 10, 10, 512, 1, 2, 0, 1),
        (3, 28, 5, 5, 512, 1, 1, 0, 1),
        (2, 4, 7, 5, 6, 3, 1, 1, 1),
        (2, 8, 9, 9, 8, 3, 1, 1, 4),
        (3, 8, 9, 7, 16, 3, 2, 1, 8),
        (2, 6, 6, 6, 6, 3, 1, 1, 6),
        (2, 1, 5, 7, 4, 3, 2, 1, 1),
        (2, 6, 7, 7, 10, 1, 2, 0, 1),
        (2, 6, 8, 8, 10, 1, 2, 0, 1),
        (2, 6, 7, 7, 10, 1, 1, 0, 2),
        (1, 3, 11, 11, 4, 7, 2, 3, 1),
        (1, 3, 12, 10, 5, 7, 2, 3, 1),
        (2, 40, 7, 7, 70, 3, 1, 1, 1),
        (2, 64, 6, 6, 64, 3, 2, 1, 32),
        (2, 56, 5, 5, 56, 3, 1, 1, 8),
        (2, 48, 9, 8, 48, 3, 2, 1, 4),
        (2, 96, 4, 4, 96, 3, 1, 1, 8),
        (2, 4, 1, 1, 6, 3, 1, 1, 2),
        (2, 4, 2, 2, 4, 3, 1, 1, 1),
        (1, 2, 3, 3, 2, 5, 1, 2, 1),
        // Groups whose packed weights fill the cache budget after 7 of them: two blocks.
        (1, 256, 3, 3, 256, 3, 1, 1, 8),
        // Enough pixels (over `SPLIT_PIXELS`) that the weight gradient splits them, each
        // split taking every group, over several chunks: 7 channels per group (products),
        // 2 and 3 (group lanes; 3 leaves a partial vector on AVX2).
        (4, 56, 17, 17, 56, 3, 1, 1, 8),
        (3, 64, 19, 19, 64, 3, 1, 1, 32),
        (5, 27, 12, 13, 27, 3, 1, 1, 9),
        // Group-lanes weights over `GROUP_LANES_BUDGET`: the channel vectors in several blocks, the last
        // one shorter (4 channels per group, stride 2 for the input gradient's classes).
        (2, 344, 5, 5, 344, 3, 2, 1, 86),
    ];

    fn close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        let diff = max_diff(a, b);
        let scale = max_abs(b).max(1.0);
        assert!(diff <= tol * scale, "{what}: diff {diff} (scale {scale})");
    }

    /// Candle's gradients of sum(y * up): up is the upstream gradient of y.
    fn grads_of_sum(y: &Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        (y * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// The profile's line for a product: its shape, its kind, and its multiply-adds (one
    /// per output value, tap and input channel of its group).
    #[test]
    fn profile_labels_name_the_kind_and_count_the_multiply_adds() {
        let grouped = Geometry::new(&[128, 14, 14, 56], &[56, 7, 3, 3], 1, 1, 8).unwrap();
        let label = grouped.label("conv forward");
        assert_eq!(label.name, "conv forward 128x14x14x56->56 k3 s1 g8");
        assert_eq!(label.kind, "conv forward 3x3 grouped");
        assert_eq!(label.macs, 128 * 14 * 14 * 56 * 7 * 9);
        let strided = Geometry::new(&[128, 14, 14, 128], &[256, 128, 1, 1], 2, 0, 1).unwrap();
        let label = strided.label("conv weight grad");
        assert_eq!(label.kind, "conv weight grad 1x1");
        assert_eq!(label.macs, 128 * 7 * 7 * 256 * 128);
    }

    #[test]
    fn input_grad_pointers_inside_match_the_checked_ones() {
        // Every pixel of every class, interior or border, against the per-tap checks,
        // including strides that leave a class without taps and a 5x5 kernel at stride 3.
        let extra: [Case; 2] = [(2, 3, 7, 8, 5, 5, 3, 2, 1), (1, 2, 5, 5, 2, 2, 3, 0, 1)];
        for &(n, c, h, w, c_out, k, stride, pad, groups) in CASES.iter().chain(&extra) {
            let geo = Geometry::new(
                &[n, h, w, c],
                &[c_out, c / groups, k, k],
                stride,
                pad,
                groups,
            )
            .unwrap();
            let (dy, zero) = (0x10000 as *const f32, 0x8 as *const f32);
            for class in classes(&geo) {
                let taps = class.taps.len();
                for r in 0..class.rows(&geo) {
                    for offset in [0, 3] {
                        let (mut fast, mut checked) = (vec![zero; taps], vec![zero; taps]);
                        class.pointers(&geo, dy, zero, offset, r, |t, p| fast[t] = p);
                        class.pointers_at_border(&geo, dy, zero, offset, r, |t, p| checked[t] = p);
                        assert_eq!(
                            fast, checked,
                            "{geo:?}, class ({}, {}), pixel {r}",
                            class.ry, class.rx
                        );
                    }
                }
            }
        }
    }

    /// Values and both gradients against candle's NCHW conv2d (its backward where it
    /// works), through the layout change, for every path the machine runs, f32 and f64:
    /// odd sizes, stride 2 on even and odd sides, 1x1, 3x3, 5x5 and 7x7, dense, grouped
    /// and depthwise.
    #[test]
    fn matches_candle_conv2d_on_every_path() {
        for isa in crate::isa::available() {
            for dtype in [DType::F64, DType::F32] {
                for (i, &(n, c, h, w, c_out, k, s, p, g)) in CASES.iter().enumerate() {
                    let seed = 10 * i as u64;
                    let x_nchw = seeded(&[n, c, h, w], dtype, seed);
                    let wt =
                        Var::from_tensor(&seeded(&[c_out, c / g, k, k], dtype, seed + 1)).unwrap();
                    let x = Var::from_tensor(
                        &x_nchw.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap(),
                    )
                    .unwrap();
                    let geo = Geometry::new(x.dims(), wt.dims(), s, p, g).unwrap();
                    let what = format!("{isa} {dtype:?} case {i} {:?}", CASES[i]);
                    let reference = x_nchw.conv2d(wt.as_tensor(), p, s, 1, g).unwrap();
                    let ref_nhwc = reference
                        .permute((0, 2, 3, 1))
                        .unwrap()
                        .contiguous()
                        .unwrap();
                    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
                    // The kernels on this path, called directly.
                    let up = seeded(ref_nhwc.dims(), dtype, seed + 2);
                    macro_rules! check {
                        ($t:ty) => {{
                            let xs: Vec<$t> = x.flatten_all().unwrap().to_vec1().unwrap();
                            let ws: Vec<$t> = wt.flatten_all().unwrap().to_vec1().unwrap();
                            let ups: Vec<$t> = up.flatten_all().unwrap().to_vec1().unwrap();
                            let y = Tensor::from_vec(
                                forward::<$t>(&xs, &ws, &geo, isa),
                                ref_nhwc.dims(),
                                &candle_core::Device::Cpu,
                            )
                            .unwrap();
                            close(&y, &ref_nhwc, tol, &format!("{what} output"));
                            let dx = Tensor::from_vec(
                                input_grad::<$t>(&ups, &ws, &geo, isa),
                                x.dims(),
                                &candle_core::Device::Cpu,
                            )
                            .unwrap();
                            let dw = Tensor::from_vec(
                                weight_grad::<$t>(&xs, &ups, &geo, isa),
                                wt.dims(),
                                &candle_core::Device::Cpu,
                            )
                            .unwrap();
                            (dx, dw)
                        }};
                    }
                    let (dx, dw) = if dtype == DType::F64 {
                        check!(f64)
                    } else {
                        check!(f32)
                    };
                    // Gradients by adjoint identities (exact for any stride and size):
                    // <dx, v> = <up, conv(v, w)> and <dw, u> = <up, conv(x, u)>.
                    let dot = |a: &Tensor, b: &Tensor| -> f64 {
                        (a * b)
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .to_scalar()
                            .unwrap()
                    };
                    let v = seeded(&[n, c, h, w], dtype, seed + 3);
                    let lhs = dot(&dx, &v.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap());
                    let rhs = dot(
                        &up,
                        &v.conv2d(wt.as_tensor(), p, s, 1, g)
                            .unwrap()
                            .permute((0, 2, 3, 1))
                            .unwrap()
                            .contiguous()
                            .unwrap(),
                    );
                    assert!(
                        (lhs - rhs).abs() <= tol * 10.0 * rhs.abs().max(1.0),
                        "{what} input gradient: {lhs} vs {rhs}"
                    );
                    let u = seeded(wt.dims(), dtype, seed + 4);
                    let lhs = dot(&dw, &u);
                    let rhs = dot(
                        &up,
                        &x_nchw
                            .conv2d(&u, p, s, 1, g)
                            .unwrap()
                            .permute((0, 2, 3, 1))
                            .unwrap()
                            .contiguous()
                            .unwrap(),
                    );
                    assert!(
                        (lhs - rhs).abs() <= tol * 10.0 * rhs.abs().max(1.0),
                        "{what} weight gradient: {lhs} vs {rhs}"
                    );
                    // Elementwise against candle's own backward where it is right (its
                    // input gradient at stride 2 on even sides comes out one column short).
                    if s == 1 || (h % 2 == 1 && w % 2 == 1) {
                        let xv = Var::from_tensor(&x_nchw).unwrap();
                        let y = xv.as_tensor().conv2d(wt.as_tensor(), p, s, 1, g).unwrap();
                        let up_nchw = up.permute((0, 3, 1, 2)).unwrap();
                        let grads = grads_of_sum(&y, &up_nchw);
                        let dx_ref = grads
                            .get(xv.as_tensor())
                            .unwrap()
                            .permute((0, 2, 3, 1))
                            .unwrap()
                            .contiguous()
                            .unwrap();
                        close(&dx, &dx_ref, tol, &format!("{what} input gradient"));
                        close(
                            &dw,
                            grads.get(wt.as_tensor()).unwrap(),
                            tol,
                            &format!("{what} weight gradient"),
                        );
                    }
                }
            }
        }
    }

    /// Grouped products whose groups are narrower than a cache line, or whose tiles' rows
    /// lie apart (a strided input gradient), write through a buffer, streamed where the
    /// output outgrows a core's cache; their values still match candle's on every path.
    #[test]
    fn staged_and_streamed_products_match_candle() {
        // A case, then how its forward and its input gradient store (in f32).
        use Stores::{Direct, Staged, Streamed};
        let cases: [(Case, Stores, Stores); 5] = [
            // Groups of 12; the input gradient's classes' rows lie apart, and it is large.
            ((3, 96, 47, 47, 96, 3, 2, 1, 8), Staged, Streamed),
            // Stride 1: every tile's rows follow one another, copied as one run.
            ((3, 96, 48, 48, 96, 3, 1, 1, 8), Streamed, Streamed),
            // Groups of 20 (a line and more): written directly, but for the classes' gaps.
            ((2, 40, 9, 9, 40, 3, 1, 1, 2), Direct, Direct),
            ((2, 80, 9, 9, 80, 3, 2, 1, 2), Direct, Staged),
            // 40 groups of 12, more than one task's cache budget of weights: blocks of
            // groups that start past the row's first column.
            ((1, 480, 5, 5, 480, 3, 1, 1, 40), Staged, Staged),
        ];
        for (i, &((n, c, h, w, c_out, k, s, p, g), fwd_stores, grad_stores)) in
            cases.iter().enumerate()
        {
            let seed = 500 + 10 * i as u64;
            let x_nchw = seeded(&[n, c, h, w], DType::F32, seed);
            let wt = seeded(&[c_out, c / g, k, k], DType::F32, seed + 1);
            let x = x_nchw.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let geo = Geometry::new(x.dims(), wt.dims(), s, p, g).unwrap();
            let out_len = geo.out_pixels() * c_out;
            let in_len = geo.in_pixels() * c;
            assert_eq!(
                Stores::of::<f32>(g, geo.cgo(), out_len, false),
                fwd_stores,
                "case {i} forward"
            );
            assert_eq!(
                Stores::of::<f32>(g, geo.cgi(), in_len, s > 1),
                grad_stores,
                "case {i} input gradient"
            );
            // Candle's values: its output, and its input gradient (right at stride 1 or
            // on odd sides, as here) of the output times `up`.
            let xv = Var::from_tensor(&x_nchw).unwrap();
            let y = xv.as_tensor().conv2d(&wt, p, s, 1, g).unwrap();
            let up_nchw = seeded(y.dims(), DType::F32, seed + 2);
            let grads = grads_of_sum(&y, &up_nchw);
            let nhwc = |t: &Tensor| t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let (y_ref, dx_ref) = (nhwc(&y), nhwc(grads.get(xv.as_tensor()).unwrap()));
            let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            let (xs, ws, ups) = (values(&x), values(&wt), values(&nhwc(&up_nchw)));
            for isa in crate::isa::available() {
                let what = format!("{isa} case {i}");
                let cpu = &candle_core::Device::Cpu;
                let y = Tensor::from_vec(forward(&xs, &ws, &geo, isa), y_ref.dims(), cpu).unwrap();
                close(&y, &y_ref, 1e-4, &format!("{what} output"));
                let dx = Tensor::from_vec(input_grad(&ups, &ws, &geo, isa), x.dims(), cpu).unwrap();
                close(&dx, &dx_ref, 1e-4, &format!("{what} input gradient"));
            }
        }
    }

    /// `copy_columns` as an entry of `simd_call!`.
    unsafe fn copy_entry<S: Simd, const MR: usize>(
        from: *const S::E,
        to: *mut S::E,
        len: usize,
        stream: bool,
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            copy_columns::<S>(from, to, len, stream);
            S::fence();
        }
    }

    /// A copy of any length, to any alignment, streamed or not, writes exactly its values.
    #[test]
    fn column_copies_write_exactly_their_values() {
        let from: Vec<f32> = (0..80).map(|i| i as f32 + 0.5).collect();
        for isa in crate::isa::available() {
            for stream in [false, true] {
                for start in 0..17 {
                    for len in 0..=from.len() - 17 {
                        let mut to = vec![-1.0f32; from.len() + 17];
                        let (src, dst) = (from.as_ptr(), to.as_mut_ptr().wrapping_add(start));
                        // `from` holds `len` values, `to` has room for them from `start`
                        // (what `copy_entry` asks, under `simd_call!`'s unsafe).
                        simd_call!(isa, f32, copy_entry(src, dst, len, stream));
                        for (j, &v) in to.iter().enumerate() {
                            let want = if (start..start + len).contains(&j) {
                                from[j - start]
                            } else {
                                -1.0
                            };
                            assert_eq!(v, want, "{isa} stream {stream} start {start} len {len}");
                        }
                    }
                }
            }
        }
    }

    /// The op through candle's autograd: values and gradients of the public function.
    #[test]
    fn the_op_differentiates_through_candle() {
        let (n, c, h, w, c_out) = (2, 8, 6, 5, 12);
        let x = Var::from_tensor(&seeded(&[n, h, w, c], DType::F64, 1)).unwrap();
        let wt = Var::from_tensor(&seeded(&[c_out, c / 2, 3, 3], DType::F64, 2)).unwrap();
        let y = conv2d(x.as_tensor(), wt.as_tensor(), ConvOptions::new(2, 1, 2)).unwrap();
        assert_eq!(y.dims(), &[n, 3, 3, c_out]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), x.dims());
        assert_eq!(grads.get(wt.as_tensor()).unwrap().dims(), wt.dims());
        let no_input = ConvOptions {
            input_grad: false,
            ..ConvOptions::new(1, 1, 1)
        };
        let wt1 = Var::from_tensor(&seeded(&[4, c, 3, 3], DType::F64, 3)).unwrap();
        let y = conv2d(x.as_tensor(), wt1.as_tensor(), no_input).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_none());
        assert!(grads.get(wt1.as_tensor()).is_some());
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let x = Tensor::zeros((1, 5, 5, 6), DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 4, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = conv2d(&x, &w, ConvOptions::new(1, 1, 1)).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    /// bf16-mixed products on every path the machine has (AMX, AVX512-BF16, and the f32
    /// kernels on rounded values) against f64 products of the same bf16-rounded values: equal
    /// to f32 accumulation error, for the forward, the input gradient and the weight
    /// gradient, with f32 and bf16 input tensors.
    #[test]
    fn bf16_products_match_f64_products_of_the_rounded_values() {
        use crate::bf16::round_f32;
        let cases: [Case; 18] = [
            // Weights wider than `WIDE_B` packed: a task's blocks times each panel in turn.
            (2, 512, 5, 5, 512, 3, 1, 1, 1),
            // 1x1, stride 1, depths of whole K steps: bf16 rows read in place.
            (2, 64, 6, 6, 96, 1, 1, 0, 1),
            (2, 64, 6, 6, 64, 1, 1, 0, 2),
            (2, 32, 7, 7, 40, 3, 1, 1, 1),
            (2, 64, 5, 5, 64, 3, 1, 1, 2),
            (3, 24, 9, 8, 33, 3, 2, 1, 1),
            // Narrow groups, merged on a unit: 16 groups of 2 channels, 2 of 12, 4 of 7, 2
            // of 6 widening to 12 (1x1); 20 channels (one group a block, padded); one
            // channel (depthwise, the group-lanes path).
            (2, 64, 6, 6, 64, 3, 1, 1, 32),
            (2, 48, 5, 5, 48, 3, 1, 1, 4),
            (2, 56, 7, 7, 56, 3, 1, 1, 8),
            (3, 56, 9, 9, 56, 3, 2, 1, 8),
            (2, 24, 5, 5, 48, 1, 1, 0, 4),
            (2, 40, 9, 9, 40, 3, 2, 1, 2),
            (2, 16, 6, 6, 16, 3, 1, 1, 16),
            // 16 channels a group, merged in pairs.
            (2, 64, 5, 5, 64, 3, 1, 1, 4),
            (2, 70, 5, 6, 20, 1, 1, 0, 1),
            (2, 16, 8, 8, 64, 1, 2, 0, 1),
            (1, 3, 11, 11, 8, 7, 2, 3, 1),
            (2, 1, 9, 9, 32, 3, 2, 1, 1),
        ];
        let reference = crate::isa::Isa::Portable;
        for isa in crate::isa::available() {
            for (i, &(n, c, h, w, c_out, k, s, p, g)) in cases.iter().enumerate() {
                let geo = Geometry::new(&[n, h, w, c], &[c_out, c / g, k, k], s, p, g).unwrap();
                let op = Conv2d {
                    stride: s,
                    pad: p,
                    groups: g,
                    input_grad: true,
                    bf16: true,
                    out_bf16: false,
                };
                let draw = |len: usize, seed: u64| -> Vec<f32> {
                    seeded(&[len], DType::F32, seed).to_vec1().unwrap()
                };
                let x = draw(n * h * w * c, 10 * i as u64);
                let wt = draw(c_out * (c / g) * k * k, 10 * i as u64 + 1);
                let dy = draw(geo.out_pixels() * c_out, 10 * i as u64 + 2);
                let f64s =
                    |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| round_f32(x) as f64).collect() };
                let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.abs()).collect() };
                let (x64, w64, dy64) = (f64s(&x), f64s(&wt), f64s(&dy));
                // Bounds of the sums' magnitudes, per output: the f32 error scales with them.
                let checks = [
                    (
                        "output",
                        op.forward_bf16::<f32>(Bf16Input::F32(&x), &wt, &geo, isa),
                        forward(&x64, &w64, &geo, reference),
                        forward(&abs(&x64), &abs(&w64), &geo, reference),
                    ),
                    (
                        "input gradient",
                        op.input_grad_bf16::<f32>(Bf16Input::F32(&dy), &wt, &geo, isa),
                        input_grad(&dy64, &w64, &geo, reference),
                        input_grad(&abs(&dy64), &abs(&w64), &geo, reference),
                    ),
                    (
                        "weight gradient",
                        op.weight_grad_bf16(Bf16Input::F32(&x), Bf16Input::F32(&dy), &geo, isa),
                        weight_grad(&x64, &dy64, &geo, reference),
                        weight_grad(&abs(&x64), &abs(&dy64), &geo, reference),
                    ),
                ];
                for (what, got, expect, bound) in checks {
                    for (j, ((&g, &e), &b)) in got.iter().zip(&expect).zip(&bound).enumerate() {
                        assert!(
                            (g as f64 - e).abs() <= 1e-5 * b.max(1e-3),
                            "{isa} case {i} {what} [{j}]: {g} vs {e} (bound {b})"
                        );
                    }
                }
                // A bf16 input tensor gives the same products as its f32 values.
                let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let y = op.forward_bf16::<f32>(Bf16Input::F32(&x), &wt, &geo, isa);
                assert_eq!(
                    op.forward_bf16::<f32>(Bf16Input::Bf16(&xb), &wt, &geo, isa),
                    y,
                    "{isa} case {i}: bf16 input"
                );
                // A bf16 output is the f32 output rounded to nearest even, bit for bit.
                let yb: Vec<half::bf16> = op.forward_bf16(Bf16Input::Bf16(&xb), &wt, &geo, isa);
                let rounded: Vec<half::bf16> = y.iter().map(|&v| half::bf16::from_f32(v)).collect();
                assert!(
                    yb.iter()
                        .zip(&rounded)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} case {i}: bf16 output"
                );
                let dw = op.weight_grad_bf16(Bf16Input::F32(&x), Bf16Input::F32(&dy), &geo, isa);
                assert_eq!(
                    op.weight_grad_bf16(Bf16Input::Bf16(&xb), Bf16Input::F32(&dy), &geo, isa),
                    dw,
                    "{isa} case {i}: bf16 input, weight gradient"
                );
                // A bf16 gradient gives the products of its f32 values, which are rounded to
                // bf16 as they are packed anyway: the same bits as the f32 gradient's.
                let dyb: Vec<half::bf16> = dy.iter().map(|&v| half::bf16::from_f32(v)).collect();
                assert_eq!(
                    op.weight_grad_bf16(Bf16Input::Bf16(&xb), Bf16Input::Bf16(&dyb), &geo, isa),
                    dw,
                    "{isa} case {i}: bf16 gradient, weight gradient"
                );
                let dx: Vec<f32> = op.input_grad_bf16(Bf16Input::F32(&dy), &wt, &geo, isa);
                assert_eq!(
                    op.input_grad_bf16::<f32>(Bf16Input::Bf16(&dyb), &wt, &geo, isa),
                    dx,
                    "{isa} case {i}: bf16 gradient, input gradient"
                );
                let dxb: Vec<half::bf16> =
                    op.input_grad_bf16(Bf16Input::Bf16(&dyb), &wt, &geo, isa);
                assert!(
                    dxb.iter()
                        .zip(&dx)
                        .all(|(a, &b)| a.to_bits() == half::bf16::from_f32(b).to_bits()),
                    "{isa} case {i}: bf16 input gradient"
                );
            }
        }
    }

    /// Through candle: a bf16 input tensor gets a bf16 gradient, the f32 weight an f32 one.
    #[test]
    fn the_bf16_op_keeps_each_tensors_dtype() {
        let x = Var::from_tensor(
            &seeded(&[2, 6, 5, 16], DType::F32, 1)
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let wt = Var::from_tensor(&seeded(&[8, 16, 3, 3], DType::F32, 2)).unwrap();
        let y = conv2d(
            x.as_tensor(),
            wt.as_tensor(),
            ConvOptions::new(1, 1, 1).bf16(true),
        )
        .unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().dtype(), DType::BF16);
        assert_eq!(grads.get(wt.as_tensor()).unwrap().dtype(), DType::F32);
        // With a bf16 output, the output and its gradient are bf16 too, and the weight's
        // gradient is the one the f32 output gets: the upstream gradient, 1 everywhere, is
        // exact in bf16.
        let options = ConvOptions::new(1, 1, 1).bf16(true).out_bf16(true);
        let yb = conv2d(x.as_tensor(), wt.as_tensor(), options).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        assert_eq!(
            yb.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            y.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let grads_b = yb.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads_b.get(x.as_tensor()).unwrap().dtype(), DType::BF16);
        let dw = |g: &candle_core::backprop::GradStore| {
            g.get(wt.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(dw(&grads_b), dw(&grads));
        let refused = conv2d(
            x.as_tensor(),
            wt.as_tensor(),
            ConvOptions::new(1, 1, 1).out_bf16(true),
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("needs bf16 products"));
    }
}
