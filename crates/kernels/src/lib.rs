//! cardinal-kernels: the CPU ops that cardinal's models train with, as candle custom ops
//! with backward passes.
//!
//! - [`conv`]: 2-d convolution, any groups, stride and padding, square kernels;
//! - [`norm`]: batch norm in training and evaluation mode, with an optional folded ReLU;
//! - [`add_relu`]: the residual block's max(a + b, 0);
//! - [`pool`]: the ImageNet stem's 3x3 stride-2 max-pool;
//! - [`memory`]: the allocator setting the ops rely on.
//!
//! Every op takes f32 or f64 on the CPU and hands anything else (other devices, dtypes,
//! empty tensors) to candle's own ops, which also serve as the reference in the tests.
//! This is the only crate of the workspace with `unsafe` code; each unsafe site states the
//! contract that makes it sound. The README beside this crate lists the ops, their layouts
//! and how to add one.

pub mod add_relu;
pub(crate) mod bf16;
pub mod conv;
pub(crate) mod conv_bf16;
mod cpu;
mod gemm;
pub mod isa;
pub mod memory;
pub mod norm;
pub mod pool;
pub mod profile;
mod simd;

#[cfg(test)]
mod testing;

pub use add_relu::add_relu_op;
pub use conv::{conv2d, ConvOptions};
pub use norm::{batch_norm_eval, batch_norm_train, BatchStats};
pub use pool::{global_avg_pool, max_pool_3x3_s2};
