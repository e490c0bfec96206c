//! SGD's update of one parameter, in place, in two passes over its values.
//!
//! As candle ops the update (weight decay, momentum, the step) is half a dozen passes, each
//! allocating a fresh tensor the size of the parameter and run on one thread: for an
//! ImageNet model, whose parameters are a hundred megabytes, that is a visible share of a
//! training step. Here the momentum buffer is updated in place by one pass, the weights by
//! another, both split over threads. Every value is computed with the operations, in the
//! order and with the roundings, of the candle ops (`Sgd::step` in cardinal-train, which
//! keeps them for other devices and dtypes): `x * s` is candle's affine `x * s + 0`, whose
//! `+ 0` turns a negative zero positive, and is kept for that. The bits are the same.

use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::vector_loops;

/// Values per task: large enough to amortize scheduling, small enough to share a parameter
/// of a few hundred thousand values between threads.
const CHUNK: usize = 1 << 15;

/// SGD's rule (PyTorch's `torch.optim.SGD`, dampening 0), with PyTorch's names:
///
/// ```text
/// g   = grad + weight_decay * w          (weight_decay None: g = grad)
/// buf = g                 on the first step, then  buf = momentum * buf + g
/// d   = g + momentum * buf  (Nesterov)   or        d = buf    (momentum 0: d = g)
/// w  -= lr * d
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdRule {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: Option<f64>,
}

/// What a pass needs of the rule, in the parameter's dtype.
#[derive(Clone, Copy)]
struct Scalars<T> {
    lr: T,
    momentum: T,
    weight_decay: Option<T>,
    nesterov: bool,
    zero: T,
}

impl<T: WithDType> Scalars<T> {
    fn of(rule: &SgdRule) -> Self {
        Scalars {
            lr: T::from_f64(rule.lr),
            momentum: T::from_f64(rule.momentum),
            weight_decay: rule.weight_decay.map(T::from_f64),
            nesterov: rule.nesterov,
            zero: T::from_f64(0.0),
        }
    }

    /// `x * by` as candle's affine computes it: `x * by + 0`.
    #[inline(always)]
    fn times(&self, x: T, by: T) -> T {
        x * by + self.zero
    }

    /// The gradient with weight decay: `grad + (w * wd + 0)`.
    #[inline(always)]
    fn decayed(&self, grad: T, w: T) -> T {
        match self.weight_decay {
            Some(wd) => grad + self.times(w, wd),
            None => grad,
        }
    }
}

/// Updates `w` in place by one step of `rule` from its gradient `grad`, and the momentum
/// buffer with it: `buffer` is the previous step's (None on the first step, or without
/// momentum). Returns the buffer to keep (None without momentum): the one passed, updated
/// in place, or on the first step a new one.
///
/// Returns `Ok(None)` and changes nothing where the op does not apply: a tensor not on the
/// CPU, not f32 or f64, not contiguous, or shapes that differ. The caller then runs the
/// rule with candle's ops (see `Sgd::step`).
pub fn sgd_step(
    w: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    rule: &SgdRule,
) -> Result<Option<Option<Tensor>>> {
    let tensors = [Some(w), Some(grad), buffer];
    let applies = tensors.iter().flatten().all(|t| {
        t.device().is_cpu() && t.dtype() == w.dtype() && t.shape() == w.shape() && t.is_contiguous()
    }) && matches!(w.dtype(), DType::F32 | DType::F64);
    if !applies {
        return Ok(None);
    }
    let _span = crate::profile::Span::new("sgd step");
    if rule.momentum == 0.0 {
        w.inplace_op3(grad, grad, &WeightStep { rule: *rule })?;
        return Ok(Some(None));
    }
    let buffer = match buffer {
        Some(b) => {
            b.inplace_op3(grad, w, &BufferStep { rule: *rule })?;
            b.clone()
        }
        None => {
            // A buffer of its own (the gradient's storage is candle's): g, written over
            // a copy of the gradient.
            let b = grad.detach().copy()?;
            b.inplace_op3(grad, w, &BufferFirst { rule: *rule })?;
            b
        }
    };
    w.inplace_op3(grad, &buffer, &WeightStep { rule: *rule })?;
    Ok(Some(Some(buffer)))
}

/// The contiguous values of a CPU storage, or an error naming the op.
fn values<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    crate::cpu::contiguous(T::cpu_storage_as_slice(s)?, l, op)
}

/// The contiguous values of the updated tensor, or an error naming the op.
fn values_mut<'a, T>(data: &'a mut [T], l: &Layout, op: &str) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: the updated tensor must be contiguous"),
    }
}

/// `dst[i] = f(dst[i], a[i], b[i])` for every i, in parallel chunks, with `f` built for the
/// parameter's dtype: the in-place passes' one loop.
macro_rules! zip_in_place {
    ($op:expr, $dst:expr, $dl:expr, $srcs:expr, |$s:ident: Scalars<T>| $f:expr, $rule:expr) => {{
        let [(a, al), (b, bl)] = $srcs;
        match $dst {
            CpuStorage::F32(data) => {
                type T = f32;
                let $s = Scalars::<T>::of($rule);
                let (a, b) = (values::<T>(a, al, $op)?, values::<T>(b, bl, $op)?);
                let dst = values_mut(data, $dl, $op)?;
                zip3(dst, a, b, $f)
            }
            CpuStorage::F64(data) => {
                type T = f64;
                let $s = Scalars::<T>::of($rule);
                let (a, b) = (values::<T>(a, al, $op)?, values::<T>(b, bl, $op)?);
                let dst = values_mut(data, $dl, $op)?;
                zip3(dst, a, b, $f)
            }
            _ => candle_core::bail!("{}: f32 or f64 only", $op),
        }
    }};
}

fn zip3<T: WithDType>(
    dst: &mut [T],
    a: &[T],
    b: &[T],
    f: impl Fn(T, T, T) -> T + Sync,
) -> Result<()> {
    if a.len() != dst.len() || b.len() != dst.len() {
        candle_core::bail!(
            "sgd: tensors of {}, {} and {} values",
            dst.len(),
            a.len(),
            b.len()
        );
    }
    let isa = crate::isa::selected();
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| {
            vector_loops(
                isa,
                #[inline(always)]
                || {
                    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                        *d = f(*d, a, b);
                    }
                },
            )
        });
    Ok(())
}

/// The buffer's update after the first step: `buf = (buf * m + 0) + g`; sources grad, w.
struct BufferStep {
    rule: SgdRule,
}

impl InplaceOp3 for BufferStep {
    fn name(&self) -> &'static str {
        "sgd-buffer"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let srcs = [(a, al), (b, bl)];
        zip_in_place!(
            self.name(),
            dst,
            dl,
            srcs,
            |s: Scalars<T>| move |buf, grad, w| s.times(buf, s.momentum) + s.decayed(grad, w),
            &self.rule
        )
    }
}

/// The buffer on the first step: `buf = g`; sources grad, w.
struct BufferFirst {
    rule: SgdRule,
}

impl InplaceOp3 for BufferFirst {
    fn name(&self) -> &'static str {
        "sgd-buffer-first"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let srcs = [(a, al), (b, bl)];
        zip_in_place!(
            self.name(),
            dst,
            dl,
            srcs,
            |s: Scalars<T>| move |_, grad, w| s.decayed(grad, w),
            &self.rule
        )
    }
}

/// The weights' step, `w = w - (d * lr + 0)`; sources grad and the updated buffer (the
/// gradient again without momentum).
struct WeightStep {
    rule: SgdRule,
}

impl InplaceOp3 for WeightStep {
    fn name(&self) -> &'static str {
        "sgd-weights"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let srcs = [(a, al), (b, bl)];
        let momentum = self.rule.momentum != 0.0;
        zip_in_place!(
            self.name(),
            dst,
            dl,
            srcs,
            |s: Scalars<T>| move |w, grad, buf| {
                let d = if !momentum {
                    s.decayed(grad, w)
                } else if s.nesterov {
                    s.decayed(grad, w) + s.times(buf, s.momentum)
                } else {
                    buf
                };
                w - s.times(d, s.lr)
            },
            &self.rule
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rule() -> SgdRule {
        SgdRule {
            lr: 0.5,
            momentum: 0.9,
            nesterov: false,
            weight_decay: None,
        }
    }

    /// What the passes do not cover is left to the caller, untouched: a transposed
    /// (non-contiguous) gradient, shapes or dtypes that differ, a dtype other than f32/f64.
    #[test]
    fn declines_what_it_does_not_cover() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let before = w.as_tensor().to_vec2::<f32>().unwrap();
        let g = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let declined = [
            (w.as_tensor().clone(), g.t().unwrap()),
            (w.as_tensor().clone(), g.reshape(4).unwrap()),
            (w.as_tensor().clone(), g.to_dtype(DType::F64).unwrap()),
        ];
        for (w, g) in &declined {
            assert!(sgd_step(w, g, None, &rule()).unwrap().is_none());
        }
        let half = w.as_tensor().to_dtype(DType::F16).unwrap();
        let half_grad = g.to_dtype(DType::F16).unwrap();
        assert!(sgd_step(&half, &half_grad, None, &rule())
            .unwrap()
            .is_none());
        assert_eq!(w.as_tensor().to_vec2::<f32>().unwrap(), before);
    }

    /// Two steps by hand: the first buffer is the gradient, a buffer of its own; the
    /// second updates it in place and is returned as the same tensor.
    #[test]
    fn keeps_the_buffer_in_place_after_the_first_step() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f64, -2.0, 0.5], &dev).unwrap();
        let g = Tensor::new(&[0.25f64, 0.5, -1.0], &dev).unwrap();
        let first = sgd_step(w.as_tensor(), &g, None, &rule())
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.to_vec1::<f64>().unwrap(), vec![0.25, 0.5, -1.0]);
        assert_eq!(
            w.as_tensor().to_vec1::<f64>().unwrap(),
            vec![0.875, -2.25, 1.0]
        );
        let second = sgd_step(w.as_tensor(), &g, Some(&first), &rule())
            .unwrap()
            .unwrap()
            .unwrap();
        // buf = 0.9 * buf + g, seen through the first step's handle too; w -= 0.5 * buf.
        let expected_buf = [0.9 * 0.25 + 0.25, 0.9 * 0.5 + 0.5, -0.9 - 1.0];
        assert_eq!(first.to_vec1::<f64>().unwrap(), expected_buf.to_vec());
        assert_eq!(second.to_vec1::<f64>().unwrap(), expected_buf.to_vec());
        let expected_w: Vec<f64> = [0.875, -2.25, 1.0]
            .iter()
            .zip(expected_buf)
            .map(|(w, b)| w - b * 0.5)
            .collect();
        assert_eq!(w.as_tensor().to_vec1::<f64>().unwrap(), expected_w);
        // The gradient's own storage was not written.
        assert_eq!(g.to_vec1::<f64>().unwrap(), vec![0.25, 0.5, -1.0]);
    }
}
