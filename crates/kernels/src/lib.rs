//! cardinal-kernels: the CPU ops that cardinal's models train with, as candle custom ops
//! with backward passes, on channels-last ([N, H, W, C]) activations.
//!
//! - [`conv`]: 2-d convolution, any groups, stride and padding, square kernels, in f32, f64
//!   or bf16-mixed (bf16 products with f32 sums on AMX tiles, AVX512-BF16, or rounded values);
//! - [`norm`]: batch norm in training and evaluation mode, with an optional folded ReLU;
//! - [`add_relu`]: the residual block's max(a + b, 0);
//! - [`pool`]: the ImageNet stem's 3x3 stride-2 max-pool and the global average pool;
//! - [`sgd`]: SGD's update of a parameter and its momentum buffer, in place;
//! - [`isa`]: which instruction-set path the kernels take (detected, or `CARDINAL_ISA`);
//! - [`memory`]: the allocator setting the ops rely on; [`profile`]: per-op times.
//!
//! Ops hand what they do not cover (other devices, dtypes) to candle's own ops, which also
//! serve as the reference in the tests. This is the only crate of the workspace with
//! `unsafe` code; each unsafe site states the contract that makes it sound. The README
//! beside this crate lists the ops, their layouts, the paths and how to add an op.

pub mod add_relu;
pub(crate) mod bf16;
pub mod conv;
pub(crate) mod conv_bf16;
mod cpu;
mod gemm;
mod group_rows;
pub mod isa;
pub mod memory;
pub mod norm;
pub mod pool;
pub mod profile;
pub mod sgd;
mod simd;

#[cfg(test)]
mod testing;

pub use add_relu::add_relu_op;
pub use conv::{conv2d, ConvOptions};
pub use norm::{
    batch_norm_add_relu_train, batch_norm_eval, batch_norm_train, BatchStats, NormOutput,
};
pub use pool::{global_avg_pool, max_pool_3x3_s2};
