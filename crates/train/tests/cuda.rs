//! One training step on a CUDA device against the same step on the CPU: the loss and every
//! gradient agree to f32 tolerance. Built only with `--features cuda` (scripts/gpu-check.sh
//! runs it on a machine with an NVIDIA GPU).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use cardinal_train::run::cross_entropy;
use cardinal_zoo::{init_weights, preset, ResNet};

/// Loss and gradients (by parameter name, on the CPU) of one train-mode step on `device`.
fn step(device: &Device) -> (f32, Vec<(String, Tensor)>) {
    let mut spec = preset("cpu_resnext11_4x12d").unwrap();
    spec.input_size = 28;
    // Weights and batch are drawn on the CPU, so both devices see the same numbers.
    let state: cardinal_zoo::StateDict = init_weights(&spec, 0, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_device(device).unwrap()))
        .collect();
    let net = ResNet::new(&spec, &state).unwrap();
    let x = Tensor::arange(0f32, (16 * 28 * 28) as f32, &Device::Cpu)
        .unwrap()
        .affine(1e-3, -0.5)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((16, 1, 28, 28))
        .unwrap()
        .to_device(device)
        .unwrap();
    let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
    let labels = Tensor::new(labels.as_slice(), device).unwrap();
    let logits = net.forward_t(&x, true).unwrap();
    let loss = cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut out = Vec::new();
    for (name, var) in net.params().trainable() {
        let g = grads
            .get(var.as_tensor())
            .expect("every parameter has a gradient");
        out.push((name.clone(), g.to_device(&Device::Cpu).unwrap()));
    }
    (loss.to_dtype(DType::F32).unwrap().to_scalar().unwrap(), out)
}

#[test]
fn a_train_step_on_cuda_matches_the_cpu() {
    let cuda = Device::new_cuda(0).expect("a CUDA device");
    let (cpu_loss, cpu_grads) = step(&Device::Cpu);
    let (cuda_loss, cuda_grads) = step(&cuda);
    assert!(
        (cpu_loss - cuda_loss).abs() <= 1e-4 * cpu_loss.abs().max(1.0),
        "loss: cpu {cpu_loss}, cuda {cuda_loss}"
    );
    assert_eq!(cpu_grads.len(), cuda_grads.len());
    for ((name, a), (_, b)) in cpu_grads.iter().zip(&cuda_grads) {
        let max = |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        let diff = max(&(a - b).unwrap());
        let scale = max(a);
        assert!(
            diff <= 1e-3 * scale.max(1e-6),
            "{name}: max |cpu - cuda| {diff} against a scale of {scale}"
        );
    }
}
