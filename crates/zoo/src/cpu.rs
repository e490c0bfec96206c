//! What the CPU kernels ([`crate::kernels`], [`crate::norm`]) share: access to contiguous
//! storage and the f32/f64 dispatch.

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
/// (a write of every activation) showed up in the profile beside the kernels themselves.
///
/// # Safety
/// `fill` must write every value of its chunk, and write each one before reading it.
pub(crate) unsafe fn par_filled<T, S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T>
where
    T: WithDType,
{
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (index, part)| {
            // SAFETY: MaybeUninit<T> has T's layout, and T is a float (no drop glue); the
            // caller promises no value is read before it is written.
            let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
            vectorized(|| fill(state, index, part))
        });
    // SAFETY: every value of every chunk was written (the caller's promise).
    unsafe { out.set_len(len) };
    out
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
