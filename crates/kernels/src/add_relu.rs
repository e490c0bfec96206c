//! The end of every residual block, max(a + b, 0), as one pass with its backward.
//!
//! As two candle ops (an add, then a ReLU) it is two passes over the activation forward
//! and two backward, each with a fresh output; here it is one of each, split over threads.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use crate::cpu::{
    contiguous, cpu_slice, float_dispatch, masked, par_filled, relu_if, storage, write_from,
};
use crate::gemm::load_upto;
use crate::isa::Isa;
use crate::simd::{simd_call, stream_parts, tile_shape, Element, Simd, STREAM_BYTES};

/// max(a + b, 0).
#[derive(Debug, Clone, Copy)]
struct AddRelu;

/// Elements per task of the element-wise passes: large enough to amortize scheduling.
const CHUNK: usize = 1 << 14;

/// f(a[i], b[i]) for every i, in parallel chunks.
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    // SAFETY: every value of every chunk is written: a chunk covers the same range of a and
    // b, which have the output's length.
    unsafe {
        par_filled(
            a.len(),
            CHUNK,
            crate::isa::selected(),
            || (),
            #[inline(always)]
            |_, chunk, o: &mut [MaybeUninit<T>]| {
                let range = chunk * CHUNK..chunk * CHUNK + o.len();
                let values = a[range.clone()].iter().zip(&b[range]);
                write_from(o, values.map(|(&a, &b)| f(a, b)));
            },
        )
    }
}

fn add_relu<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(
        a,
        b,
        #[inline(always)]
        |a, b| relu_if(true, a + b),
    )
}

/// The gradient through a ReLU taken from its output y: dy where y was passed through,
/// else 0. An output of `STREAM_BYTES` or more is streamed (see `Simd::stream`).
pub(crate) fn relu_grad<T: Element>(y: &[T], dy: &[T]) -> Vec<T> {
    relu_grad_with(y, dy, crate::isa::selected(), true)
}

/// `relu_grad` on `isa`'s path, streamed only where `may_stream` (the tests hold the
/// streamed pass to the plain one, bit for bit).
fn relu_grad_with<T: Element>(y: &[T], dy: &[T], isa: Isa, may_stream: bool) -> Vec<T> {
    let (lanes, _, _) = tile_shape::<T>(isa);
    let len = y.len();
    if !may_stream || lanes == 1 || std::mem::size_of_val(y) < STREAM_BYTES {
        return zip_map(
            y,
            dy,
            #[inline(always)]
            |y, g| masked(true, y, g),
        );
    }
    assert_eq!(dy.len(), len, "relu_grad: y and dy differ in length");
    // SAFETY: `relu_grad_streamed` writes every value of each chunk, whose values lie in y
    // and dy at the chunk's offset.
    unsafe {
        par_filled(
            len,
            CHUNK,
            isa,
            || (),
            #[inline(always)]
            |_, chunk, o: &mut [MaybeUninit<T>]| {
                let start = chunk * CHUNK;
                let (y, dy) = (y.as_ptr().add(start), dy.as_ptr().add(start));
                let out = o.as_mut_ptr() as *mut T;
                simd_call!(isa, T, relu_grad_streamed(y, dy, 0..o.len(), out));
            },
        )
    }
}

/// `relu_grad`'s values `span`, every whole vector on an aligned address of `out`
/// streamed, the values before and after them stored as usual.
///
/// # Safety
/// y, dy and `out` (for writes) hold the values `span`; the CPU runs `S`.
#[inline(always)]
unsafe fn relu_grad_streamed<S: Simd, const MR: usize>(
    y: *const S::E,
    dy: *const S::E,
    span: std::ops::Range<usize>,
    out: *mut S::E,
) {
    let size = std::mem::size_of::<S::E>();
    let [head, body, tail] = stream_parts(
        span.clone(),
        out.wrapping_add(span.start) as usize,
        size,
        S::LANES,
    );
    // SAFETY: every vector lies within `span` (the ends cut to their values).
    unsafe {
        for part in [head, tail] {
            if !part.is_empty() {
                let n = part.len();
                let f = part.start;
                let value =
                    S::where_passed(load_upto::<S>(y.add(f), n), load_upto::<S>(dy.add(f), n));
                S::store_partial(out.add(f), value, n);
            }
        }
        for f in body.step_by(S::LANES) {
            S::stream(
                out.add(f),
                S::where_passed(S::load(y.add(f)), S::load(dy.add(f))),
            );
        }
        S::fence();
    }
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("add+relu forward");
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "add-relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let out = float_dispatch!(s1.dtype(), self.name(), T => storage(add_relu::<T>(
            contiguous(s1.as_slice::<T>()?, l1, self.name())?,
            contiguous(s2.as_slice::<T>()?, l2, self.name())?,
        )));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = crate::profile::Span::new("add+relu backward");
        let grad = grad_res.contiguous()?;
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let g = float_dispatch!(a.dtype(), self.name(), T => Tensor::from_vec(
            relu_grad::<T>(cpu_slice(&ys, yl, self.name())?, cpu_slice(&gs, gl, self.name())?),
            a.shape(),
            a.device(),
        )?);
        Ok((Some(g.clone()), Some(g)))
    }
}

/// max(a + b, 0) in one pass, on the CPU in f32 or f64 (any layout of equal shapes; the
/// output is contiguous). Empty tensors go to candle's ops.
pub fn add_relu_op(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.elem_count() == 0 {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_ops_with_gradients() {
        for dtype in [DType::F64, DType::F32] {
            // Odd sizes, and more values than one chunk so that several tasks write.
            for (i, shape) in [[3usize, 4, 5, 5], [2, 64, 17, 17]].iter().enumerate() {
                let a = Var::from_tensor(&seeded(shape, dtype, 10 + i as u64)).unwrap();
                let b = Var::from_tensor(&seeded(shape, dtype, 20 + i as u64)).unwrap();
                let ours = add_relu_op(a.as_tensor(), b.as_tensor()).unwrap();
                let expected = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
                assert_eq!(max_diff(&ours, &expected), 0.0, "{shape:?} output");
                let up = seeded(ours.dims(), dtype, 30);
                let g_ours = (&ours * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g_ref = (&expected * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for var in [&a, &b] {
                    let diff = max_diff(
                        g_ours.get(var.as_tensor()).unwrap(),
                        g_ref.get(var.as_tensor()).unwrap(),
                    );
                    assert_eq!(diff, 0.0, "{shape:?} gradient");
                }
            }
        }
    }

    /// The ReLU's gradient of a large output streams its stores: the plain pass's values
    /// bit for bit, on every path the machine runs, in f32 and f64, with outputs that were
    /// clamped (0, -0), passed, or NaN, and a length that ends inside a vector.
    #[test]
    fn streamed_relu_gradient_matches_the_plain_one_bit_for_bit() {
        fn check<T: Element>(dtype: DType, isa: Isa) {
            let len = STREAM_BYTES / std::mem::size_of::<T>() + 37;
            let mut y = seeded(&[len], dtype, 1).to_vec1::<T>().unwrap();
            let dy = seeded(&[len], dtype, 2).to_vec1::<T>().unwrap();
            for (i, v) in y.iter_mut().enumerate() {
                match i % 7 {
                    0 => *v = T::zero(),
                    1 => *v = T::from_f64(-0.0),
                    2 => *v = T::from_f64(f64::NAN),
                    _ => {}
                }
            }
            let bits = |v: Vec<T>| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            let plain = bits(relu_grad_with(&y, &dy, isa, false));
            assert!(plain.iter().any(|&b| b != 0), "{dtype:?} {isa:?}");
            assert_eq!(
                bits(relu_grad_with(&y, &dy, isa, true)),
                plain,
                "{dtype:?} {isa:?}"
            );
        }
        for isa in crate::isa::available() {
            check::<f32>(DType::F32, isa);
            check::<f64>(DType::F64, isa);
        }
    }

    #[test]
    fn nan_stays_nan() {
        let x = Tensor::new(&[f32::NAN, 1.0, -2.0], &Device::Cpu).unwrap();
        let z = add_relu_op(&x, &x).unwrap().to_vec1::<f32>().unwrap();
        assert!(z[0].is_nan(), "{z:?}");
        assert_eq!(&z[1..], &[2.0, 0.0]);
    }

    #[test]
    fn refuses_different_shapes() {
        let a = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = add_relu_op(&a, &b).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }
}
