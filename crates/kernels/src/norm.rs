//! Batch norm of channels-last activations as fused custom ops with backward passes.
//!
//! The input is seen as rows of C channels (N * H * W rows). A training-mode BN is one pass
//! for the channel statistics and one for the output, its backward one pass for the two
//! channel sums and one for the input gradient, with the following ReLU folded in: the
//! backward recomputes the pre-ReLU value from x and the saved scale and shift (the same
//! expression as the forward, so the same mask) instead of reading the output. An output
//! pass whose output reaches `simd::STREAM_BYTES` streams its stores (see `map_flat_streamed`).
//!
//! Statistics sum fixed chunks of rows, each in lanes of the input's precision for a few
//! rows and then in f64; chunk sums are added in chunk order. The chunks depend on the
//! shape only, so the result is the same on every run and thread count. candle-nn's
//! `BatchNorm` (channels-first) stays the reference in the tests.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use std::ops::Range;

use crate::cpu::{contiguous, cpu_slice, float_dispatch, storage, SendPtr};
use crate::gemm::load_upto;
use crate::isa::{self, Isa};
use crate::simd::{simd_call, stream_parts, tile_shape, Element, Simd, STREAM_BYTES};

/// Per-channel statistics of one training batch: saved by the forward for the backward and
/// for the running-statistics update.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Vec<f64>,
    /// Biased (divided by the count), as used to normalize.
    pub var: Vec<f64>,
    /// Values per channel (N * H * W): the unbiased variance is var * count / (count - 1).
    pub count: usize,
    invstd: Vec<f64>,
}

type SavedStats = Arc<Mutex<Option<BatchStats>>>;

/// How a batch norm writes its output, chosen by what reads it next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormOutput {
    /// Rounded to bf16 (x f32): what a bf16-mixed convolution reads.
    pub bf16: bool,
    /// Stored through the cache however large. Otherwise an output of `STREAM_BYTES` or
    /// more is streamed to memory, since its reader (a 1x1 product, the next block) reads
    /// it in order, as the prefetchers foresee. A grouped 3x3 product reads each pixel's
    /// channels in a group's few at a time, tap by tap, in an order they do not: it runs
    /// faster finding its input in the cache.
    pub cached: bool,
}

/// The statistics a training forward saved (for its backward, or for the caller).
fn saved_stats(saved: &SavedStats, op: &str) -> Result<BatchStats> {
    saved
        .lock()
        .expect("stats lock")
        .clone()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: no statistics from a forward")))
}

/// What a training op's backward starts from: the statistics its forward saved and the
/// upstream gradient in rows.
fn backward_start(saved: &SavedStats, op: &str, grad_res: &Tensor) -> Result<(BatchStats, Tensor)> {
    Ok((saved_stats(saved, op)?, grad_res.contiguous()?))
}

/// Rows per task of the channel sums (a fixed split: see the module's notes).
const SUM_ROWS: usize = 64;
/// Rows a vector adds in the input's own precision before its sums join the task's f64
/// totals: short enough that f32 rounding stays at a few ulps.
const LANE_ROWS: usize = 16;
/// Values per task of the element-wise passes.
const PASS_VALUES: usize = 1 << 15;

/// Rows of `c` channels of a [N, H, W, C] (or [N, C]) tensor: (rows, channels).
fn rows_of(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    let dims = layout.dims();
    if dims.len() < 2 {
        candle_core::bail!("{op}: expected [N, ..., C], got {dims:?}");
    }
    let c = dims[dims.len() - 1];
    Ok((layout.shape().elem_count() / c.max(1), c))
}

/// The per-channel vectors of one BN pass (scale, shift and the like), broadcast to
/// whole vectors: `c` values padded with zeros to a multiple of the lanes.
struct Channels<T> {
    values: Vec<T>,
}

impl<T: Element> Channels<T> {
    fn new(values: &[T], lanes: usize) -> Channels<T> {
        let mut padded = values.to_vec();
        padded.resize(values.len().div_ceil(lanes) * lanes, T::zero());
        Channels { values: padded }
    }

    fn ptr(&self) -> *const T {
        self.values.as_ptr()
    }

    /// The first `c` values laid out cyclically for `lanes` lanes: value j is that of
    /// channel j % c, for c + lanes values (see `map_flat_streamed`).
    fn cyclic(&self, c: usize, lanes: usize) -> Vec<T> {
        (0..c + lanes).map(|j| self.values[j % c]).collect()
    }
}

/// Loads channel vector `v` of a row (`tail` lanes for the last one when c is not a
/// multiple of the lanes).
///
/// # Safety
/// `row` holds c values; the CPU runs `S`.
#[inline(always)]
unsafe fn load_row<S: Simd>(row: *const S::E, v: usize, c: usize) -> S::V {
    let at = v * S::LANES;
    // SAFETY: the vector lies in the row, or only its first c - at lanes are read.
    unsafe {
        if at + S::LANES <= c {
            S::load(row.add(at))
        } else {
            S::load_partial(row.add(at), c - at)
        }
    }
}

/// Stores channel vector `v` of a row (see `load_row`).
///
/// # Safety
/// `row` is valid for c writes; the CPU runs `S`.
#[inline(always)]
unsafe fn store_row<S: Simd>(row: *mut S::E, v: usize, c: usize, value: S::V) {
    let at = v * S::LANES;
    // SAFETY: as `load_row`.
    unsafe {
        if at + S::LANES <= c {
            S::store(row.add(at), value)
        } else {
            S::store_partial(row.add(at), value, c - at)
        }
    }
}

/// Rows that a pass reads: the input x or the upstream gradient dy, in the dtype the pass
/// computes in, or bf16 (a bf16-mixed convolution's output, or the gradient of a bf16
/// output), widened inside the passes.
#[derive(Clone, Copy)]
enum Rows<'a, T> {
    Values(&'a [T]),
    Bf16(&'a [half::bf16]),
}

impl<T: Element> Rows<'_, T> {
    /// Values held.
    fn len(&self) -> usize {
        match self {
            Rows::Values(v) => v.len(),
            Rows::Bf16(v) => v.len(),
        }
    }

    /// The first `c` values, widened.
    fn first(&self, c: usize) -> Vec<T> {
        match self {
            Rows::Values(v) => v[..c].to_vec(),
            Rows::Bf16(v) => v[..c].iter().map(|b| T::from_f64(b.to_f64())).collect(),
        }
    }

    /// Values f..f + n (n <= LANES) as one vector, widened, the rest zero.
    ///
    /// # Safety
    /// The values lie in the rows; the CPU runs `S`.
    #[inline(always)]
    unsafe fn load_flat<S: Simd<E = T>>(&self, f: usize, n: usize) -> S::V {
        // SAFETY: the caller's promise.
        unsafe {
            match self {
                Rows::Values(v) => load_upto::<S>(v.as_ptr().add(f), n),
                Rows::Bf16(v) => S::load_bf16((v.as_ptr() as *const u16).add(f), n),
            }
        }
    }

    /// Channel vector `v` of row `row`.
    ///
    /// # Safety
    /// The row lies in the gradient; the CPU runs `S`.
    #[inline(always)]
    unsafe fn load<S: Simd<E = T>>(&self, row: usize, v: usize, c: usize) -> S::V {
        // SAFETY: the caller's promise.
        unsafe {
            match self {
                Rows::Values(dy) => load_row::<S>(dy.as_ptr().add(row * c), v, c),
                Rows::Bf16(dy) => {
                    let at = v * S::LANES;
                    let p = (dy.as_ptr() as *const u16).add(row * c + at);
                    S::load_bf16(p, (c - at).min(S::LANES))
                }
            }
        }
    }
}

/// What one pass of sums adds per channel, from the values of x (and dy) at a position.
#[derive(Debug, Clone, Copy)]
enum Sums {
    /// x - k and (x - k)^2, k the first row (the statistics).
    Shifted,
    /// g and g * (x - mean), g = dy through the ReLU (the training backward).
    Centred { relu: bool },
    /// g * x and g (the evaluation backward).
    Plain { relu: bool },
}

/// Two per-channel sums over rows `rows` of x (and dy), added into `a` and `b` in f64.
/// `p`, `q` and `m` are per-channel vectors: the shift (Shifted), or scale, shift and mean.
///
/// # Safety
/// x and dy hold `rows.end * c` values (dy may be empty for Shifted); the per-channel
/// vectors are padded to whole vectors; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_rows<S: Simd, const MR: usize>(
    kind: Sums,
    x: Rows<S::E>,
    dy: Rows<S::E>,
    c: usize,
    rows: Range<usize>,
    (p, q, m): (*const S::E, *const S::E, *const S::E),
    a: &mut [f64],
    b: &mut [f64],
) {
    let vectors = c.div_ceil(S::LANES);
    let mut block_a = vec![S::E::from_f64(0.0); vectors * S::LANES];
    let mut block_b = vec![S::E::from_f64(0.0); vectors * S::LANES];
    let mut start = rows.start;
    // SAFETY: every row read lies below rows.end; per-channel vectors are whole.
    unsafe {
        while start < rows.end {
            let end = (start + LANE_ROWS).min(rows.end);
            let blocks = (block_a.as_mut_ptr(), block_b.as_mut_ptr());
            // Vectors a few at a time: their sums are independent chains, so the adds of
            // one hide the latency of another's (each lane still sums its rows in order).
            let mut v = 0;
            while v + SUM_VECTORS <= vectors {
                sum_vectors::<S, SUM_VECTORS>(kind, x, dy, c, start..end, v, (p, q, m), blocks);
                v += SUM_VECTORS;
            }
            while v < vectors {
                sum_vectors::<S, 1>(kind, x, dy, c, start..end, v, (p, q, m), blocks);
                v += 1;
            }
            for ch in 0..c {
                a[ch] += block_a[ch].to_f64();
                b[ch] += block_b[ch].to_f64();
            }
            start = end;
        }
    }
}

/// Vectors a sum pass takes together (see `sum_rows`).
const SUM_VECTORS: usize = 4;

/// `sum_rows`'s two sums of channel vectors `v0..v0 + N` over rows `rows`, stored into the
/// blocks at those vectors.
///
/// # Safety
/// As `sum_rows`, with `v0 + N` vectors within the rows and the blocks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_vectors<S: Simd, const N: usize>(
    kind: Sums,
    x: Rows<S::E>,
    dy: Rows<S::E>,
    c: usize,
    rows: Range<usize>,
    v0: usize,
    (p, q, m): (*const S::E, *const S::E, *const S::E),
    (block_a, block_b): (*mut S::E, *mut S::E),
) {
    // SAFETY: the caller's promises.
    unsafe {
        let at = |j: usize| (v0 + j) * S::LANES;
        let pv: [S::V; N] = std::array::from_fn(|j| S::load(p.add(at(j))));
        let qv: [S::V; N] = std::array::from_fn(|j| S::load(q.add(at(j))));
        let mv: [S::V; N] = std::array::from_fn(|j| S::load(m.add(at(j))));
        let (mut sa, mut sb) = ([S::zero(); N], [S::zero(); N]);
        match kind {
            Sums::Shifted => {
                for r in rows {
                    for j in 0..N {
                        let d = S::sub(x.load::<S>(r, v0 + j, c), pv[j]);
                        sa[j] = S::add(sa[j], d);
                        sb[j] = S::fma(d, d, sb[j]);
                    }
                }
            }
            Sums::Centred { relu } => {
                for r in rows {
                    for j in 0..N {
                        let xv = x.load::<S>(r, v0 + j, c);
                        let mut g = dy.load::<S>(r, v0 + j, c);
                        if relu {
                            g = S::where_positive(S::fma(xv, pv[j], qv[j]), g);
                        }
                        sa[j] = S::add(sa[j], g);
                        sb[j] = S::fma(g, S::sub(xv, mv[j]), sb[j]);
                    }
                }
            }
            Sums::Plain { relu } => {
                for r in rows {
                    for j in 0..N {
                        let xv = x.load::<S>(r, v0 + j, c);
                        let mut g = dy.load::<S>(r, v0 + j, c);
                        if relu {
                            g = S::where_positive(S::fma(xv, pv[j], qv[j]), g);
                        }
                        sa[j] = S::fma(g, xv, sa[j]);
                        sb[j] = S::add(sb[j], g);
                    }
                }
            }
        }
        for j in 0..N {
            S::store(block_a.add(at(j)), sa[j]);
            S::store(block_b.add(at(j)), sb[j]);
        }
    }
}

/// Two per-channel sums over all rows, in the fixed task order.
fn channel_sums<T: Element>(
    kind: Sums,
    x: Rows<T>,
    dy: Rows<T>,
    c: usize,
    isa: Isa,
    vectors: (&Channels<T>, &Channels<T>, &Channels<T>),
) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let (p, q, m) = (
        SendPtr(vectors.0.ptr() as *mut T),
        SendPtr(vectors.1.ptr() as *mut T),
        SendPtr(vectors.2.ptr() as *mut T),
    );
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..rows.div_ceil(SUM_ROWS))
        .into_par_iter()
        .map(|task| {
            let (mut a, mut b) = (vec![0f64; c], vec![0f64; c]);
            let span = task * SUM_ROWS..((task + 1) * SUM_ROWS).min(rows);
            let ptrs = (
                p.get() as *const T,
                q.get() as *const T,
                m.get() as *const T,
            );
            // SAFETY: the rows lie in x (and dy); the per-channel vectors are padded.
            simd_call!(isa, T, sum_rows(kind, x, dy, c, span, ptrs, &mut a, &mut b));
            (a, b)
        })
        .collect();
    let (mut a, mut b) = (vec![0f64; c], vec![0f64; c]);
    for (pa, pb) in &partials {
        for ch in 0..c {
            a[ch] += pa[ch];
            b[ch] += pb[ch];
        }
    }
    (a, b)
}

/// Where an output pass writes: values of the input's dtype, or bf16 bits.
#[derive(Clone, Copy)]
enum Out<T> {
    Values(*mut T),
    Bf16(*mut u16),
}

/// What an output pass computes per value, from x (and dy) with per-channel vectors p, q, r.
#[derive(Debug, Clone, Copy)]
enum Map {
    /// x * p + q, then the ReLU (BN's output).
    Affine { relu: bool },
    /// max(x * p + q + s, 0) with s the rows passed as dy: BN's output added to a residual
    /// block's shortcut, then its ReLU. x * p + q is rounded to the dtype before the add,
    /// as when BN writes it and add+ReLU reads it.
    AffineAddRelu,
    /// g * r + x * m + s with g = dy through the ReLU of x * p + q (the training input
    /// gradient); see `train_backward`.
    TrainGrad { relu: bool },
    /// g * r with g = dy through the ReLU of x * p + q (the evaluation input gradient).
    EvalGrad { relu: bool },
}

/// One output pass over rows `rows`, written from `out` (the rows' first value).
///
/// # Safety
/// x and dy hold the rows (dy may be empty for Affine); `out` is valid for the rows'
/// writes; per-channel vectors are padded; the CPU runs `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn map_rows_simd<S: Simd, const MR: usize>(
    kind: Map,
    x: Rows<S::E>,
    dy: Rows<S::E>,
    c: usize,
    rows: Range<usize>,
    vectors: [*const S::E; 5],
    out: Out<S::E>,
) {
    let vn = c.div_ceil(S::LANES);
    // SAFETY: rows lie in x and dy and their outputs in `out`; vectors are whole.
    unsafe {
        for (i, row) in rows.enumerate() {
            for v in 0..vn {
                let at = v * S::LANES;
                let xv = x.load::<S>(row, v, c);
                let dyv = if kind.reads_dy() {
                    dy.load::<S>(row, v, c)
                } else {
                    S::zero()
                };
                let value = map_value::<S>(kind, xv, dyv, vectors, at);
                match out {
                    Out::Values(o) => store_row::<S>(o.add(i * c), v, c, value),
                    Out::Bf16(o) => S::store_bf16(o.add(i * c + at), value, (c - at).min(S::LANES)),
                }
            }
        }
    }
}

/// What an output pass computes for one vector of x and dy (zero where the pass reads no
/// dy), with the per-channel vectors [p, q, r, m, s] of its lanes' channels read from
/// `vectors` at `at`.
///
/// # Safety
/// Each of `vectors` holds a whole vector at `at`; the CPU runs `S`.
#[inline(always)]
unsafe fn map_value<S: Simd>(
    kind: Map,
    xv: S::V,
    dyv: S::V,
    vectors: [*const S::E; 5],
    at: usize,
) -> S::V {
    // SAFETY: the caller's promise.
    unsafe {
        let (p, q) = (S::load(vectors[0].add(at)), S::load(vectors[1].add(at)));
        let (r, m, s) = (
            S::load(vectors[2].add(at)),
            S::load(vectors[3].add(at)),
            S::load(vectors[4].add(at)),
        );
        let pre = S::fma(xv, p, q);
        match kind {
            Map::Affine { relu } => {
                if relu {
                    S::relu(pre)
                } else {
                    pre
                }
            }
            Map::AffineAddRelu => S::relu(S::add(pre, dyv)),
            Map::TrainGrad { relu } | Map::EvalGrad { relu } => {
                let g = if relu {
                    S::where_positive(pre, dyv)
                } else {
                    dyv
                };
                if let Map::TrainGrad { .. } = kind {
                    S::fma(g, r, S::fma(xv, m, s))
                } else {
                    S::mul(g, r)
                }
            }
        }
    }
}

impl Map {
    /// Whether the pass reads dy (the shortcut's rows, or the upstream gradient).
    fn reads_dy(self) -> bool {
        !matches!(self, Map::Affine { .. })
    }
}

/// The vector at value f of [`map_flat_streamed`] (its first `n` lanes), its channels
/// from `ch` on: stored as usual, or streamed (`n` is then LANES and the vector's place in
/// `out` aligned to its bytes).
///
/// # Safety
/// As [`map_flat_streamed`], for the values f..f + n.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn flat_vector<S: Simd>(
    kind: Map,
    (x, dy): (Rows<S::E>, Rows<S::E>),
    f: usize,
    n: usize,
    ch: usize,
    cyclic: [*const S::E; 5],
    out: Out<S::E>,
    stream: bool,
) {
    // SAFETY: the caller's promise.
    unsafe {
        let xv = x.load_flat::<S>(f, n);
        let dyv = if kind.reads_dy() {
            dy.load_flat::<S>(f, n)
        } else {
            S::zero()
        };
        let value = map_value::<S>(kind, xv, dyv, cyclic, ch);
        match out {
            Out::Values(o) if stream => S::stream(o.add(f), value),
            Out::Values(o) if n == S::LANES => S::store(o.add(f), value),
            Out::Values(o) => S::store_partial(o.add(f), value, n),
            Out::Bf16(o) if stream => S::stream_bf16(o.add(f), value),
            Out::Bf16(o) => S::store_bf16(o.add(f), value, n),
        }
    }
}

impl<T> Out<T> {
    /// An output starting at `p`: bf16 bits where `bf16`, else values of T.
    fn at(p: *mut T, bf16: bool) -> Out<T> {
        if bf16 {
            Out::Bf16(p as *mut u16)
        } else {
            Out::Values(p)
        }
    }

    /// Bytes of one value, and the address of value f.
    fn value_at(self, f: usize) -> (usize, usize) {
        match self {
            Out::Values(o) => (std::mem::size_of::<T>(), o.wrapping_add(f) as usize),
            Out::Bf16(o) => (2, o.wrapping_add(f) as usize),
        }
    }
}

/// An output pass over the values `span` of the rows, as [`map_rows_simd`] computes them,
/// taken as one flat run of values so that every whole vector of `out` on an address
/// aligned to its bytes is streamed, whatever the row length and wherever the rows start:
/// the vector at value f covers channels f % c onwards, read from per-channel vectors laid
/// out cyclically (value j of each holds channel j % c, for c + LANES values). The values
/// before the first aligned vector and after the last whole one are stored as usual.
///
/// # Safety
/// x (and dy, where the pass reads it) and `out` (for writes; its first value that of the
/// rows' first) hold the values `span`; each of `cyclic` holds c + LANES values; the CPU
/// runs `S`.
#[inline(always)]
unsafe fn map_flat_streamed<S: Simd, const MR: usize>(
    kind: Map,
    (x, dy): (Rows<S::E>, Rows<S::E>),
    c: usize,
    span: Range<usize>,
    cyclic: [*const S::E; 5],
    out: Out<S::E>,
) {
    let (value_bytes, start) = out.value_at(span.start);
    let [head, body, tail] = stream_parts(span, start, value_bytes, S::LANES);
    // SAFETY: every vector is cut to the values left in `span`; the per-channel loads
    // start below c and read LANES values of c + LANES.
    unsafe {
        // The ends, stored as usual (either may be empty).
        for part in [head, tail] {
            let (f, n) = (part.start, part.len());
            if n > 0 {
                flat_vector::<S>(kind, (x, dy), f, n, f % c, cyclic, out, false);
            }
        }
        let mut ch = body.start % c;
        for f in body.step_by(S::LANES) {
            flat_vector::<S>(kind, (x, dy), f, S::LANES, ch, cyclic, out, true);
            ch += S::LANES;
            while ch >= c {
                ch -= c;
            }
        }
        S::fence();
    }
}

/// An output pass over all rows, in parallel tasks of whole rows, into values of type `O`:
/// the input's dtype, or bf16. A large output is streamed (see `map_flat_streamed`).
fn map_rows<T: Element, O: Copy + Send + Sync + 'static>(
    kind: Map,
    x: Rows<T>,
    dy: Rows<T>,
    c: usize,
    isa: Isa,
    vectors: [&Channels<T>; 5],
) -> Vec<O> {
    map_rows_with(kind, x, dy, c, isa, vectors, true)
}

/// `map_rows`, its stores streamed only where `may_stream` (the tests hold the streamed
/// pass to the plain one, bit for bit).
fn map_rows_with<T: Element, O: Copy + Send + Sync + 'static>(
    kind: Map,
    x: Rows<T>,
    dy: Rows<T>,
    c: usize,
    isa: Isa,
    vectors: [&Channels<T>; 5],
    may_stream: bool,
) -> Vec<O> {
    let bf16 = std::any::TypeId::of::<O>() == std::any::TypeId::of::<half::bf16>();
    assert!(
        bf16 || std::any::TypeId::of::<O>() == std::any::TypeId::of::<T>(),
        "map_rows: outputs are T or bf16"
    );
    let len = x.len();
    let (lanes, _, _) = tile_shape::<T>(isa);
    // Whether the pass streams (see `map_flat_streamed`).
    let out_bytes = len * std::mem::size_of::<O>();
    let streamed = may_stream
        && lanes > 1
        && c > 0
        && out_bytes >= STREAM_BYTES
        && (!kind.reads_dy() || dy.len() == len);
    let cyclic: Vec<Vec<T>> = if streamed {
        vectors.iter().map(|v| v.cyclic(c, lanes)).collect()
    } else {
        Vec::new()
    };
    let cyclic_ptrs: Vec<SendPtr<T>> = cyclic
        .iter()
        .map(|v| SendPtr(v.as_ptr() as *mut T))
        .collect();
    let rows_per_task = (PASS_VALUES / c.max(1)).max(1);
    let ptrs = vectors.map(|v| SendPtr(v.ptr() as *mut T));
    let chunk = rows_per_task * c;
    let mut out: Vec<O> = Vec::with_capacity(len);
    let base = SendPtr(out.as_mut_ptr());
    (0..len.div_ceil(chunk.max(1)))
        .into_par_iter()
        .for_each(|task| {
            let first = task * rows_per_task;
            let rows = first..(first + rows_per_task).min(len / c);
            if streamed {
                let span = rows.start * c..rows.end * c;
                let cyclic: [*const T; 5] =
                    std::array::from_fn(|i| cyclic_ptrs[i].get() as *const T);
                let out = Out::<T>::at(base.get() as *mut T, bf16);
                // SAFETY: the task's values lie in x (and dy), and in `out`'s capacity; each
                // cyclic vector holds c + lanes values.
                simd_call!(
                    isa,
                    T,
                    map_flat_streamed(kind, (x, dy), c, span, cyclic, out)
                );
                return;
            }
            let vectors = ptrs.map(|p| p.get() as *const T);
            let out = Out::<T>::at(base.get().wrapping_add(first * c) as *mut T, bf16);
            // SAFETY: the task's rows lie in x (and dy), and their outputs in `out`'s capacity.
            simd_call!(isa, T, map_rows_simd(kind, x, dy, c, rows, vectors, out));
        });
    // SAFETY: the tasks wrote every value: whole rows, all of them (O is T or bf16, whose
    // values are plain bits).
    unsafe { out.set_len(len) };
    out
}

/// Training-mode BN of x [..., C] with weight and bias [C], ReLU optional, its output in
/// x's dtype or rounded to bf16 (for a bf16 convolution's input).
#[derive(Debug, Clone)]
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    out: NormOutput,
    saved: SavedStats,
}

/// The per-channel multiply-add that normalizes: y = x * scale + shift.
fn scale_shift<T: WithDType>(
    weight: &[T],
    bias: &[T],
    mean: &[f64],
    invstd: &[f64],
) -> (Vec<T>, Vec<T>) {
    let scale: Vec<f64> = weight
        .iter()
        .zip(invstd)
        .map(|(w, s)| w.to_f64() * s)
        .collect();
    let shift = bias
        .iter()
        .zip(mean.iter().zip(&scale))
        .map(|(b, (m, s))| T::from_f64(b.to_f64() - m * s))
        .collect();
    (scale.into_iter().map(T::from_f64).collect(), shift)
}

/// Training-mode BN's forward: the statistics, then the output pass `map` (Affine, or
/// AffineAddRelu with the shortcut's rows as `added`).
#[allow(clippy::too_many_arguments)]
fn train_forward<T: Element, O: Copy + Send + Sync + 'static>(
    x: Rows<T>,
    weight: &[T],
    bias: &[T],
    c: usize,
    eps: f64,
    (map, added): (Map, Rows<T>),
    isa: Isa,
    may_stream: bool,
) -> (Vec<O>, BatchStats) {
    let (lanes, _, _) = tile_shape::<T>(isa);
    let count = x.len() / c;
    // Sums shifted by the first row's values, so that the sum of squares does not cancel
    // catastrophically when the mean is large against the spread.
    let first_row = x.first(c);
    let first = Channels::new(&first_row, lanes);
    let none = Rows::Values(&[]);
    let (s, ss) = channel_sums(Sums::Shifted, x, none, c, isa, (&first, &first, &first));
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    for ch in 0..c {
        let centred = s[ch] / count as f64;
        mean.push(first_row[ch].to_f64() + centred);
        // Clamp rounding below zero, but keep a NaN (from an infinite input) a NaN.
        let v = ss[ch] / count as f64 - centred * centred;
        var.push(if v < 0.0 { 0.0 } else { v });
    }
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (scale, shift) = scale_shift(weight, bias, &mean, &invstd);
    let (scale, shift) = (Channels::new(&scale, lanes), Channels::new(&shift, lanes));
    let out = map_rows_with(
        map,
        x,
        added,
        c,
        isa,
        [&scale, &shift, &scale, &scale, &scale],
        may_stream,
    );
    let stats = BatchStats {
        mean,
        var,
        count,
        invstd,
    };
    (out, stats)
}

/// Training-mode BN's forward from an op's storages: x (f32 or f64, or bf16 computed in
/// f32), the parameters `params` as [weight; bias] once concatenated, the output pass with
/// the rows it adds (the shortcut's, for AffineAddRelu), the output in x's compute dtype or
/// in bf16, as `out` says.
fn train_forward_storage(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    params: &[(&CpuStorage, &Layout)],
    (map, added): (Map, Option<(&CpuStorage, &Layout)>),
    eps: f64,
    out: NormOutput,
) -> Result<(CpuStorage, BatchStats)> {
    fn values<T: WithDType>(parts: &[(&CpuStorage, &Layout)], op: &str) -> Result<Vec<T>> {
        let mut all = Vec::new();
        for (s, l) in parts {
            all.extend_from_slice(contiguous(s.as_slice::<T>()?, l, op)?);
        }
        Ok(all)
    }
    fn rows<'a, T: WithDType>(
        added: Option<(&'a CpuStorage, &Layout)>,
        op: &str,
    ) -> Result<Rows<'a, T>> {
        Ok(match added {
            Some((s, l)) => Rows::Values(contiguous(s.as_slice::<T>()?, l, op)?),
            None => Rows::Values(&[]),
        })
    }
    let (_, c) = rows_of(l1, op)?;
    let isa = isa::selected();
    let stream = !out.cached;
    Ok(if s1.dtype() == DType::BF16 || out.bf16 {
        let x = bf16_or_f32_rows(s1, l1, op)?;
        let wb = values::<f32>(params, op)?;
        let (w, b) = wb.split_at(c);
        let pass = (map, rows::<f32>(added, op)?);
        if out.bf16 {
            let (y, stats) = train_forward::<f32, half::bf16>(x, w, b, c, eps, pass, isa, stream);
            (CpuStorage::BF16(y), stats)
        } else {
            let (y, stats) = train_forward::<f32, f32>(x, w, b, c, eps, pass, isa, stream);
            (CpuStorage::F32(y), stats)
        }
    } else {
        float_dispatch!(s1.dtype(), op, T => {
            let wb = values::<T>(params, op)?;
            let (w, b) = wb.split_at(c);
            let x = Rows::Values(contiguous(s1.as_slice::<T>()?, l1, op)?);
            let pass = (map, rows::<T>(added, op)?);
            let (y, stats) = train_forward::<T, T>(x, w, b, c, eps, pass, isa, stream);
            (storage(y), stats)
        })
    })
}

/// Input, weight and bias gradients of training-mode BN.
#[allow(clippy::too_many_arguments)]
fn train_backward<T: Element, O: Copy + Send + Sync + 'static>(
    x: Rows<T>,
    dy: Rows<T>,
    weight: &[T],
    bias: &[T],
    c: usize,
    relu: bool,
    stats: &BatchStats,
    isa: Isa,
) -> (Vec<O>, Vec<T>, Vec<T>) {
    let (lanes, _, _) = tile_shape::<T>(isa);
    let m = stats.count as f64;
    let (scale, shift) = scale_shift(weight, bias, &stats.mean, &stats.invstd);
    let mean: Vec<T> = stats.mean.iter().map(|&v| T::from_f64(v)).collect();
    let (scale, shift, mean) = (
        Channels::new(&scale, lanes),
        Channels::new(&shift, lanes),
        Channels::new(&mean, lanes),
    );
    let (sum_g, sum_g_xmu) = channel_sums(
        Sums::Centred { relu },
        x,
        dy,
        c,
        isa,
        (&scale, &shift, &mean),
    );
    // dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)), folded per channel into
    // dx = g * p + x * q + r so that the pass over the rows is two multiply-adds.
    let mut p = Vec::with_capacity(c);
    let mut q = Vec::with_capacity(c);
    let mut r = Vec::with_capacity(c);
    for ch in 0..c {
        let invstd = stats.invstd[ch];
        let k = weight[ch].to_f64() * invstd;
        let a = sum_g[ch] / m;
        let b = sum_g_xmu[ch] * invstd * invstd / m;
        p.push(T::from_f64(k));
        q.push(T::from_f64(-k * b));
        r.push(T::from_f64(k * (b * stats.mean[ch] - a)));
    }
    let (p, q, r) = (
        Channels::new(&p, lanes),
        Channels::new(&q, lanes),
        Channels::new(&r, lanes),
    );
    let dx = map_rows(
        Map::TrainGrad { relu },
        x,
        dy,
        c,
        isa,
        [&scale, &shift, &p, &q, &r],
    );
    let dweight = (0..c)
        .map(|ch| T::from_f64(sum_g_xmu[ch] * stats.invstd[ch]))
        .collect();
    let dbias = sum_g.iter().map(|&s| T::from_f64(s)).collect();
    (dx, dweight, dbias)
}

/// y = x * scale[c] + shift[c], ReLU optional: evaluation-mode BN once the running
/// statistics are folded into scale and shift.
#[derive(Debug, Clone, Copy)]
struct ChannelAffine {
    relu: bool,
    out: NormOutput,
}

fn affine_forward<T: Element, O: Copy + Send + Sync + 'static>(
    x: Rows<T>,
    scale: &[T],
    shift: &[T],
    c: usize,
    relu: bool,
    isa: Isa,
    may_stream: bool,
) -> Vec<O> {
    let (lanes, _, _) = tile_shape::<T>(isa);
    let (scale, shift) = (Channels::new(scale, lanes), Channels::new(shift, lanes));
    map_rows_with(
        Map::Affine { relu },
        x,
        Rows::Values(&[]),
        c,
        isa,
        [&scale, &shift, &scale, &scale, &scale],
        may_stream,
    )
}

fn affine_backward<T: Element, O: Copy + Send + Sync + 'static>(
    x: Rows<T>,
    dy: Rows<T>,
    scale: &[T],
    shift: &[T],
    c: usize,
    relu: bool,
    isa: Isa,
) -> (Vec<O>, Vec<T>, Vec<T>) {
    let (lanes, _, _) = tile_shape::<T>(isa);
    let (scale, shift) = (Channels::new(scale, lanes), Channels::new(shift, lanes));
    let (dscale, dshift) = channel_sums(
        Sums::Plain { relu },
        x,
        dy,
        c,
        isa,
        (&scale, &shift, &scale),
    );
    let dx = map_rows(
        Map::EvalGrad { relu },
        x,
        dy,
        c,
        isa,
        [&scale, &shift, &scale, &scale, &scale],
    );
    (
        dx,
        dscale.into_iter().map(T::from_f64).collect(),
        dshift.into_iter().map(T::from_f64).collect(),
    )
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("batch norm (train) forward");
        let (out, stats) = train_forward_storage(
            self.name(),
            (s1, l1),
            &[(s2, l2), (s3, l3)],
            (Map::Affine { relu: self.relu }, None),
            self.eps,
            self.out,
        )?;
        *self.saved.lock().expect("stats lock") = Some(stats);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = crate::profile::Span::new("batch norm (train) backward");
        let (stats, grad) = backward_start(&self.saved, self.name(), grad_res)?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (bs, bl) = bias.storage_and_layout();
        let (_, c) = rows_of(xl, self.name())?;
        let isa = isa::selected();
        if x.dtype() == DType::BF16 {
            // The gradient of a bf16 input is bf16 (as autocast's), computed in f32.
            let (dx, dw, db) = train_backward::<f32, half::bf16>(
                Rows::Bf16(cpu_slice(&xs, xl, self.name())?),
                rows_of_grad(&gs, gl, self.name())?,
                cpu_slice(&ws, wl, self.name())?,
                cpu_slice(&bs, bl, self.name())?,
                c,
                self.relu,
                &stats,
                isa,
            );
            return input_and_parameter_grads(x, dx, dw, db);
        }
        float_dispatch!(x.dtype(), self.name(), T => {
            let (dx, dw, db) = train_backward::<T, T>(
                Rows::Values(cpu_slice(&xs, xl, self.name())?),
                rows_of_grad(&gs, gl, self.name())?,
                cpu_slice(&ws, wl, self.name())?,
                cpu_slice(&bs, bl, self.name())?,
                c,
                self.relu,
                &stats,
                isa,
            );
            input_and_parameter_grads(x, dx, dw, db)
        })
    }
}

/// The end of a residual block in training: max(bn(x) + shortcut, 0), BN in training
/// mode. One op, so that BN's output is neither written nor kept for the backward: the
/// sum is formed in BN's output pass. Its arguments are x, [weight; bias] stacked to
/// [2, C] (a custom op takes three tensors), and the shortcut.
#[derive(Debug, Clone)]
struct BatchNormAddRelu {
    eps: f64,
    saved: SavedStats,
}

impl BatchNormAddRelu {
    fn check_shortcut(&self, l1: &Layout, l3: &Layout) -> Result<()> {
        if l1.shape() != l3.shape() {
            candle_core::bail!(
                "{}: input {:?} and shortcut {:?} differ in shape",
                self.name(),
                l1.dims(),
                l3.dims()
            );
        }
        Ok(())
    }
}

impl CustomOp3 for BatchNormAddRelu {
    fn name(&self) -> &'static str {
        "batch-norm-add-relu-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("batch norm + add + relu (train) forward");
        self.check_shortcut(l1, l3)?;
        // With a bf16-mixed convolution's output as x the pass computes in f32, and the sum
        // with the f32 shortcut is f32.
        let (out, stats) = train_forward_storage(
            self.name(),
            (s1, l1),
            &[(s2, l2)],
            (Map::AffineAddRelu, Some((s3, l3))),
            self.eps,
            NormOutput::default(),
        )?;
        *self.saved.lock().expect("stats lock") = Some(stats);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        shortcut: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = crate::profile::Span::new("batch norm + add + relu (train) backward");
        let (stats, grad) = backward_start(&self.saved, self.name(), grad_res)?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (ws, wl) = wb.storage_and_layout();
        let isa = isa::selected();
        let name = self.name();
        if x.dtype() == DType::BF16 {
            // A bf16-mixed convolution's output: the gradient of a bf16 input is bf16 (as
            // autocast's), computed in f32; the shortcut's is f32.
            let x_rows = Rows::Bf16(cpu_slice(&xs, xl, name)?);
            return add_relu_backward::<f32, half::bf16>(
                x_rows,
                (cpu_slice(&ys, yl, name)?, cpu_slice(&gs, gl, name)?),
                cpu_slice(&ws, wl, name)?,
                (x, shortcut),
                &stats,
                isa,
            );
        }
        float_dispatch!(x.dtype(), name, T => add_relu_backward::<T, T>(
            Rows::Values(cpu_slice(&xs, xl, name)?),
            (cpu_slice(&ys, yl, name)?, cpu_slice(&gs, gl, name)?),
            cpu_slice(&ws, wl, name)?,
            (x, shortcut),
            &stats,
            isa,
        ))
    }
}

/// The gradients of max(bn(x) + shortcut, 0): x's (in dtype O), [weight; bias]'s and the
/// shortcut's. The ReLU's gradient is taken from its output y as add+ReLU's is; it is the
/// shortcut's gradient and BN's upstream one.
fn add_relu_backward<T: Element + WithDType, O: WithDType>(
    x_rows: Rows<T>,
    (y, dy): (&[T], &[T]),
    wb: &[T],
    (x, shortcut): (&Tensor, &Tensor),
    stats: &BatchStats,
    isa: Isa,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let c = wb.len() / 2;
    let device = x.device();
    let g = crate::add_relu::relu_grad::<T>(y, dy);
    let (w, b) = wb.split_at(c);
    let (dx, dw, db) = train_backward::<T, O>(x_rows, Rows::Values(&g), w, b, c, false, stats, isa);
    let dwb: Vec<T> = dw.into_iter().chain(db).collect();
    Ok((
        Some(Tensor::from_vec(dx, x.shape(), device)?),
        Some(Tensor::from_vec(dwb, (2, c), device)?),
        Some(Tensor::from_vec(g, shortcut.shape(), device)?),
    ))
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("batch norm (eval) forward");
        let (_, c) = rows_of(l1, self.name())?;
        let isa = isa::selected();
        let (relu, stream) = (self.relu, !self.out.cached);
        let out = if s1.dtype() == DType::BF16 || self.out.bf16 {
            let x = bf16_or_f32_rows(s1, l1, self.name())?;
            let scale = contiguous(s2.as_slice::<f32>()?, l2, self.name())?;
            let shift = contiguous(s3.as_slice::<f32>()?, l3, self.name())?;
            if self.out.bf16 {
                CpuStorage::BF16(affine_forward::<f32, half::bf16>(
                    x, scale, shift, c, relu, isa, stream,
                ))
            } else {
                CpuStorage::F32(affine_forward::<f32, f32>(
                    x, scale, shift, c, relu, isa, stream,
                ))
            }
        } else {
            float_dispatch!(s1.dtype(), self.name(), T => {
                let x = Rows::Values(contiguous(s1.as_slice::<T>()?, l1, self.name())?);
                let scale = contiguous(s2.as_slice::<T>()?, l2, self.name())?;
                let shift = contiguous(s3.as_slice::<T>()?, l3, self.name())?;
                storage(affine_forward::<T, T>(x, scale, shift, c, relu, isa, stream))
            })
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = crate::profile::Span::new("batch norm (eval) backward");
        let grad = grad_res.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ss, sl) = scale.storage_and_layout();
        let (ts, tl) = shift.storage_and_layout();
        let (_, c) = rows_of(xl, self.name())?;
        let isa = isa::selected();
        if x.dtype() == DType::BF16 {
            let (dx, dscale, dshift) = affine_backward::<f32, half::bf16>(
                Rows::Bf16(cpu_slice(&xs, xl, self.name())?),
                rows_of_grad(&gs, gl, self.name())?,
                cpu_slice(&ss, sl, self.name())?,
                cpu_slice(&ts, tl, self.name())?,
                c,
                self.relu,
                isa,
            );
            return input_and_parameter_grads(x, dx, dscale, dshift);
        }
        float_dispatch!(x.dtype(), self.name(), T => {
            let (dx, dscale, dshift) = affine_backward::<T, T>(
                Rows::Values(cpu_slice(&xs, xl, self.name())?),
                rows_of_grad(&gs, gl, self.name())?,
                cpu_slice(&ss, sl, self.name())?,
                cpu_slice(&ts, tl, self.name())?,
                c,
                self.relu,
                isa,
            );
            input_and_parameter_grads(x, dx, dscale, dshift)
        })
    }
}

/// Training-mode batch norm of a channels-last x [..., C] (ReLU optional); returns the
/// output and the batch statistics (for the running averages).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    batch_norm_train_to(x, weight, bias, eps, relu, NormOutput::default())
}

/// [`batch_norm_train`], its output written as `out` says for what reads it next: rounded
/// to bf16 for a bf16-mixed convolution (x f32; the backward then takes a bf16 or f32
/// gradient), kept in the cache for a grouped one. The values are the same either way.
pub fn batch_norm_train_to(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
    out: NormOutput,
) -> Result<(Tensor, BatchStats)> {
    let (rows, _) = check_channels(x, &[weight, bias], "batch-norm")?;
    check_bf16_output(x, weight, out.bf16)?;
    if rows < 2 {
        // PyTorch refuses this too: one value per channel has no variance to normalize by.
        candle_core::bail!(
            "batch-norm: training needs more than one value per channel, got input {:?}",
            x.dims()
        );
    }
    let saved = SavedStats::default();
    let op = BatchNormTrain {
        eps,
        relu,
        out,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(weight, bias, op)?;
    let stats = saved_stats(&saved, "batch-norm")?;
    Ok((y, stats))
}

/// The end of a residual block in training, max(bn(x) + shortcut, 0), in one op: BN's
/// output is not materialized (nor kept alive for the backward), and the values are those
/// of [`batch_norm_train`] (no ReLU) followed by [`crate::add_relu_op`]. x is f32, f64 or a
/// bf16-mixed convolution's bf16 output; the shortcut and the output are in the
/// parameters' dtype. Returns the output and the batch statistics.
pub fn batch_norm_add_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    shortcut: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    const OP: &str = "batch-norm-add-relu";
    let (rows, _) = check_channels(x, &[weight, bias], OP)?;
    check_bf16_output(x, weight, false)?;
    if shortcut.dims() != x.dims() || shortcut.dtype() != weight.dtype() {
        candle_core::bail!(
            "{OP}: the shortcut must have the input's shape and the parameters' dtype, got \
             {:?} {:?} for input {:?} and parameters {:?}",
            shortcut.dims(),
            shortcut.dtype(),
            x.dims(),
            weight.dtype()
        );
    }
    if rows < 2 {
        candle_core::bail!(
            "{OP}: training needs more than one value per channel, got input {:?}",
            x.dims()
        );
    }
    let saved = SavedStats::default();
    let op = BatchNormAddRelu {
        eps,
        saved: saved.clone(),
    };
    let wb = Tensor::stack(&[weight, bias], 0)?;
    let y = x
        .contiguous()?
        .apply_op3(&wb, &shortcut.contiguous()?, op)?;
    let stats = saved_stats(&saved, OP)?;
    Ok((y, stats))
}

/// Evaluation-mode batch norm of a channels-last x [..., C] (ReLU optional):
/// differentiable in x, weight, bias and the running statistics, since scale and shift are
/// computed from them by tensor ops.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    batch_norm_eval_to(
        x,
        weight,
        bias,
        (running_mean, running_var),
        eps,
        relu,
        NormOutput::default(),
    )
}

/// [`batch_norm_eval`], its output written as `out` says (see [`batch_norm_train_to`]).
pub fn batch_norm_eval_to(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (running_mean, running_var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
    out: NormOutput,
) -> Result<Tensor> {
    check_channels(x, &[weight, bias, running_mean, running_var], "batch-norm")?;
    check_bf16_output(x, weight, out.bf16)?;
    let scale = (weight / (running_var + eps)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    x.contiguous()?
        .apply_op3(&scale, &shift, ChannelAffine { relu, out })
}

/// A backward's gradients as tensors: the input's in x's shape, two per-channel ones.
fn input_and_parameter_grads<X: WithDType, P: WithDType>(
    x: &Tensor,
    dx: Vec<X>,
    da: Vec<P>,
    db: Vec<P>,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (device, c) = (x.device(), da.len());
    Ok((
        Some(Tensor::from_vec(dx, x.shape(), device)?),
        Some(Tensor::from_vec(da, c, device)?),
        Some(Tensor::from_vec(db, c, device)?),
    ))
}

/// A bf16 input or output goes with f32 parameters (the bf16-mixed setting); f64 stays f64.
fn check_bf16_output(x: &Tensor, weight: &Tensor, out_bf16: bool) -> Result<()> {
    if (out_bf16 || x.dtype() == DType::BF16)
        && !(matches!(x.dtype(), DType::F32 | DType::BF16) && weight.dtype() == DType::F32)
    {
        candle_core::bail!(
            "batch-norm: a bf16 input or output needs f32 parameters and an f32 or bf16 \
             input, got input {:?} and parameters {:?}",
            x.dtype(),
            weight.dtype()
        );
    }
    Ok(())
}

/// The rows of a bf16 or f32 input, for the passes that compute in f32.
fn bf16_or_f32_rows<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<Rows<'a, f32>> {
    Ok(match s.dtype() {
        DType::BF16 => Rows::Bf16(contiguous(s.as_slice::<half::bf16>()?, l, op)?),
        _ => Rows::Values(contiguous(s.as_slice::<f32>()?, l, op)?),
    })
}

/// The upstream gradient's rows: bf16 (the gradient of a bf16 output) or the pass's dtype.
fn rows_of_grad<'a, T: Element + WithDType>(
    s: &'a candle_core::Storage,
    l: &Layout,
    op: &str,
) -> Result<Rows<'a, T>> {
    Ok(match s.dtype() {
        DType::BF16 => Rows::Bf16(cpu_slice(s, l, op)?),
        _ => Rows::Values(cpu_slice(s, l, op)?),
    })
}

/// (rows, C) of a channels-last x [..., C], after checking that every per-channel tensor
/// has C entries and that nothing is empty.
fn check_channels(x: &Tensor, per_channel: &[&Tensor], op: &str) -> Result<(usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 || x.elem_count() == 0 {
        candle_core::bail!(
            "{op}: expected a non-empty channels-last [N, ..., C] input, got {dims:?}"
        );
    }
    let c = dims[dims.len() - 1];
    for t in per_channel {
        if t.dims() != [c] {
            candle_core::bail!(
                "{op}: {c} channels in the input {dims:?} but a parameter of shape {:?}",
                t.dims()
            );
        }
    }
    Ok((x.elem_count() / c, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff, seeded};
    use candle_core::backprop::GradStore;
    use candle_core::{DType, Device, ModuleT, Var};

    /// Gradients of sum(out * up): a fixed random upstream gradient weights every output
    /// differently.
    fn grads(out: &Tensor, up: &Tensor) -> GradStore {
        (out * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// Seeded normal values plus `offset`.
    fn rand(shape: &[usize], dtype: DType, offset: f64, seed: u64) -> Tensor {
        (seeded(shape, dtype, seed) + offset).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        let scale = max_abs(b).max(1.0);
        let diff = max_diff(a, b);
        assert!(diff <= tol * scale, "{what}: diff {diff} (scale {scale})");
    }

    fn nhwc(t: &Tensor) -> Tensor {
        t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }

    /// Values, running statistics and gradients (x, weight, bias) of both modes against
    /// candle-nn's channels-first BatchNorm followed by candle's relu, through the layout
    /// change: odd shapes, a single channel, one image, more rows than one chunk of the
    /// sums, and a large mean that would break a naive sum of squares.
    #[test]
    fn matches_candle_nn_batch_norm_in_both_modes() {
        let shapes: [(&[usize], f64); 6] = [
            (&[4, 3, 5, 7], 0.0),
            (&[2, 1, 9, 9], 0.5),
            (&[1, 6, 3, 3], -1.0),
            (&[3, 5, 1, 1], 0.0),
            (&[2, 4, 6, 6], 1000.0),
            (&[3, 37, 11, 13], 0.0),
        ];
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-9 } else { 2e-4 };
            for (case, &(shape, offset)) in shapes.iter().enumerate() {
                let seed = 100 * case as u64;
                for relu in [false, true] {
                    for train in [true, false] {
                        let c = shape[1];
                        let what =
                            format!("{dtype:?} {shape:?} +{offset} relu={relu} train={train}");
                        let x_nchw = rand(shape, dtype, offset, seed);
                        let x = Var::from_tensor(&nhwc(&x_nchw)).unwrap();
                        let weight = Var::from_tensor(&rand(&[c], dtype, 1.0, seed + 1)).unwrap();
                        let bias = Var::from_tensor(&rand(&[c], dtype, 0.0, seed + 2)).unwrap();
                        let rm = rand(&[c], dtype, offset, seed + 3);
                        let rv = (rand(&[c], dtype, 0.0, seed + 4).abs().unwrap() + 0.5).unwrap();
                        let reference = candle_nn::BatchNorm::new(
                            c,
                            rm.copy().unwrap(),
                            rv.copy().unwrap(),
                            weight.as_tensor().clone(),
                            bias.as_tensor().clone(),
                            1e-5,
                        )
                        .unwrap();
                        let xr = Var::from_tensor(&x_nchw).unwrap();
                        let expected = reference.forward_t(xr.as_tensor(), train).unwrap();
                        let expected = if relu {
                            expected.relu().unwrap()
                        } else {
                            expected
                        };
                        let ours = if train {
                            let (y, stats) = batch_norm_train(
                                x.as_tensor(),
                                weight.as_tensor(),
                                bias.as_tensor(),
                                1e-5,
                                relu,
                            )
                            .unwrap();
                            let mean = Tensor::new(stats.mean.as_slice(), &Device::Cpu).unwrap();
                            let updated = ((&rm.to_dtype(DType::F64).unwrap() * 0.9).unwrap()
                                + (mean * 0.1).unwrap())
                            .unwrap();
                            assert_close(
                                &updated,
                                &reference.running_mean().to_dtype(DType::F64).unwrap(),
                                tol,
                                &format!("{what} running mean"),
                            );
                            y
                        } else {
                            batch_norm_eval(
                                x.as_tensor(),
                                weight.as_tensor(),
                                bias.as_tensor(),
                                &rm,
                                &rv,
                                1e-5,
                                relu,
                            )
                            .unwrap()
                        };
                        assert_close(&ours, &nhwc(&expected), tol, &format!("{what} output"));
                        let up = rand(expected.dims(), dtype, 0.0, seed + 5);
                        let g_ours = grads(&ours, &nhwc(&up));
                        let g_ref = grads(&expected, &up);
                        assert_close(
                            g_ours.get(x.as_tensor()).unwrap(),
                            &nhwc(g_ref.get(xr.as_tensor()).unwrap()),
                            tol * 10.0,
                            &format!("{what} gradient of x"),
                        );
                        for (var, name) in [(&weight, "weight"), (&bias, "bias")] {
                            assert_close(
                                g_ours.get(var.as_tensor()).unwrap(),
                                g_ref.get(var.as_tensor()).unwrap(),
                                tol * 10.0,
                                &format!("{what} gradient of {name}"),
                            );
                        }
                    }
                }
            }
        }
    }

    /// The sums' split depends on the shape only: the same input gives bit-identical
    /// statistics on one thread and on several.
    /// Large outputs stream their stores, as one flat run of values whatever the rows:
    /// every pass gives the plain pass's values bit for bit, on every path the machine
    /// runs, in f32 and f64, with rows of whole vectors, of a part-filled last one, and
    /// narrower than a vector (tasks, and so the streamed runs, then start and end inside
    /// vectors and inside rows).
    #[test]
    fn streamed_output_passes_match_the_plain_ones_bit_for_bit() {
        fn check<T: Element>(dtype: DType, isa: Isa) {
            let kinds = [
                Map::Affine { relu: true },
                Map::Affine { relu: false },
                Map::AffineAddRelu,
                Map::TrainGrad { relu: true },
                Map::TrainGrad { relu: false },
                Map::EvalGrad { relu: true },
            ];
            let (lanes, _, _) = tile_shape::<T>(isa);
            for c in [64, 56, 7, 3] {
                // Just past the streaming size, and not a whole number of tasks.
                let rows = STREAM_BYTES / std::mem::size_of::<T>() / c + 37;
                let values = |seed: u64| {
                    seeded(&[rows * c], dtype, seed)
                        .to_vec1::<T>()
                        .expect("values")
                };
                let (x, dy) = (values(1), values(2));
                let per_channel: Vec<Channels<T>> = (3..8)
                    .map(|seed| {
                        let v = seeded(&[c], dtype, seed).to_vec1::<T>().expect("values");
                        Channels::new(&v, lanes)
                    })
                    .collect();
                let vectors: [&Channels<T>; 5] = std::array::from_fn(|i| &per_channel[i]);
                for kind in kinds {
                    let dy = if kind.reads_dy() { &dy[..] } else { &[] };
                    let pass = |stream: bool| {
                        map_rows_with::<T, T>(
                            kind,
                            Rows::Values(&x),
                            Rows::Values(dy),
                            c,
                            isa,
                            vectors,
                            stream,
                        )
                        .iter()
                        .map(|v| v.to_f64().to_bits())
                        .collect::<Vec<_>>()
                    };
                    let plain = pass(false);
                    assert!(plain.iter().any(|&b| b != 0), "{kind:?} c={c}");
                    assert_eq!(pass(true), plain, "{kind:?} {dtype:?} {isa:?} c={c}");
                }
            }
        }
        for isa in crate::isa::available() {
            check::<f32>(DType::F32, isa);
            check::<f64>(DType::F64, isa);
        }
    }

    /// The same for the bf16-mixed passes: x and dy in bf16 or f32, the output in bf16 or
    /// f32, every pass kind, on every path the machine runs.
    #[test]
    fn streamed_bf16_passes_match_the_plain_ones_bit_for_bit() {
        fn pass<O: Copy + Send + Sync + 'static>(
            kind: Map,
            (x, dy): (Rows<f32>, Rows<f32>),
            c: usize,
            isa: Isa,
            vectors: [&Channels<f32>; 5],
            stream: bool,
        ) -> Vec<u64> {
            let out = map_rows_with::<f32, O>(kind, x, dy, c, isa, vectors, stream);
            // SAFETY: O is f32 or bf16, plain bits of 4 or 2 bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    out.as_ptr() as *const u8,
                    out.len() * std::mem::size_of::<O>(),
                )
            };
            bytes
                .chunks(8)
                .map(|b| b.iter().fold(0u64, |h, &v| h << 8 | v as u64))
                .collect()
        }
        for isa in crate::isa::available() {
            let (lanes, _, _) = tile_shape::<f32>(isa);
            for c in [64, 56, 7] {
                // Past the streaming size of a bf16 output.
                let rows = STREAM_BYTES / 2 / c + 29;
                let f32s = |seed: u64| {
                    seeded(&[rows * c], DType::F32, seed)
                        .to_vec1::<f32>()
                        .expect("values")
                };
                let (x, dy) = (f32s(1), f32s(2));
                let bf16s = |v: &[f32]| {
                    v.iter()
                        .map(|&v| half::bf16::from_f32(v))
                        .collect::<Vec<_>>()
                };
                let (xb, dyb) = (bf16s(&x), bf16s(&dy));
                let per_channel: Vec<Channels<f32>> = (3..8)
                    .map(|seed| {
                        let v = seeded(&[c], DType::F32, seed)
                            .to_vec1::<f32>()
                            .expect("values");
                        Channels::new(&v, lanes)
                    })
                    .collect();
                let vectors: [&Channels<f32>; 5] = std::array::from_fn(|i| &per_channel[i]);
                for kind in [
                    Map::Affine { relu: true },
                    Map::AffineAddRelu,
                    Map::TrainGrad { relu: true },
                ] {
                    for (xr, dr) in [
                        (Rows::Bf16(&xb), Rows::Bf16(&dyb)),
                        (Rows::Bf16(&xb), Rows::Values(&dy)),
                        (Rows::Values(&x), Rows::Bf16(&dyb)),
                    ] {
                        let what = format!("{kind:?} {isa:?} c={c}");
                        let plain = pass::<half::bf16>(kind, (xr, dr), c, isa, vectors, false);
                        assert!(plain.iter().any(|&b| b != 0), "{what}");
                        let streamed = pass::<half::bf16>(kind, (xr, dr), c, isa, vectors, true);
                        assert_eq!(streamed, plain, "bf16 out, {what}");
                        let plain = pass::<f32>(kind, (xr, dr), c, isa, vectors, false);
                        let streamed = pass::<f32>(kind, (xr, dr), c, isa, vectors, true);
                        assert_eq!(streamed, plain, "f32 out, {what}");
                    }
                }
            }
        }
    }

    #[test]
    fn statistics_do_not_depend_on_the_thread_count() {
        let x = seeded(&[8, 9, 9, 24], DType::F32, 7);
        let w = seeded(&[24], DType::F32, 8);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (y, stats) = batch_norm_train(&x, &w, &w, 1e-5, true).unwrap();
                (
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    stats.mean,
                    stats.var,
                )
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn refuses_one_value_per_channel_and_mismatched_parameters() {
        let w = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let one = Tensor::ones((1, 1, 1, 3), DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_train(&one, &w, &w, 1e-5, false).unwrap_err();
        assert!(
            err.to_string().contains("more than one value per channel"),
            "{err}"
        );
        let x = Tensor::ones((2, 3, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_train(&x, &w, &w, 1e-5, false).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
        let err = batch_norm_eval(&x, &w, &w, &w, &w, 1e-5, false).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
    }

    #[test]
    fn nan_inputs_stay_nan_through_the_relu() {
        let x = Tensor::new(&[[[[f32::NAN], [1.0]]], [[[2.0], [3.0]]]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32], &Device::Cpu).unwrap();
        let (y, _) = batch_norm_train(&x, &w, &b, 1e-5, true).unwrap();
        let values: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().any(|v| v.is_nan()), "{values:?}");
    }

    /// BN + ReLU of x in training or evaluation mode (running mean and variance both `rv`).
    fn norm_with_relu(
        x: &Tensor,
        (w, b, rv): (&Var, &Var, &Tensor),
        train: bool,
        bf16: bool,
    ) -> Tensor {
        norm_with_relu_to(
            x,
            (w, b, rv),
            train,
            NormOutput {
                bf16,
                cached: false,
            },
        )
    }

    /// `norm_with_relu`, its output written as `out` says.
    fn norm_with_relu_to(
        x: &Tensor,
        (w, b, rv): (&Var, &Var, &Tensor),
        train: bool,
        out: NormOutput,
    ) -> Tensor {
        let (w, b) = (w.as_tensor(), b.as_tensor());
        if train {
            batch_norm_train_to(x, w, b, 1e-5, true, out).unwrap().0
        } else {
            batch_norm_eval_to(x, w, b, (rv, rv), 1e-5, true, out).unwrap()
        }
    }

    /// A tensor's values as f32, flattened.
    fn flat(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// An output kept in the cache holds the same values as the streamed one (the output is
    /// large enough to stream), in both modes and both output dtypes, and so do the
    /// gradients taken through it.
    #[test]
    fn cached_outputs_match_the_streamed_ones() {
        // Large enough to stream in bf16 (two bytes a value) too.
        let shape = [8, 32, 32, 136];
        assert!(shape.iter().product::<usize>() * 2 >= STREAM_BYTES);
        let x = Var::from_tensor(&seeded(&shape, DType::F32, 21)).unwrap();
        let w = Var::from_tensor(&rand(&[136], DType::F32, 1.0, 22)).unwrap();
        let b = Var::from_tensor(&rand(&[136], DType::F32, 0.0, 23)).unwrap();
        let rv = (rand(&[136], DType::F32, 0.0, 24).abs().unwrap() + 0.5).unwrap();
        let up = seeded(&shape, DType::F32, 25);
        for train in [true, false] {
            for bf16 in [false, true] {
                let run = |cached: bool| {
                    let out = NormOutput { bf16, cached };
                    let y = norm_with_relu_to(x.as_tensor(), (&w, &b, &rv), train, out);
                    let loss = (y.to_dtype(DType::F32).unwrap() * &up).unwrap();
                    let grads = loss.sum_all().unwrap().backward().unwrap();
                    let mut values = vec![flat(&y)];
                    values.extend([&x, &w, &b].map(|v| flat(grads.get(v.as_tensor()).unwrap())));
                    values
                };
                assert_eq!(run(true), run(false), "train={train} bf16={bf16}");
            }
        }
    }

    /// A bf16 output is the f32 output rounded, in both modes; a bf16 upstream gradient
    /// gives the gradients of its f32 values.
    #[test]
    fn bf16_outputs_are_the_rounded_f32_outputs() {
        let x = Var::from_tensor(&seeded(&[3, 5, 4, 20], DType::F32, 11)).unwrap();
        let w = Var::from_tensor(&rand(&[20], DType::F32, 1.0, 12)).unwrap();
        let b = Var::from_tensor(&rand(&[20], DType::F32, 0.0, 13)).unwrap();
        let rv = (rand(&[20], DType::F32, 0.0, 14).abs().unwrap() + 0.5).unwrap();
        let up = seeded(&[3, 5, 4, 20], DType::F32, 15)
            .to_dtype(DType::BF16)
            .unwrap();
        for train in [true, false] {
            let run = |bf16: bool| {
                let y = norm_with_relu(x.as_tensor(), (&w, &b, &rv), train, bf16);
                let up = if bf16 {
                    up.clone()
                } else {
                    up.to_dtype(DType::F32).unwrap()
                };
                let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let g: Vec<Vec<f32>> = [&x, &w, &b]
                    .iter()
                    .map(|v| {
                        grads
                            .get(v.as_tensor())
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    })
                    .collect();
                (y, g)
            };
            let (y16, g16) = run(true);
            let (y32, g32) = run(false);
            assert_eq!(y16.dtype(), DType::BF16);
            let rounded = y32.to_dtype(DType::BF16).unwrap();
            assert_eq!(
                max_diff(
                    &y16.to_dtype(DType::F32).unwrap(),
                    &rounded.to_dtype(DType::F32).unwrap()
                ),
                0.0
            );
            // The products of y and a bf16 gradient round differently in the two runs' sums:
            // the gradients agree to f32 accumulation, not bits.
            for (a, b) in g16.iter().zip(&g32) {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(diff <= 1e-4 * scale, "train={train}: {diff} of {scale}");
            }
        }
    }

    /// A bf16 input (a bf16-mixed convolution's output) is read as its f32 values: the
    /// output and the parameters' gradients are those of the widened input bit for bit, and
    /// the input's gradient is bf16, the f32 one rounded; refused with f64 parameters.
    #[test]
    fn bf16_inputs_are_read_as_their_f32_values() {
        let xb = Var::from_tensor(
            &seeded(&[3, 5, 4, 20], DType::F32, 21)
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let x32 = Var::from_tensor(&xb.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let w = Var::from_tensor(&rand(&[20], DType::F32, 1.0, 22)).unwrap();
        let b = Var::from_tensor(&rand(&[20], DType::F32, 0.0, 23)).unwrap();
        let rv = (rand(&[20], DType::F32, 0.0, 24).abs().unwrap() + 0.5).unwrap();
        let up = seeded(&[3, 5, 4, 20], DType::F32, 25);
        for train in [true, false] {
            for out_bf16 in [false, true] {
                let run = |x: &Var| {
                    let y = norm_with_relu(x.as_tensor(), (&w, &b, &rv), train, out_bf16);
                    let loss = (y.to_dtype(DType::F32).unwrap() * &up).unwrap();
                    let grads = loss.sum_all().unwrap().backward().unwrap();
                    let g: Vec<Tensor> = [x, &w, &b]
                        .iter()
                        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                        .collect();
                    (y, g)
                };
                let (yb, gb) = run(&xb);
                let (y32, g32) = run(&x32);
                let what = format!("train={train} out_bf16={out_bf16}");
                assert_eq!(yb.dtype(), y32.dtype(), "{what}");
                assert_eq!(flat(&yb), flat(&y32), "{what}: output");
                assert_eq!(gb[0].dtype(), DType::BF16, "{what}");
                let rounded = g32[0].to_dtype(DType::BF16).unwrap();
                assert_eq!(flat(&gb[0]), flat(&rounded), "{what}: input gradient");
                assert_eq!(flat(&gb[1]), flat(&g32[1]), "{what}: weight gradient");
                assert_eq!(flat(&gb[2]), flat(&g32[2]), "{what}: bias gradient");
            }
        }
        let w64 = w.as_tensor().to_dtype(DType::F64).unwrap();
        let out = NormOutput::default();
        let err = batch_norm_train_to(xb.as_tensor(), &w64, &w64, 1e-5, false, out).unwrap_err();
        assert!(err.to_string().contains("needs f32 parameters"), "{err}");
    }

    /// The block end, max(bn(x) + shortcut, 0) as one op, gives BN (no ReLU) followed by
    /// add+ReLU bit for bit: output, statistics and the gradients of x, weight, bias and the
    /// shortcut; in f64, in f32, and with a bf16-mixed convolution's bf16 output as x (its
    /// gradient bf16). Odd shapes, channels that leave partial vectors, and more rows than
    /// one task of the sums.
    #[test]
    fn block_end_is_batch_norm_then_add_relu_bit_for_bit() {
        let shapes: [&[usize]; 4] = [
            &[4, 5, 7, 3],
            &[2, 9, 9, 1],
            &[3, 11, 13, 37],
            &[2, 6, 6, 64],
        ];
        for (x_dtype, dtype) in [
            (DType::F64, DType::F64),
            (DType::F32, DType::F32),
            (DType::BF16, DType::F32),
        ] {
            for (case, shape) in shapes.iter().enumerate() {
                let seed = 500 + 10 * case as u64;
                let c = shape[3];
                let what = format!("{x_dtype:?} {shape:?}");
                let x = Var::from_tensor(
                    &rand(shape, DType::F64, 0.3, seed)
                        .to_dtype(x_dtype)
                        .unwrap(),
                )
                .unwrap();
                let w = Var::from_tensor(&rand(&[c], dtype, 1.0, seed + 1)).unwrap();
                let b = Var::from_tensor(&rand(&[c], dtype, 0.0, seed + 2)).unwrap();
                let shortcut = Var::from_tensor(&rand(shape, dtype, 0.0, seed + 3)).unwrap();
                let up = seeded(shape, dtype, seed + 4);
                let (fused, fused_stats) = batch_norm_add_relu_train(
                    x.as_tensor(),
                    w.as_tensor(),
                    b.as_tensor(),
                    shortcut.as_tensor(),
                    1e-5,
                )
                .unwrap();
                let (normed, stats) =
                    batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, false)
                        .unwrap();
                let composed = crate::add_relu_op(&normed, shortcut.as_tensor()).unwrap();
                assert_eq!(fused.dtype(), dtype, "{what}");
                assert_eq!(max_diff(&fused, &composed), 0.0, "{what}: output");
                assert_eq!(fused_stats.mean, stats.mean, "{what}: mean");
                assert_eq!(fused_stats.var, stats.var, "{what}: variance");
                // Some outputs are cut by the ReLU, so the mask is exercised.
                let zeros = fused.eq(0.0).unwrap().to_dtype(DType::F64).unwrap();
                let zeros = zeros.sum_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(zeros > 0.0 && zeros < fused.elem_count() as f64, "{what}");
                let (gf, gc) = (grads(&fused, &up), grads(&composed, &up));
                for (var, name) in [
                    (&x, "x"),
                    (&w, "weight"),
                    (&b, "bias"),
                    (&shortcut, "shortcut"),
                ] {
                    let (a, e) = (
                        gf.get(var.as_tensor()).unwrap(),
                        gc.get(var.as_tensor()).unwrap(),
                    );
                    assert_eq!(a.dtype(), var.dtype(), "{what}: {name} gradient dtype");
                    let diff = max_diff(
                        &a.to_dtype(DType::F64).unwrap(),
                        &e.to_dtype(DType::F64).unwrap(),
                    );
                    assert_eq!(diff, 0.0, "{what}: {name} gradient");
                }
            }
        }
    }

    #[test]
    fn block_end_refuses_a_shortcut_of_another_shape_or_dtype() {
        let x = Tensor::ones((2, 3, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let other = Tensor::ones((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_add_relu_train(&x, &w, &w, &other, 1e-5).unwrap_err();
        assert!(err.to_string().contains("shortcut"), "{err}");
        let f64_shortcut = x.to_dtype(DType::F64).unwrap();
        let err = batch_norm_add_relu_train(&x, &w, &w, &f64_shortcut, 1e-5).unwrap_err();
        assert!(err.to_string().contains("shortcut"), "{err}");
        let w3 = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_add_relu_train(&x, &w3, &w3, &x, 1e-5).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
    }
}
