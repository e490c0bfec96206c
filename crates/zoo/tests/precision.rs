//! bf16-mixed training steps against f32 ones, and their determinism, on every
//! instruction-set path the machine has.

use candle_core::{DType, Device, Tensor, Var};
use cardinal_kernels::isa::{available, set_override};
use cardinal_zoo::{init_weights, preset, Precision, ResNet};
use rand::SeedableRng;
use rand_distr::Distribution;

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Loss and every trainable gradient of one train-mode step of a small ResNeXt.
fn step(precision: Precision, model: &str) -> (f32, Vec<(String, Vec<f32>)>) {
    let mut spec = preset(model).unwrap();
    spec.input_size = 20;
    let state = init_weights(&spec, 5, &Device::Cpu).unwrap();
    let mut net = ResNet::new(&spec, &state).unwrap();
    net.set_precision(precision);
    let x = Var::from_tensor(&seeded(&[6, 1, 20, 20], 6)).unwrap();
    // Cross-entropy against fixed labels, as training computes it (in f32).
    let labels = Tensor::new(&[3u32, 1, 4, 1, 5, 9], &Device::Cpu).unwrap();
    let logits = net.forward_t(x.as_tensor(), true).unwrap();
    let log_p = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    let loss = log_p
        .gather(&labels.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut out = Vec::new();
    for (name, var) in net.params().trainable() {
        let g = grads.get(var.as_tensor()).unwrap();
        assert_eq!(
            g.dtype(),
            DType::F32,
            "{name}: weight gradients reach the optimizer in f32"
        );
        out.push((name.clone(), g.flatten_all().unwrap().to_vec1().unwrap()));
    }
    (loss.to_scalar().unwrap(), out)
}

/// On each path, a bf16-mixed step agrees with the f32 step to bf16 precision, and is
/// bit-identical when run twice. bf16 keeps 8 bits of each input of every product; at this
/// batch (6 images) the gradients' directions move by a few degrees (cosines 0.96-0.999
/// seen on every path alike, the software path included), the loss by well under 2%.
#[test]
fn bf16_steps_follow_f32_steps_and_repeat_bit_for_bit() {
    for isa in available() {
        set_override(Some(isa));
        for model in ["cpu_resnet11", "cpu_resnext11_32x2d"] {
            let (loss32, grads32) = step(Precision::F32, model);
            let (loss16, grads16) = step(Precision::Bf16Mixed, model);
            let (again, grads_again) = step(Precision::Bf16Mixed, model);
            assert_eq!(
                loss16.to_bits(),
                again.to_bits(),
                "{isa} {model}: loss repeats"
            );
            assert!(grads16 == grads_again, "{isa} {model}: gradients repeat");
            assert!(
                (loss16 - loss32).abs() <= 0.02 * loss32.abs().max(1.0),
                "{isa} {model}: loss {loss16} vs {loss32}"
            );
            for ((name, a), (_, b)) in grads16.iter().zip(&grads32) {
                // Directions: a gradient that sums many terms (a bias's) cancels, so its
                // elements' relative error is no measure; the angle to the f32 gradient is.
                let dot: f64 = a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum();
                let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let cosine = dot / (norm(a) * norm(b)).max(1e-30);
                assert!(cosine >= 0.95, "{isa} {model} {name}: cosine {cosine}");
            }
        }
    }
    set_override(None);
}
