//! What the CPU ops share: access to contiguous storage, outputs written without a zeroing
//! pass, the AVX2 dispatch, the folded ReLU and the f32/f64 dispatch.

use std::mem::MaybeUninit;

use candle_core::{Layout, Result, Storage, WithDType};

use crate::isa::Isa;
use crate::simd::VectorPath;
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
    isa: Isa,
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
            vector_loops(
                isa,
                #[inline(always)]
                || fill(state, index, part),
            )
        });
    // SAFETY: every value of every chunk was written (the caller's promise), and the
    // capacity is at least `len`.
    unsafe { out.set_len(len) };
    out
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

/// A raw pointer that tasks on several threads may hold: each writes or reads only what its
/// own safety contract covers (disjoint parts of an output, shared read-only inputs).
#[derive(Debug)]
pub(crate) struct SendPtr<T>(pub *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

// SAFETY: the pointer is only dereferenced under the contracts of the functions that use it,
// which keep the threads' accesses disjoint or read-only.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// The storage candle takes from a kernel's output.
pub(crate) fn storage<T: WithDType>(v: Vec<T>) -> candle_core::CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// Runs `f` compiled for the vector path of `isa` (AVX-512 or AVX2 with FMA where the CPU
/// has them, else the x86-64 baseline): the element-wise loops of the kernels vectorize as
/// wide as the CPU allows, and the binary still runs on any x86-64. `f` and what it calls
/// must be inlined into it for the wider code to be generated: callers keep their loops in
/// `#[inline(always)]` functions or closures (`#[inline(always)] || ...`), as is `f`.
#[inline(always)]
pub(crate) fn vector_loops<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    match VectorPath::of(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `VectorPath::of` picks a path only where the machine has it.
        VectorPath::Avx512 => unsafe {
            crate::simd::with_avx512(
                #[inline(always)]
                || f(),
            )
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        VectorPath::Avx2 => unsafe {
            crate::simd::with_avx2(
                #[inline(always)]
                || f(),
            )
        },
        _ => f(),
    }
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
