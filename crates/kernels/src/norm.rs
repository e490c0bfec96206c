//! Batch norm on the CPU as fused custom ops with backward passes.
//!
//! candle-nn's `BatchNorm` is a chain of about ten tensor ops (a transpose to channels-first,
//! a copy, single-threaded reductions, broadcast ops, a transpose back that leaves the
//! output strided), each a full pass over the activation, and its backward doubles that.
//! Here a training-mode BN is one pass for the statistics and one for the output, its
//! backward one pass for the two channel sums and one for the input gradient, all split
//! over channels or planes across threads, with an optional ReLU folded in. The model uses
//! them on the CPU; candle-nn's `BatchNorm` stays the reference (see the tests) and serves
//! other devices.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::cpu::{
    contiguous, cpu_slice, float_dispatch, masked, par_filled, relu_if, storage, vectorized,
    write_from,
};

/// Per-channel statistics of one training batch: saved by the forward for the backward and
/// for the running-statistics update.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Vec<f64>,
    /// Biased (divided by the count), as used to normalize.
    pub var: Vec<f64>,
    /// Values per channel (N * H * W): the unbiased variance is var * count / (count - 1).
    pub count: usize,
    invstd: Vec<f64>,
}

type SavedStats = Arc<Mutex<Option<BatchStats>>>;

/// Training-mode BN of x [N, C, H, W] with weight and bias [C], ReLU optional.
#[derive(Debug, Clone)]
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    saved: SavedStats,
}

/// y = x * scale[c] + shift[c], ReLU optional: evaluation-mode BN once the running
/// statistics are folded into scale and shift.
#[derive(Debug, Clone, Copy)]
struct ChannelAffine {
    relu: bool,
}

fn planes(layout: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let dims = layout.dims();
    if dims.len() < 2 {
        candle_core::bail!("{op}: expected [N, C, ...], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Per-channel pairs of sums: `f(channel, start)` sums over one plane (the `hw` values
/// from `start`), and the planes of a channel are added in image order. Channels run in
/// parallel; each channel's order is fixed, so the sums are reproducible.
#[inline(always)]
fn per_channel<F>((n, c, hw): (usize, usize, usize), f: F) -> Vec<(f64, f64)>
where
    F: Fn(usize, usize) -> (f64, f64) + Sync,
{
    (0..c)
        .into_par_iter()
        .map(|ch| {
            vectorized(|| {
                let mut acc = (0.0, 0.0);
                for img in 0..n {
                    let (a, b) = f(ch, (img * c + ch) * hw);
                    acc.0 += a;
                    acc.1 += b;
                }
                acc
            })
        })
        .collect()
}

/// Lanes of the plane sums: one AVX-512 register of f32, so the loop fills whole registers.
const LANES: usize = 16;
/// Values a lane adds in the input's own precision before its partial sum joins the f64
/// total: short enough that f32 rounding stays at a few ulps, long enough that the loop
/// runs at the speed of the input dtype rather than converting every value to f64.
const LANE_BLOCK: usize = 8;

/// Two sums of `term` over the positions of one plane, whose values at a position are read
/// from the `K` equal-length `inputs`. Independent lanes let the loop vectorize (a single
/// running sum would serialize on the add's latency); lanes and blocks are combined in a
/// fixed order, so the result does not depend on scheduling.
#[inline(always)]
fn plane_sums<T: WithDType, const K: usize>(
    inputs: [&[T]; K],
    term: impl Fn([T; K]) -> (T, T),
) -> (f64, f64) {
    let len = inputs[0].len();
    assert!(
        inputs.iter().all(|s| s.len() == len),
        "plane_sums: unequal inputs"
    );
    let (mut total_a, mut total_b) = (0f64, 0f64);
    let whole = len / LANES * LANES;
    let mut start = 0;
    while start < whole {
        let end = (start + LANE_BLOCK * LANES).min(whole);
        let (mut a, mut b) = ([T::zero(); LANES], [T::zero(); LANES]);
        for i in (start..end).step_by(LANES) {
            let chunks: [&[T; LANES]; K] = std::array::from_fn(|k| {
                inputs[k][i..i + LANES]
                    .try_into()
                    .expect("a chunk of LANES values")
            });
            for lane in 0..LANES {
                let (p, q) = term(std::array::from_fn(|k| chunks[k][lane]));
                a[lane] += p;
                b[lane] += q;
            }
        }
        for lane in 0..LANES {
            total_a += a[lane].to_f64();
            total_b += b[lane].to_f64();
        }
        start = end;
    }
    // One index reads the same position of all K inputs.
    #[allow(clippy::needless_range_loop)]
    for i in whole..len {
        let (p, q) = term(std::array::from_fn(|k| inputs[k][i]));
        total_a += p.to_f64();
        total_b += q.to_f64();
    }
    (total_a, total_b)
}

fn train_forward<T: WithDType>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    dims: (usize, usize, usize),
    op: &BatchNormTrain,
) -> (Vec<T>, BatchStats) {
    let (n, c, hw) = dims;
    let count = n * hw;
    // One pass, shifted by a value of the channel so that the sum of squares does not
    // cancel catastrophically when the mean is large against the spread.
    let shift: Vec<T> = (0..c).map(|ch| x[ch * hw]).collect();
    let sums = per_channel(dims, |ch, start| {
        let k = shift[ch];
        plane_sums([&x[start..start + hw]], |[v]| ((v - k), (v - k) * (v - k)))
    });
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    for (ch, &(s, ss)) in sums.iter().enumerate() {
        let centred = s / count as f64;
        mean.push(shift[ch].to_f64() + centred);
        // Clamp rounding below zero, but keep a NaN (from an infinite input) a NaN: `max`
        // would turn it into 0 and hide the divergence in the running statistics.
        let v = ss / count as f64 - centred * centred;
        var.push(if v < 0.0 { 0.0 } else { v });
    }
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + op.eps).sqrt()).collect();
    // SAFETY: every value of every plane is written.
    let out = unsafe {
        by_plane(x.len(), hw, |plane, o| {
            let ch = plane % c;
            let scale = weight[ch].to_f64() * invstd[ch];
            let offset = bias[ch].to_f64() - mean[ch] * scale;
            let (scale, offset) = (T::from_f64(scale), T::from_f64(offset));
            let values = x[plane * hw..(plane + 1) * hw].iter();
            write_from(o, values.map(|&v| relu_if(op.relu, v * scale + offset)));
        })
    };
    let stats = BatchStats {
        mean,
        var,
        count,
        invstd,
    };
    (out, stats)
}

/// Input, weight and bias gradients of training-mode BN.
fn train_backward<T: WithDType>(
    x: &[T],
    y: &[T],
    dy: &[T],
    weight: &[T],
    dims: (usize, usize, usize),
    relu: bool,
    stats: &BatchStats,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (_, c, hw) = dims;
    let m = stats.count as f64;
    let sums = per_channel(dims, |ch, start| {
        let range = start..start + hw;
        let mean = T::from_f64(stats.mean[ch]);
        plane_sums(
            [&dy[range.clone()], &y[range.clone()], &x[range]],
            |[g, y, x]| {
                let g = masked(relu, y, g);
                (g, g * (x - mean))
            },
        )
    });
    // dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)), folded per channel into
    // dx = g * p + x * q + r so that the pass over the planes is a multiply-add.
    let coefficients: Vec<(T, T, T)> = (0..c)
        .map(|ch| {
            let (sum_g, sum_g_xmu) = sums[ch];
            let invstd = stats.invstd[ch];
            let k = weight[ch].to_f64() * invstd;
            let a = sum_g / m;
            let b = sum_g_xmu * invstd * invstd / m;
            (
                T::from_f64(k),
                T::from_f64(-k * b),
                T::from_f64(k * (b * stats.mean[ch] - a)),
            )
        })
        .collect();
    // SAFETY: every value of every plane is written.
    let dx = unsafe {
        by_plane(x.len(), hw, |plane, out| {
            let (p, q, r) = coefficients[plane % c];
            let range = plane * hw..(plane + 1) * hw;
            let values = x[range.clone()]
                .iter()
                .zip(y[range.clone()].iter().zip(&dy[range]));
            write_from(
                out,
                values.map(|(&xv, (&yv, &g))| masked(relu, yv, g) * p + xv * q + r),
            );
        })
    };
    let dweight = (0..c)
        .map(|ch| T::from_f64(sums[ch].1 * stats.invstd[ch]))
        .collect();
    let dbias = sums.iter().map(|s| T::from_f64(s.0)).collect();
    (dx, dweight, dbias)
}

fn affine_forward<T: WithDType>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    (_, c, hw): (usize, usize, usize),
    relu: bool,
) -> Vec<T> {
    // SAFETY: every value of every plane is written.
    let out = unsafe {
        by_plane(x.len(), hw, |plane, o| {
            let (s, t) = (scale[plane % c], shift[plane % c]);
            let values = x[plane * hw..(plane + 1) * hw].iter();
            write_from(o, values.map(|&v| relu_if(relu, v * s + t)));
        })
    };
    out
}

fn affine_backward<T: WithDType>(
    x: &[T],
    y: &[T],
    dy: &[T],
    scale: &[T],
    dims: (usize, usize, usize),
    relu: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (_, c, hw) = dims;
    let sums = per_channel(dims, |_, start| {
        let range = start..start + hw;
        plane_sums(
            [&dy[range.clone()], &y[range.clone()], &x[range]],
            |[g, y, x]| {
                let g = masked(relu, y, g);
                (g * x, g)
            },
        )
    });
    // SAFETY: every value of every plane is written.
    let dx = unsafe {
        by_plane(x.len(), hw, |plane, out| {
            let s = scale[plane % c];
            let range = plane * hw..(plane + 1) * hw;
            let values = y[range.clone()].iter().zip(&dy[range]);
            write_from(out, values.map(|(&yv, &g)| masked(relu, yv, g) * s));
        })
    };
    let dscale = sums.iter().map(|s| T::from_f64(s.0)).collect();
    let dshift = sums.iter().map(|s| T::from_f64(s.1)).collect();
    (dx, dscale, dshift)
}

/// A tensor of `len` values that `f(plane, values)` writes one plane (`hw` values) at a
/// time, planes in parallel.
///
/// # Safety
/// `f` must write every value of its plane (see `par_filled`).
unsafe fn by_plane<T: WithDType>(
    len: usize,
    hw: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    // SAFETY: the caller's promise, passed on.
    unsafe { par_filled(len, hw, || (), |_, plane, values| f(plane, values)) }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = planes(l1, self.name())?;
        let (out, stats) = float_dispatch!(s1.dtype(), self.name(), T => {
            let (out, stats) = train_forward::<T>(
                contiguous(s1.as_slice::<T>()?, l1, self.name())?,
                contiguous(s2.as_slice::<T>()?, l2, self.name())?,
                contiguous(s3.as_slice::<T>()?, l3, self.name())?,
                dims,
                self,
            );
            (storage(out), stats)
        });
        *self.saved.lock().expect("stats lock") = Some(stats);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .saved
            .lock()
            .expect("stats lock")
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch-norm: backward before forward".into()))?;
        let grad = grad_res.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let dims = planes(xl, self.name())?;
        let c = dims.1;
        let device = x.device();
        float_dispatch!(x.dtype(), self.name(), T => {
            let (dx, dw, db) = train_backward::<T>(
                cpu_slice(&xs, xl, self.name())?,
                cpu_slice(&ys, yl, self.name())?,
                cpu_slice(&gs, gl, self.name())?,
                cpu_slice(&ws, wl, self.name())?,
                dims,
                self.relu,
                &stats,
            );
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), device)?),
                Some(Tensor::from_vec(dw, c, device)?),
                Some(Tensor::from_vec(db, c, device)?),
            ))
        })
    }
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = planes(l1, self.name())?;
        let out = float_dispatch!(s1.dtype(), self.name(), T => storage(affine_forward::<T>(
            contiguous(s1.as_slice::<T>()?, l1, self.name())?,
            contiguous(s2.as_slice::<T>()?, l2, self.name())?,
            contiguous(s3.as_slice::<T>()?, l3, self.name())?,
            dims,
            self.relu,
        )));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ss, sl) = scale.storage_and_layout();
        let dims = planes(xl, self.name())?;
        let device = x.device();
        float_dispatch!(x.dtype(), self.name(), T => {
            let (dx, dscale, dshift) = affine_backward::<T>(
                cpu_slice(&xs, xl, self.name())?,
                cpu_slice(&ys, yl, self.name())?,
                cpu_slice(&gs, gl, self.name())?,
                cpu_slice(&ss, sl, self.name())?,
                dims,
                self.relu,
            );
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), device)?),
                Some(Tensor::from_vec(dscale, dims.1, device)?),
                Some(Tensor::from_vec(dshift, dims.1, device)?),
            ))
        })
    }
}

/// Training-mode batch norm of x [N, C, ...] (ReLU optional); returns the output and the
/// batch statistics (for the running averages).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let (n, _, hw) = check_channels(x, &[weight, bias], "batch-norm")?;
    if n * hw < 2 {
        // PyTorch refuses this too: one value per channel has no variance to normalize by.
        candle_core::bail!(
            "batch-norm: training needs more than one value per channel, got input {:?}",
            x.dims()
        );
    }
    let saved = SavedStats::default();
    let op = BatchNormTrain {
        eps,
        relu,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(weight, bias, op)?;
    let stats = saved
        .lock()
        .expect("stats lock")
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("batch-norm: no statistics".into()))?;
    Ok((y, stats))
}

/// Evaluation-mode batch norm (ReLU optional): differentiable in x, weight, bias and the
/// running statistics, since scale and shift are computed from them by tensor ops.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    check_channels(x, &[weight, bias, running_mean, running_var], "batch-norm")?;
    let scale = (weight / (running_var + eps)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    x.contiguous()?
        .apply_op3(&scale, &shift, ChannelAffine { relu })
}

/// (N, C, values per channel) of x [N, C, ...], after checking that every per-channel
/// tensor has C entries and that nothing is empty.
fn check_channels(x: &Tensor, per_channel: &[&Tensor], op: &str) -> Result<(usize, usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 || x.elem_count() == 0 {
        candle_core::bail!("{op}: expected a non-empty [N, C, ...] input, got {dims:?}");
    }
    for t in per_channel {
        if t.dims() != [dims[1]] {
            candle_core::bail!(
                "{op}: {} channels in the input {dims:?} but a parameter of shape {:?}",
                dims[1],
                t.dims()
            );
        }
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff, seeded};
    use candle_core::backprop::GradStore;
    use candle_core::{DType, Device, ModuleT, Var};

    /// Gradients of sum(out * up): a fixed random upstream gradient weights every output
    /// differently.
    fn grads(out: &Tensor, up: &Tensor) -> GradStore {
        (out * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// Seeded normal values plus `offset`.
    fn rand(shape: &[usize], dtype: DType, offset: f64, seed: u64) -> Tensor {
        (seeded(shape, dtype, seed) + offset).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        let scale = max_abs(b).max(1.0);
        let diff = max_diff(a, b);
        assert!(diff <= tol * scale, "{what}: diff {diff} (scale {scale})");
    }

    /// Values, running statistics and gradients (x, weight, bias) of both modes against
    /// candle-nn's BatchNorm followed by candle's relu, on odd shapes, a single channel,
    /// one image, and a large mean that would break a naive sum of squares.
    #[test]
    fn matches_candle_nn_batch_norm_in_both_modes() {
        let shapes: [(&[usize], f64); 5] = [
            (&[4, 3, 5, 7], 0.0),
            (&[2, 1, 9, 9], 0.5),
            (&[1, 6, 3, 3], -1.0),
            (&[3, 5, 1, 1], 0.0),
            (&[2, 4, 6, 6], 1000.0),
        ];
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-9 } else { 2e-4 };
            for (case, &(shape, offset)) in shapes.iter().enumerate() {
                let seed = 100 * case as u64;
                for relu in [false, true] {
                    for train in [true, false] {
                        let c = shape[1];
                        let what =
                            format!("{dtype:?} {shape:?} +{offset} relu={relu} train={train}");
                        let x = Var::from_tensor(&rand(shape, dtype, offset, seed)).unwrap();
                        let weight = Var::from_tensor(&rand(&[c], dtype, 1.0, seed + 1)).unwrap();
                        let bias = Var::from_tensor(&rand(&[c], dtype, 0.0, seed + 2)).unwrap();
                        let rm = rand(&[c], dtype, offset, seed + 3);
                        let rv = (rand(&[c], dtype, 0.0, seed + 4).abs().unwrap() + 0.5).unwrap();
                        let reference = candle_nn::BatchNorm::new(
                            c,
                            rm.copy().unwrap(),
                            rv.copy().unwrap(),
                            weight.as_tensor().clone(),
                            bias.as_tensor().clone(),
                            1e-5,
                        )
                        .unwrap();
                        let expected = reference.forward_t(x.as_tensor(), train).unwrap();
                        let expected = if relu {
                            expected.relu().unwrap()
                        } else {
                            expected
                        };
                        let ours = if train {
                            let (y, stats) = batch_norm_train(
                                x.as_tensor(),
                                weight.as_tensor(),
                                bias.as_tensor(),
                                1e-5,
                                relu,
                            )
                            .unwrap();
                            let mean = Tensor::new(stats.mean.as_slice(), &Device::Cpu).unwrap();
                            let updated = ((&rm.to_dtype(DType::F64).unwrap() * 0.9).unwrap()
                                + (mean * 0.1).unwrap())
                            .unwrap();
                            assert_close(
                                &updated,
                                &reference.running_mean().to_dtype(DType::F64).unwrap(),
                                tol,
                                &format!("{what} running mean"),
                            );
                            y
                        } else {
                            batch_norm_eval(
                                x.as_tensor(),
                                weight.as_tensor(),
                                bias.as_tensor(),
                                &rm,
                                &rv,
                                1e-5,
                                relu,
                            )
                            .unwrap()
                        };
                        assert_close(&ours, &expected, tol, &format!("{what} output"));
                        let up = rand(expected.dims(), dtype, 0.0, seed + 5);
                        let (g_ours, g_ref) = (grads(&ours, &up), grads(&expected, &up));
                        for (var, name) in [(&x, "x"), (&weight, "weight"), (&bias, "bias")] {
                            assert_close(
                                g_ours.get(var.as_tensor()).unwrap(),
                                g_ref.get(var.as_tensor()).unwrap(),
                                tol * 10.0,
                                &format!("{what} gradient of {name}"),
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_one_value_per_channel_and_mismatched_parameters() {
        let w = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let one = Tensor::ones((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_train(&one, &w, &w, 1e-5, false).unwrap_err();
        assert!(
            err.to_string().contains("more than one value per channel"),
            "{err}"
        );
        let x = Tensor::ones((2, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let err = batch_norm_train(&x, &w, &w, 1e-5, false).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
        let err = batch_norm_eval(&x, &w, &w, &w, &w, 1e-5, false).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
    }

    #[test]
    fn nan_inputs_stay_nan_through_the_relu() {
        let x = Tensor::new(&[[[[f32::NAN, 1.0]]], [[[2.0, 3.0]]]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32], &Device::Cpu).unwrap();
        let (y, _) = batch_norm_train(&x, &w, &b, 1e-5, true).unwrap();
        let values: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().any(|v| v.is_nan()), "{values:?}");
    }
}
