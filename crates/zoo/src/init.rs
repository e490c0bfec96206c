//! Seeded initialisation. candle's CPU RNG cannot be seeded, so weights are drawn from a
//! ChaCha stream of our own: the same spec and seed give the same weights on every machine.
//!
//! Weights are always drawn in form C's layout and then converted, so forms A, B and C of
//! one seed are the same function from the first step.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::convert;
use crate::error::Result;
use crate::layout::{self, TensorRole};
use crate::spec::{BlockForm, NetSpec};
use crate::StateDict;

/// He (Kaiming) normal init with fan_out for convs (the paper's and torchvision's choice),
/// PyTorch's default uniform for the classifier, BN gamma = 1 (0 for the last BN of each
/// block when `zero_init_last_bn`), beta = 0, running mean 0 and variance 1.
pub fn init_weights(spec: &NetSpec, seed: u64, device: &Device) -> Result<StateDict> {
    spec.validate()?;
    let grouped = NetSpec {
        form: BlockForm::C,
        ..spec.clone()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = StateDict::new();
    for layer in layout::layers(&grouped) {
        for (name, shape, role) in layer.tensors() {
            let numel: usize = shape.iter().product();
            let values: Vec<f32> = match role {
                TensorRole::ConvWeight => {
                    let fan_out = shape[0] * shape[2] * shape[3];
                    let std = (2.0 / fan_out as f32).sqrt();
                    let normal = Normal::new(0.0f32, std).expect("std is finite and positive");
                    (0..numel).map(|_| normal.sample(&mut rng)).collect()
                }
                TensorRole::LinearWeight | TensorRole::LinearBias => {
                    let fan_in = match layer.kind {
                        layout::LayerKind::Linear { in_features, .. } => in_features,
                        _ => unreachable!("linear tensors belong to linear layers"),
                    };
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let uniform = Uniform::new_inclusive(-bound, bound).expect("bound is finite");
                    (0..numel).map(|_| uniform.sample(&mut rng)).collect()
                }
                TensorRole::BnWeight => {
                    let gamma = if layer.last_bn_of_block && spec.zero_init_last_bn {
                        0.0
                    } else {
                        1.0
                    };
                    vec![gamma; numel]
                }
                TensorRole::BnBias | TensorRole::RunningMean => vec![0.0; numel],
                TensorRole::RunningVar => vec![1.0; numel],
            };
            state.insert(name, Tensor::from_vec(values, shape, device)?);
        }
    }
    convert::convert(spec, &state, BlockForm::C, spec.form)
}

/// Replaces every BN's gamma, beta and running statistics by seeded random values, so that
/// checks of eval mode and of converted weights exercise every tensor, not ones and zeros.
pub fn randomize_batch_norm(state: &mut StateDict, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_b17e);
    let names: Vec<String> = state.keys().cloned().collect();
    for name in names {
        let role = if name.ends_with("running_mean") {
            TensorRole::RunningMean
        } else if name.ends_with("running_var") {
            TensorRole::RunningVar
        } else {
            continue;
        };
        let prefix = name
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let tensor = &state[&name];
        let (n, device) = (tensor.elem_count(), tensor.device().clone());
        let mut draw =
            |lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
        let stat = match role {
            TensorRole::RunningMean => draw(-0.2, 0.2),
            _ => draw(0.5, 1.5),
        };
        let gamma = draw(0.5, 1.5);
        let beta = draw(-0.2, 0.2);
        state.insert(name, Tensor::from_vec(stat, n, &device)?);
        // gamma and beta are drawn once per BN (when its running_mean is visited).
        if role == TensorRole::RunningMean {
            state.insert(
                format!("{prefix}.weight"),
                Tensor::from_vec(gamma, n, &device)?,
            );
            state.insert(
                format!("{prefix}.bias"),
                Tensor::from_vec(beta, n, &device)?,
            );
        }
    }
    Ok(())
}
