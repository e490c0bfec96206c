//! Convolution on the CPU as one custom op: im2col + gemm per image and group, with a
//! backward pass that computes the input gradient (gemm + col2im) and the weight gradient
//! (gemm over im2col columns) directly.
//!
//! candle's own conv2d runs grouped convolutions one group at a time and computes its input
//! and weight gradients with direct loops. Expressing im2col + matmul with candle tensor ops
//! instead (an earlier version of this file) is faster, but every reshape, permute and copy
//! around the matmul becomes a node of candle's backward graph, and each node costs a
//! zeroed buffer and an add as large as the column matrix (9x the activation for a 3x3
//! kernel). As one op, the backward graph has one node per convolution, and the columns of
//! one image live only in a per-thread buffer.
//!
//! Work is split over images (each image's columns, products and col2im are independent),
//! so with a batch of at least one image per thread every core runs single-threaded gemm
//! on cache-sized matrices. The weight gradient sums over images in fixed chunks, in a
//! fixed order: the result does not depend on how threads were scheduled.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::cpu::{
    as_uninit_mut, assume_init_mut, contiguous, cpu_slice, float_dispatch, par_filled, vectorized,
    zeroed,
};

/// The geometry of one convolution: square kernel, stride, zero padding, groups.
#[derive(Debug, Clone, Copy)]
struct Conv2d {
    stride: usize,
    padding: usize,
    groups: usize,
}

/// The sizes every pass needs, derived once from x [N, C, H, W] and weight [Cout, C/G, k, k].
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Dims {
    fn new(x: &[usize], weight: &[usize], op: Conv2d) -> Result<Dims> {
        let (&[n, c, h, w], &[c_out, c_group, kh, kw]) = (x, weight) else {
            candle_core::bail!("conv2d: expected 4-d input and weight, got {x:?} and {weight:?}");
        };
        if kh != kw || c_group * op.groups != c || c_out % op.groups != 0 {
            candle_core::bail!(
                "conv2d: weight {weight:?} does not fit input {x:?} in {} groups",
                op.groups
            );
        }
        if h + 2 * op.padding < kh || w + 2 * op.padding < kw {
            candle_core::bail!("conv2d: input {x:?} is smaller than the kernel {kh}x{kw}");
        }
        Ok(Dims {
            n,
            c,
            h,
            w,
            c_out,
            k: kh,
            ho: out_size(h, kh, op.stride, op.padding),
            wo: out_size(w, kw, op.stride, op.padding),
            stride: op.stride,
            padding: op.padding,
            groups: op.groups,
        })
    }

    /// Output positions per image.
    fn l(&self) -> usize {
        self.ho * self.wo
    }

    /// Rows of one group's column matrix (and columns of its weight matrix).
    fn depth(&self) -> usize {
        self.c / self.groups * self.k * self.k
    }

    fn c_out_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// A 1x1 stride-1 convolution needs no unfolding: an image is its own column matrix.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// Stride 1 with "same" padding (a 3x3 with padding 1): every row of the column matrix
    /// is the whole plane shifted by a constant offset, so it moves as one contiguous copy
    /// instead of one short copy per output row.
    fn shifted_planes(&self) -> bool {
        self.stride == 1 && self.ho == self.h && self.wo == self.w
    }
}

fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// The output columns `lo..hi` whose input column `ox * stride + offset` lies in the image
/// (`offset` is kx - padding), so the inner loops need no bounds test.
fn inside(out: usize, size: usize, stride: usize, offset: isize) -> (usize, usize) {
    let lo = if offset >= 0 {
        0
    } else {
        offset.unsigned_abs().div_ceil(stride)
    };
    let hi = if offset >= size as isize {
        0
    } else {
        ((size as isize - offset) as usize)
            .div_ceil(stride)
            .min(out)
    };
    (lo.min(hi), hi)
}

/// Unfolds one image [C, H, W] into columns [C*k*k, Ho*Wo] (rows ordered c, ky, kx: the
/// layout of a conv weight [Cout, C, k, k] flattened), zero outside the padded image.
#[inline(always)]
fn im2col<T: WithDType>(image: &[T], d: &Dims, cols: &mut [T]) {
    if d.shifted_planes() {
        return im2col_shifted(image, d, cols);
    }
    let (k, s, l) = (d.k, d.stride, d.l());
    for (ch, plane) in image.chunks_exact(d.h * d.w).enumerate() {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ch * k + ky) * k + kx) * l..][..l];
                let offset = kx as isize - d.padding as isize;
                let (lo, hi) = inside(d.wo, d.w, s, offset);
                for (oy, dst) in row.chunks_exact_mut(d.wo).enumerate() {
                    let y = (oy * s + ky) as isize - d.padding as isize;
                    if y < 0 || y >= d.h as isize || lo == hi {
                        dst.fill(T::zero());
                        continue;
                    }
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let first = (lo * s) as isize + offset;
                    let line = &plane[y as usize * d.w + first as usize..(y as usize + 1) * d.w];
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&line[..hi - lo]);
                    } else {
                        for (v, src) in dst[lo..hi].iter_mut().zip(line.iter().step_by(s)) {
                            *v = *src;
                        }
                    }
                }
            }
        }
    }
}

/// Where the column-matrix row of kernel offset (ky, kx) reads its plane, for
/// `Dims::shifted_planes` geometry: value j of the row is value j + offset of the plane for
/// j in `valid` (the rest of the row lies in the zero padding), except in the `wrapped`
/// columns of every row, where the flat shift runs into the neighbouring image row.
struct Shift {
    offset: isize,
    valid: std::ops::Range<usize>,
    wrapped: std::ops::Range<usize>,
}

fn shift(d: &Dims, ky: usize, kx: usize) -> Shift {
    let (dy, dx) = (
        ky as isize - d.padding as isize,
        kx as isize - d.padding as isize,
    );
    let (h, w) = (d.h as isize, d.w as isize);
    let offset = dy * w + dx;
    // Rows whose source row lies inside the plane, then clipped so that the source index
    // j + offset stays in the plane at the two ends.
    let (first_row, end_row) = ((-dy).clamp(0, h), (h - dy).clamp(0, h));
    let start = (first_row * w).max(-offset).min(h * w);
    let end = (end_row * w).min(h * w - offset).max(start);
    let wrapped = if dx < 0 {
        0..(-dx).min(w) as usize
    } else {
        (w - dx).max(0) as usize..w as usize
    };
    Shift {
        offset,
        valid: start as usize..end as usize,
        wrapped,
    }
}

/// Zeroes the wrapped columns of one row of the column matrix (see `Shift`).
#[inline(always)]
fn zero_wrapped<T: WithDType>(row: &mut [T], shift: &Shift, w: usize) {
    if !shift.wrapped.is_empty() {
        for line in row.chunks_exact_mut(w) {
            line[shift.wrapped.clone()].fill(T::zero());
        }
    }
}

/// The row of the column matrix that kernel offset (ky, kx) of channel `ch` fills.
fn row_index(d: &Dims, ch: usize, ky: usize, kx: usize) -> usize {
    ((ch * d.k + ky) * d.k + kx) * d.l()
}

#[inline(always)]
fn im2col_shifted<T: WithDType>(image: &[T], d: &Dims, cols: &mut [T]) {
    let l = d.l();
    for (ch, plane) in image.chunks_exact(l).enumerate() {
        for (ky, kx) in (0..d.k).flat_map(|ky| (0..d.k).map(move |kx| (ky, kx))) {
            let row = &mut cols[row_index(d, ch, ky, kx)..][..l];
            let shift = shift(d, ky, kx);
            let valid = shift.valid.clone();
            row[..valid.start].fill(T::zero());
            row[valid.end..].fill(T::zero());
            if !valid.is_empty() {
                // valid.start >= -offset (see `shift`): the source index is not negative.
                let source = (valid.start as isize + shift.offset) as usize;
                row[valid.clone()].copy_from_slice(&plane[source..source + valid.len()]);
            }
            zero_wrapped(row, &shift, d.w);
        }
    }
}

/// `col2im` for `Dims::shifted_planes` geometry. It zeroes the wrapped columns of `cols`
/// (whose values belong to the padding) so that each row adds into the plane in one pass.
#[inline(always)]
fn col2im_shifted<T: WithDType>(cols: &mut [T], d: &Dims, image: &mut [T]) {
    let l = d.l();
    for (ch, plane) in image.chunks_exact_mut(l).enumerate() {
        for (ky, kx) in (0..d.k).flat_map(|ky| (0..d.k).map(move |kx| (ky, kx))) {
            let row = &mut cols[row_index(d, ch, ky, kx)..][..l];
            let shift = shift(d, ky, kx);
            zero_wrapped(row, &shift, d.w);
            if shift.valid.is_empty() {
                continue;
            }
            let target = (shift.valid.start as isize + shift.offset) as usize;
            let valid = shift.valid.clone();
            for (dst, &v) in plane[target..target + valid.len()]
                .iter_mut()
                .zip(&row[valid])
            {
                *dst += v;
            }
        }
    }
}

/// The adjoint of `im2col`: adds columns [C*k*k, Ho*Wo] back into one image [C, H, W]
/// (`cols` is scratch: the shifted-planes path zeroes its padding values).
fn col2im<T: WithDType>(cols: &mut [T], d: &Dims, image: &mut [T]) {
    if d.shifted_planes() {
        return vectorized(|| col2im_shifted(cols, d, image));
    }
    let (k, s, l) = (d.k, d.stride, d.l());
    for (ch, plane) in image.chunks_exact_mut(d.h * d.w).enumerate() {
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ch * k + ky) * k + kx) * l..][..l];
                let offset = kx as isize - d.padding as isize;
                let (lo, hi) = inside(d.wo, d.w, s, offset);
                for (oy, src) in row.chunks_exact(d.wo).enumerate() {
                    let y = (oy * s + ky) as isize - d.padding as isize;
                    if y < 0 || y >= d.h as isize || lo == hi {
                        continue;
                    }
                    let first = (lo * s) as isize + offset;
                    let line =
                        &mut plane[y as usize * d.w + first as usize..(y as usize + 1) * d.w];
                    for (dst, v) in line.iter_mut().step_by(s).zip(&src[lo..hi]) {
                        *dst += *v;
                    }
                }
            }
        }
    }
}

/// A matrix view for gemm inside a slice: element (i, j) at offset + i * row + j * col.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    offset: usize,
    row: usize,
    col: usize,
}

impl<'a, T: Copy> Mat<'a, T> {
    /// A row-major matrix with `row` elements per row, starting at `offset`.
    fn rows(data: &'a [T], offset: usize, row: usize) -> Mat<'a, T> {
        Mat {
            data,
            offset,
            row,
            col: 1,
        }
    }

    /// The transpose of a row-major matrix with `row` elements per row.
    fn transposed(data: &'a [T], offset: usize, row: usize) -> Mat<'a, T> {
        Mat {
            data,
            offset,
            row: 1,
            col: row,
        }
    }

    fn at(&self, i: usize, j: usize) -> T {
        self.data[self.offset + i * self.row + j * self.col]
    }

    /// The `len` elements from (i, j) along a row, which must be contiguous (col == 1).
    fn row_from(&self, i: usize, len: usize) -> &'a [T] {
        &self.data[self.offset + i * self.row..][..len]
    }
}

/// Output rows up to which a product is computed by the plain loops below instead of
/// gemm: the one-row-per-path products of high cardinality (C = 32 with d = 2 has two
/// output channels per group), where gemm's packing costs more than the arithmetic.
const SMALL_ROWS: usize = 8;

/// Dot product in independent lanes, so that it vectorizes; lanes combine in a fixed order.
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let whole = a.len() / LANES * LANES;
    for (x, y) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for lane in 0..LANES {
            acc[lane] += x[lane] * y[lane];
        }
    }
    let mut total = acc.iter().fold(T::zero(), |t, &v| t + v);
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        total += *x * *y;
    }
    total
}

/// dst [m, n] (row-major, `dst_row` apart) = lhs [m, depth] x rhs [depth, n], added to dst
/// when `accumulate`. Single-threaded: the callers already split work over images.
///
/// # Safety
/// When `accumulate`, the m x n destination values are initialised (without it they are
/// only written).
unsafe fn gemm<T: WithDType>(
    (m, n, depth): (usize, usize, usize),
    dst: &mut [MaybeUninit<T>],
    dst_row: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= (m - 1) * dst_row + n,
        "gemm: destination too small"
    );
    // The plain loops run compiled for AVX2 where the CPU has it (see `vectorized`): these
    // products are most of the work of the high-cardinality layers.
    if m <= SMALL_ROWS && rhs.col == 1 {
        // Each output row is a sum of rhs rows scaled by lhs entries (axpy).
        return vectorized(|| {
            for i in 0..m {
                let out = &mut dst[i * dst_row..i * dst_row + n];
                let out = if accumulate {
                    // SAFETY: initialised when accumulating (the caller's promise).
                    unsafe { assume_init_mut(out) }
                } else {
                    zeroed(out)
                };
                for k in 0..depth {
                    let a = lhs.at(i, k);
                    for (o, &v) in out.iter_mut().zip(rhs.row_from(k, n)) {
                        *o += a * v;
                    }
                }
            }
        });
    }
    if m <= SMALL_ROWS && lhs.col == 1 && rhs.row == 1 {
        // rhs is a transposed row-major matrix: every output is a dot product of two rows.
        let columns = Mat::rows(rhs.data, rhs.offset, rhs.col);
        return vectorized(|| {
            for i in 0..m {
                let a = lhs.row_from(i, depth);
                for j in 0..n {
                    let v = dot(a, columns.row_from(j, depth));
                    let o = &mut dst[i * dst_row + j];
                    if accumulate {
                        // SAFETY: initialised when accumulating (the caller's promise).
                        unsafe { *o.assume_init_mut() += v };
                    } else {
                        o.write(v);
                    }
                }
            }
        });
    }
    let lhs_end = lhs.offset + (m - 1) * lhs.row + depth.saturating_sub(1) * lhs.col;
    let rhs_end = rhs.offset + depth.saturating_sub(1) * rhs.row + (n - 1) * rhs.col;
    assert!(
        depth == 0 || (lhs_end < lhs.data.len() && rhs_end < rhs.data.len()),
        "gemm: operand view out of bounds"
    );
    // SAFETY: dst holds m rows of n elements `dst_row` apart, and the last element of each
    // operand view lies inside its slice (both checked above); strides are positive, so
    // every element gemm reads or writes lies inside the slices. gemm reads the destination
    // only when `accumulate` (its `read_dst`), when it is initialised (our caller's promise).
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.as_mut_ptr().cast::<T>(),
            1,
            dst_row as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col as isize,
            rhs.row as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The column matrix [C*k*k, Ho*Wo] of one image: the image itself for a direct 1x1
/// convolution, else its im2col in `buf` (reused across images by the caller's thread).
fn columns<'a, T: WithDType>(image: &'a [T], d: &Dims, buf: &'a mut Vec<T>) -> &'a [T] {
    if d.direct() {
        return image;
    }
    buf.resize(d.c * d.k * d.k * d.l(), T::zero());
    vectorized(|| im2col(image, d, buf));
    buf
}

/// y[n] = W_g x cols_g(x[n]) for every image and group.
fn forward<T: WithDType>(x: &[T], weight: &[T], d: &Dims) -> Vec<T> {
    let (l, depth, cog) = (d.l(), d.depth(), d.c_out_group());
    let image_out = d.c_out * l;
    // SAFETY: the products of the groups write all c_out rows of l values of an image.
    unsafe {
        par_filled(
            d.n * image_out,
            image_out,
            Vec::new,
            |buf: &mut Vec<T>, img, out: &mut [MaybeUninit<T>]| {
                let image = &x[img * d.c * d.h * d.w..(img + 1) * d.c * d.h * d.w];
                let cols = columns(image, d, buf);
                for g in 0..d.groups {
                    // SAFETY: no accumulation, so the destination is only written.
                    gemm(
                        (cog, l, depth),
                        &mut out[g * cog * l..],
                        l,
                        false,
                        Mat::rows(weight, g * cog * depth, depth),
                        Mat::rows(cols, g * depth * l, l),
                    );
                }
            },
        )
    }
}

/// dx[n] = col2im(W_g^T x dy_g[n]).
fn input_grad<T: WithDType>(dy: &[T], weight: &[T], d: &Dims) -> Vec<T> {
    let (l, depth, cog) = (d.l(), d.depth(), d.c_out_group());
    let image_len = d.c * d.h * d.w;
    // SAFETY: a direct convolution's products write the whole image (its column matrix);
    // otherwise the image is zeroed before col2im adds into it.
    unsafe {
        par_filled(
            d.n * image_len,
            image_len,
            Vec::new,
            |buf: &mut Vec<T>, img, image: &mut [MaybeUninit<T>]| {
                let grad = &dy[img * d.c_out * l..(img + 1) * d.c_out * l];
                let direct = d.direct();
                if !direct {
                    buf.resize(d.c * d.k * d.k * l, T::zero());
                }
                let cols: &mut [MaybeUninit<T>] = if direct {
                    image
                } else {
                    // SAFETY: the products below write only initialised values.
                    as_uninit_mut(buf)
                };
                for g in 0..d.groups {
                    // SAFETY: no accumulation, so the destination is only written.
                    gemm(
                        (depth, l, cog),
                        &mut cols[g * depth * l..],
                        l,
                        false,
                        Mat::transposed(weight, g * cog * depth, depth),
                        Mat::rows(grad, g * cog * l, l),
                    );
                }
                if !direct {
                    // Zeroed here rather than up front: the image is then still in cache
                    // when col2im adds into it.
                    col2im(buf, d, zeroed(image));
                }
            },
        )
    }
}

/// Images per partial sum of the weight gradient: a fixed split, so that the sum's order,
/// and thus its rounding, is the same on every run and thread count.
const IMAGES_PER_PARTIAL: usize = 8;

/// dW_g = sum over images of dy_g[n] x cols_g(x[n])^T.
fn weight_grad<T: WithDType>(x: &[T], dy: &[T], d: &Dims) -> Vec<T> {
    let (l, depth, cog) = (d.l(), d.depth(), d.c_out_group());
    let size = d.c_out * depth;
    let image_len = d.c * d.h * d.w;
    let partials: Vec<Vec<T>> = (0..d.n.div_ceil(IMAGES_PER_PARTIAL))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![T::zero(); size];
            let mut buf = Vec::new();
            let images = chunk * IMAGES_PER_PARTIAL..((chunk + 1) * IMAGES_PER_PARTIAL).min(d.n);
            for (i, img) in images.enumerate() {
                let image = &x[img * image_len..(img + 1) * image_len];
                let cols = columns(image, d, &mut buf);
                let grad = &dy[img * d.c_out * l..(img + 1) * d.c_out * l];
                for g in 0..d.groups {
                    // SAFETY: `acc` is initialised (zeros, then sums), and the product
                    // writes only initialised values.
                    unsafe {
                        gemm(
                            (cog, depth, l),
                            &mut as_uninit_mut(&mut acc)[g * cog * depth..],
                            depth,
                            i > 0,
                            Mat::rows(grad, g * cog * l, l),
                            Mat::transposed(cols, g * depth * l, l),
                        );
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![T::zero(); size];
    for partial in &partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += *p;
        }
    }
    total
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims(), *self)?;
        let y = float_dispatch!(s1.dtype(), "conv2d", T => T::to_cpu_storage_owned(forward::<T>(
            contiguous(s1.as_slice::<T>()?, l1, "conv2d")?,
            contiguous(s2.as_slice::<T>()?, l2, "conv2d")?,
            &d,
        )));
        Ok((y, Shape::from((d.n, d.c_out, d.ho, d.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = Dims::new(x.dims(), weight.dims(), *self)?;
        let grad = grad_res.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        float_dispatch!(x.dtype(), "conv2d", T => {
            let (xv, wv, gv) = (cpu_slice::<T>(&xs, xl, "conv2d")?, cpu_slice::<T>(&ws, wl, "conv2d")?, cpu_slice::<T>(&gs, gl, "conv2d")?);
            let dx = Tensor::from_vec(input_grad(gv, wv, &d), x.shape(), x.device())?;
            let dw = Tensor::from_vec(weight_grad(xv, gv, &d), weight.shape(), weight.device())?;
            Ok((Some(dx), Some(dw)))
        })
    }
}

/// conv2d(x [N, C, H, W], weight [Cout, C/groups, k, k]) with square kernels, any stride,
/// padding and groups, on the CPU in f32 or f64. Differentiable in x and weight. Shapes
/// and devices it does not cover go to candle's conv2d.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    let op = Conv2d {
        stride,
        padding,
        groups,
    };
    // Empty tensors and degenerate geometry go to candle, which reports them.
    let supported = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.elem_count() > 0
        && weight.elem_count() > 0
        && stride > 0
        && groups > 0
        && x.dtype() == weight.dtype()
        && Dims::new(x.dims(), weight.dims(), op).is_ok();
    if !supported {
        return x.conv2d(weight, padding, stride, 1, groups);
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;
    use candle_core::{DType, Var};

    /// Values and gradients (input and weight) against candle's reference conv2d.
    #[test]
    fn matches_candle_conv2d_values_and_gradients() {
        let cases = [
            // (n, c, h, w, c_out, k, stride, padding, groups)
            (2, 4, 7, 5, 6, 3, 1, 1, 1),
            (2, 8, 9, 9, 8, 3, 1, 1, 4),
            (3, 8, 9, 7, 16, 3, 2, 1, 8),
            (2, 6, 6, 6, 6, 3, 1, 1, 6),
            (2, 1, 5, 7, 4, 3, 2, 1, 1),
            (2, 6, 7, 7, 10, 1, 2, 0, 1),
            (2, 6, 7, 7, 10, 1, 1, 0, 2),
            (1, 3, 11, 11, 4, 7, 2, 3, 1),
            // More than SMALL_ROWS output channels per group: the gemm path.
            (2, 12, 7, 7, 12, 3, 1, 1, 1),
            (2, 16, 9, 11, 24, 3, 2, 1, 2),
            // Stride 1, "same" padding on planes no larger than the kernel, and a 5x5: the
            // shifted-plane unfolding at its edge cases.
            (2, 4, 1, 1, 6, 3, 1, 1, 2),
            (2, 4, 2, 2, 4, 3, 1, 1, 1),
            (1, 3, 1, 5, 4, 3, 1, 1, 1),
            (2, 3, 6, 4, 5, 5, 1, 2, 1),
            (1, 2, 3, 3, 2, 5, 1, 2, 1),
        ];
        for dtype in [DType::F64, DType::F32] {
            for (i, &(n, c, h, w, c_out, k, s, p, g)) in cases.iter().enumerate() {
                let seed = 10 * i as u64;
                let x = Var::from_tensor(&seeded(&[n, c, h, w], dtype, seed)).unwrap();
                let wt = Var::from_tensor(&seeded(&[c_out, c / g, k, k], dtype, seed + 1)).unwrap();
                let mine = conv2d(x.as_tensor(), wt.as_tensor(), p, s, g).unwrap();
                let reference = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, g).unwrap();
                assert_eq!(mine.dims(), reference.dims(), "case {i}");
                // A fixed random upstream gradient makes every output position matter.
                let up = seeded(reference.dims(), dtype, seed + 2);
                let g_mine = (&mine * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g_ref = (&reference * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
                let close = |a: &Tensor, b: &Tensor, what: &str| {
                    let diff: f64 = (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar()
                        .unwrap();
                    let scale: f64 = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar()
                        .unwrap();
                    assert!(
                        diff <= tol * scale.max(1.0),
                        "case {i} {dtype:?} {what}: diff {diff}"
                    );
                };
                close(&mine, &reference, "output");
                close(
                    g_mine.get(x.as_tensor()).unwrap(),
                    g_ref.get(x.as_tensor()).unwrap(),
                    "input gradient",
                );
                close(
                    g_mine.get(wt.as_tensor()).unwrap(),
                    g_ref.get(wt.as_tensor()).unwrap(),
                    "weight gradient",
                );
            }
        }
    }

    /// Gradients are adjoints: conv is linear in x and in the weight, so for any direction
    /// dx, <grad_x, dx> = <up, conv(dx, w)>, and likewise for the weight. This holds with no
    /// reference, so it also covers even sizes at stride 2, where candle's own conv2d
    /// backward fails (its input gradient comes out one column short).
    #[test]
    fn gradients_are_adjoints_even_at_stride_2_with_even_sizes() {
        let cases = [
            (2, 3, 8, 8, 4, 3, 2, 1, 1),
            (2, 8, 6, 10, 8, 3, 2, 1, 4),
            (1, 4, 8, 6, 6, 1, 2, 0, 2),
            (2, 16, 8, 8, 24, 3, 2, 1, 2),
        ];
        for (i, &(n, c, h, w, c_out, k, s, p, g)) in cases.iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            let rand = |shape: &[usize], offset: u64| seeded(shape, DType::F64, seed + offset);
            let x = Var::from_tensor(&rand(&[n, c, h, w], 0)).unwrap();
            let wt = Var::from_tensor(&rand(&[c_out, c / g, k, k], 1)).unwrap();
            let out = conv2d(x.as_tensor(), wt.as_tensor(), p, s, g).unwrap();
            let up = rand(out.dims(), 2);
            let grads = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let dot = |a: &Tensor, b: &Tensor| -> f64 {
                (a * b).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let dx = rand(&[n, c, h, w], 3);
            let lhs = dot(grads.get(x.as_tensor()).unwrap(), &dx);
            let rhs = dot(&up, &conv2d(&dx, wt.as_tensor(), p, s, g).unwrap());
            assert!(
                (lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0),
                "input: {lhs} vs {rhs}"
            );
            let dw = rand(&[c_out, c / g, k, k], 4);
            let lhs = dot(grads.get(wt.as_tensor()).unwrap(), &dw);
            let rhs = dot(&up, &conv2d(x.as_tensor(), &dw, p, s, g).unwrap());
            assert!(
                (lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0),
                "weight: {lhs} vs {rhs}"
            );
        }
    }
}
