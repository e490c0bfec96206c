//! cardinal-bench: the measuring half of `cardinal bench`. Each timing warms up first and
//! reports the median of repeated runs; peak memory is the process's high-water mark.
//! Nothing here asserts a speed: benchmarks measure, tests check.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use cardinal_data::{Batch, Loader};
use cardinal_train::optim::Sgd;
use cardinal_zoo::{init_weights, Kernels, NetSpec, Precision, ResNet};

/// The median of `values` (the upper one of an even count); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Peak resident set size of this process (Linux's VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak-RSS counter of this process, so a case's peak excludes earlier cases;
/// false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Median milliseconds of `f` over `repeats` runs after one warm-up; None if it fails.
pub fn time_ms(repeats: usize, f: impl Fn() -> candle_core::Result<()>) -> Option<f64> {
    f().ok()?;
    let times = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .ok()?;
    Some(median(times))
}

/// What a run of training steps measured.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub ms_per_step: f64,
    pub images_per_sec: f64,
    /// The process's peak memory during the steps, where it could be reset before them.
    pub peak_rss_bytes: Option<u64>,
}

/// One model's full SGD steps (forward in train mode, cross-entropy, backward, SGD with
/// momentum and weight decay) on a fixed random batch, ready to be timed one step at a
/// time: what [`train_steps`] times, and what `cardinal bench train --interleave` keeps for
/// every case at once so that their steps alternate.
pub struct TrainStepper {
    net: ResNet,
    sgd: Sgd,
    x: Tensor,
    labels: Tensor,
    batch_size: usize,
}

impl TrainStepper {
    /// The model of `spec` with seed-0 weights and its optimizer, on a random batch.
    pub fn new(
        spec: &NetSpec,
        batch_size: usize,
        (kernels, precision): (Kernels, Precision),
        device: &Device,
    ) -> Result<TrainStepper> {
        let state = init_weights(spec, 0, device)?;
        let mut net = ResNet::new(spec, &state)?;
        net.set_kernels(kernels);
        net.set_precision(precision);
        let shape = (
            batch_size,
            spec.in_channels,
            spec.input_size,
            spec.input_size,
        );
        let x = Tensor::randn(0f32, 1.0, shape, device)?;
        let labels: Vec<u32> = (0..batch_size)
            .map(|i| (i * 7919 % spec.classes) as u32)
            .collect();
        let labels = Tensor::new(labels.as_slice(), device)?;
        let sgd = Sgd::new(net.params().trainable(), 0.9, false, 5e-4, false);
        Ok(TrainStepper {
            net,
            sgd,
            x,
            labels,
            batch_size,
        })
    }

    /// Runs one step; returns its wall time in milliseconds.
    pub fn step(&mut self) -> Result<f64> {
        let start = Instant::now();
        let logits = self.net.forward_t(&self.x, true)?;
        let loss = cardinal_train::run::cross_entropy(&logits, &self.labels)?;
        let grads = loss.backward()?;
        self.sgd.step(&grads, 0.01)?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }

    /// Images per second of a step that took `ms` milliseconds.
    pub fn images_per_sec(&self, ms: f64) -> f64 {
        self.batch_size as f64 / ms * 1e3
    }
}

/// Times full SGD steps of `spec` on a random batch (see [`TrainStepper`]): `warmup`
/// untimed steps, then the median of `steps`. `on_step` is called after every step (a
/// progress bar).
pub fn train_steps(
    spec: &NetSpec,
    batch_size: usize,
    choice: (Kernels, Precision),
    device: &Device,
    (warmup, steps): (usize, usize),
    on_step: &mut dyn FnMut(),
) -> Result<StepTiming> {
    let mut stepper = TrainStepper::new(spec, batch_size, choice, device)?;
    let reset = reset_peak_rss();
    let mut times = Vec::new();
    for step in 0..warmup + steps {
        let ms = stepper.step()?;
        if step >= warmup {
            times.push(ms);
            cardinal_kernels::profile::end_step();
        }
        if step + 1 == warmup && cardinal_kernels::profile::enabled() {
            // The profile covers the timed steps only: the first steps' page faults would
            // inflate the per-call times of whatever allocates first.
            cardinal_kernels::profile::reset();
        }
        on_step();
    }
    let ms_per_step = median(times);
    if cardinal_kernels::profile::enabled() {
        eprint!("{}", cardinal_kernels::profile::take_report());
    }
    Ok(StepTiming {
        ms_per_step,
        images_per_sec: stepper.images_per_sec(ms_per_step),
        peak_rss_bytes: if reset { peak_rss_bytes() } else { None },
    })
}

/// Median wall time (ms) of forward (train mode), cross-entropy and backward of `spec` on
/// one real batch, after one warm-up.
pub fn forward_backward_ms(spec: &NetSpec, batch: &Batch, repeats: usize) -> Result<f64> {
    let state = init_weights(spec, 0, &Device::Cpu)?;
    let net = ResNet::new(spec, &state)?;
    net.check_input(&batch.images)
        .context("the model does not take this dataset's images")?;
    let step = || -> Result<f64> {
        let start = Instant::now();
        let logits = net.forward_t(&batch.images, true)?;
        let loss = cardinal_train::run::cross_entropy(&logits, &batch.labels)?;
        std::hint::black_box(loss.backward()?);
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    step()?;
    let times = (0..repeats).map(|_| step()).collect::<Result<Vec<_>>>()?;
    Ok(median(times))
}

/// Images per second of one pass over the first `batches` batches of `epoch`, including
/// loading and augmentation.
pub fn loader_images_per_sec(loader: &Loader, epoch: u64, batches: usize) -> Result<f64> {
    let start = Instant::now();
    let mut images = 0;
    for batch in loader.epoch(epoch).take(batches) {
        images += std::hint::black_box(batch?).labels.dim(0)?;
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

/// One convolution layer: batch, channels in and out, square side, kernel, stride, groups.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub side: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
}

/// Median forward and forward+backward milliseconds of one convolution layer, in
/// cardinal's kernel and in candle's conv2d (whose backward fails on some shapes: None).
#[derive(Debug, Clone, Copy)]
pub struct ConvTiming {
    pub cardinal_forward_ms: f64,
    pub cardinal_train_ms: f64,
    pub candle_forward_ms: f64,
    pub candle_train_ms: Option<f64>,
}

pub fn conv(shape: ConvShape, repeats: usize) -> Result<ConvTiming> {
    let ConvShape {
        batch,
        in_channels,
        out_channels,
        side,
        kernel,
        stride,
        groups,
    } = shape;
    // cardinal's kernel takes channels-last activations, candle's conv2d channels-first:
    // the same values in each layout.
    let x_nchw = Tensor::randn(0f32, 1.0, (batch, in_channels, side, side), &Device::Cpu)?;
    let x_nhwc = x_nchw.permute((0, 2, 3, 1))?.contiguous()?;
    let x = candle_core::Var::from_tensor(&x_nhwc)?;
    let x_ref = candle_core::Var::from_tensor(&x_nchw)?;
    let w = candle_core::Var::from_tensor(&Tensor::randn(
        0f32,
        0.1,
        (out_channels, in_channels / groups, kernel, kernel),
        &Device::Cpu,
    )?)?;
    let padding = kernel / 2;
    let ours = |train: bool| {
        let options = cardinal_kernels::ConvOptions::new(stride, padding, groups);
        let y = cardinal_kernels::conv2d(x.as_tensor(), w.as_tensor(), options)?;
        if train {
            y.sum_all()?.backward()?;
        }
        Ok(())
    };
    let theirs = |train: bool| {
        let y = x_ref
            .as_tensor()
            .conv2d(w.as_tensor(), padding, stride, 1, groups)?;
        if train {
            y.sum_all()?.backward()?;
        }
        Ok(())
    };
    Ok(ConvTiming {
        cardinal_forward_ms: time_ms(repeats, || ours(false)).context("cardinal conv failed")?,
        cardinal_train_ms: time_ms(repeats, || ours(true))
            .context("cardinal conv backward failed")?,
        candle_forward_ms: time_ms(repeats, || theirs(false)).context("candle conv failed")?,
        candle_train_ms: time_ms(repeats, || theirs(true)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_train_step_timing_is_positive_and_consistent() {
        let mut spec = cardinal_zoo::preset("cpu_resnet11").unwrap();
        spec.input_size = 8;
        let mut calls = 0;
        let t = train_steps(
            &spec,
            4,
            (Kernels::Cardinal, Precision::F32),
            &Device::Cpu,
            (1, 2),
            &mut || calls += 1,
        )
        .unwrap();
        assert_eq!(calls, 3);
        assert!(t.ms_per_step > 0.0);
        assert!((t.images_per_sec - 4.0 / t.ms_per_step * 1e3).abs() < 1e-9);
    }
}
