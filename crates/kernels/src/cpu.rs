//! What the CPU ops share: access to contiguous storage, outputs written without a zeroing
//! pass, the AVX2 dispatch, the folded ReLU and the f32/f64 dispatch.

use std::mem::MaybeUninit;

use candle_core::{Layout, Result, Storage, WithDType};
use rayon::prelude::*;

/// The contiguous part of `data` that `layout` describes; kernels take contiguous inputs
/// only (their callers make them so).
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The contiguous CPU slice behind a tensor's storage guard (in backward passes, which get
/// tensors rather than storage).
pub(crate) fn cpu_slice<'a, T: WithDType>(
    storage: &'a Storage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match storage {
        Storage::Cpu(cpu) => contiguous(cpu.as_slice::<T>()?, layout, op),
        _ => candle_core::bail!("{op}: CPU tensors only"),
    }
}

/// A vector of `len` values that `fill` writes in parallel, `chunk` values at a time (the
/// last chunk may be shorter), given a per-thread state made by `init` and the chunk's
/// index. Unlike `vec![0; len]`, it does not first zero the memory: in a training step,
/// whose outputs and gradients are all written in full by the kernels, that zeroing pass
/// (a write of every activation) costs about as much as the element-wise kernels
/// themselves. `fill` sees its chunk as `MaybeUninit` values: it can write them, and can
/// only read those it wrote through [`assume_init_mut`] or [`zeroed`].
///
/// # Safety
/// `fill` must write every value of its chunk.
pub(crate) unsafe fn par_filled<T, S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T>
where
    T: WithDType,
{
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (index, part)| {
            vectorized(|| fill(state, index, part))
        });
    // SAFETY: every value of every chunk was written (the caller's promise), and the
    // capacity is at least `len`.
    unsafe { out.set_len(len) };
    out
}

/// The values of `part` once all of them have been written.
///
/// # Safety
/// Every value of `part` is initialised.
#[inline(always)]
pub(crate) unsafe fn assume_init_mut<T>(part: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: MaybeUninit<T> has T's size, alignment and layout, and every value is
    // initialised (the caller's promise).
    unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `part` set to zero, as initialised values.
#[inline(always)]
pub(crate) fn zeroed<T: WithDType>(part: &mut [MaybeUninit<T>]) -> &mut [T] {
    part.fill(MaybeUninit::new(T::zero()));
    // SAFETY: every value was just written.
    unsafe { assume_init_mut(part) }
}

/// Initialised values seen as storage that may be written, for code that writes into
/// either kind (a product that overwrites or accumulates into its destination).
///
/// # Safety
/// Nothing may write `MaybeUninit::uninit()` through the result: the values must stay
/// initialised for the owner of `values`.
#[inline(always)]
pub(crate) unsafe fn as_uninit_mut<T>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same layout; the caller keeps every value initialised.
    unsafe { &mut *(values as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// Writes `values` into `out`, in order, up to the shorter of the two.
#[inline(always)]
pub(crate) fn write_from<T>(out: &mut [MaybeUninit<T>], values: impl Iterator<Item = T>) {
    for (o, v) in out.iter_mut().zip(values) {
        o.write(v);
    }
}

/// `max(v, 0)` when `relu`, else `v`. `v < 0` rather than `max`: a NaN stays NaN, so a
/// divergence still reaches the loss.
#[inline(always)]
pub(crate) fn relu_if<T: WithDType>(relu: bool, v: T) -> T {
    if relu && v < T::zero() {
        T::zero()
    } else {
        v
    }
}

/// The upstream gradient through a ReLU that was folded into an op (when `relu`): zero
/// where the output `y` was clamped.
#[inline(always)]
pub(crate) fn masked<T: WithDType>(relu: bool, y: T, dy: T) -> T {
    if relu && y <= T::zero() {
        T::zero()
    } else {
        dy
    }
}

/// The storage candle takes from a kernel's output.
pub(crate) fn storage<T: WithDType>(v: Vec<T>) -> candle_core::CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them, else as built (the x86-64
/// baseline, SSE2 only). The element-wise loops of the kernels vectorize 2-4x wider that way,
/// and the binary still runs on any x86-64. `f` and what it calls must be inlined into the
/// dispatching function for the wider code to be generated: callers keep their loops in
/// `#[inline(always)]` functions or in the closure itself.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// Runs `$body` with the type `$t` bound to f32 or f64 after `$dtype` (the dtypes models
/// train and are checked in); other dtypes are an error naming `$op`.
macro_rules! float_dispatch {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("{}: dtype {other:?} is not supported", $op),
        }
    };
}
pub(crate) use float_dispatch;
