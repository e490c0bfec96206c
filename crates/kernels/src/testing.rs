//! Helpers of the ops' tests: seeded inputs, so a failure reproduces, and differences.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// A tensor of standard normal values drawn from a ChaCha stream of `seed`, in `dtype`.
pub fn seeded(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count = shape.iter().product::<usize>();
    let values: Vec<f64> = (0..count)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("seeded tensor")
}

/// The largest absolute difference between two tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(DType::F64))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("difference")
}

/// The largest absolute value of a tensor.
pub fn max_abs(a: &Tensor) -> f64 {
    max_diff(a, &a.zeros_like().expect("zeros"))
}
