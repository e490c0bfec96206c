//! What the CPU kernels ([`crate::kernels`], [`crate::norm`]) share: access to contiguous
//! storage and the f32/f64 dispatch.

use candle_core::{Layout, Result, Storage, WithDType};

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
