//! Pooling of channels-last activations: the ImageNet stem's 3x3 max-pool (stride 2,
//! padding 1), which saves the argmax of every window so that its backward pass is a
//! scatter (candle's own max-pool backward needs kernel == stride), and the global average
//! pool before the classifier.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{contiguous, cpu_slice, float_dispatch, vector_loops};
use crate::isa;

/// Output side of a 3x3, stride-2, padding-1 window over `size`.
pub fn pooled_size(size: usize) -> usize {
    (size - 1) / 2 + 1
}

struct MaxPool3x3S2 {
    /// Per output value, the tap (ky * 3 + kx) of its window's maximum.
    argmax: Mutex<Vec<u8>>,
}

/// Calls `visit(tap, pixel)` for each tap (ky * 3 + kx) of output pixel `o`'s window that
/// falls inside an h x w image, in scan order, with the input pixel's index y * w + x.
#[inline(always)]
fn window_taps(o: usize, (h, w): (usize, usize), mut visit: impl FnMut(u8, usize)) {
    let out_w = pooled_size(w);
    let (oy, ox) = (o / out_w, o % out_w);
    for ky in 0..3 {
        let y = (2 * oy + ky) as isize - 1;
        if y < 0 || y >= h as isize {
            continue;
        }
        for kx in 0..3 {
            let x = (2 * ox + kx) as isize - 1;
            if x < 0 || x >= w as isize {
                continue;
            }
            visit((ky * 3 + kx) as u8, y as usize * w + x as usize);
        }
    }
}

/// One image [h, w, c]: window maxima and their taps. Padding counts as -inf (as in
/// PyTorch), ties keep the first tap in scan order and a NaN wins its window.
///
/// Inlined into `vector_loops`' closure: compiled on its own, without the path's target
/// features, the channel loop would run on SSE with a store per lane.
#[inline(always)]
fn pool_image<T: WithDType + PartialOrd>(
    input: &[T],
    (h, w, c): (usize, usize, usize),
    out: &mut [T],
    argmax: &mut [u8],
) {
    for (o, (values, taps)) in out
        .chunks_exact_mut(c)
        .zip(argmax.chunks_exact_mut(c))
        .enumerate()
    {
        let mut first = true;
        window_taps(
            o,
            (h, w),
            #[inline(always)]
            |tap, pixel| {
                let row = &input[pixel * c..][..c];
                if first {
                    values.copy_from_slice(row);
                    taps.fill(tap);
                    first = false;
                    return;
                }
                // Branch-free, so that it vectorizes across the channels.
                for ((best, at), &v) in values.iter_mut().zip(taps.iter_mut()).zip(row) {
                    #[allow(clippy::eq_op)] // v != v: NaN
                    let better = (v > *best || v != v) && *best == *best;
                    *best = if better { v } else { *best };
                    *at = if better { tap } else { *at };
                }
            },
        );
    }
}

/// One image's input gradient [h, w, c]: each output gradient added to the input its tap
/// names. Per output pixel and tap, a masked add over the channels (so that it vectorizes);
/// every input still receives its gradients in the order of the outputs, as a scatter
/// would add them.
#[inline(always)]
fn unpool_image<T: WithDType>(
    grad_out: &[T],
    argmax: &[u8],
    (h, w, c): (usize, usize, usize),
    grad_in: &mut [T],
) {
    for (o, (values, taps)) in grad_out
        .chunks_exact(c)
        .zip(argmax.chunks_exact(c))
        .enumerate()
    {
        window_taps(
            o,
            (h, w),
            #[inline(always)]
            |tap, pixel| {
                let row = &mut grad_in[pixel * c..][..c];
                for ((sum, &v), &at) in row.iter_mut().zip(values).zip(taps) {
                    *sum = if at == tap { *sum + v } else { *sum };
                }
            },
        );
    }
}

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("max-pool forward");
        let (n, h, w, c) = layout.shape().dims4()?;
        let (out_h, out_w) = (pooled_size(h), pooled_size(w));
        let image_out = out_h * out_w * c;
        let mut argmax = vec![0u8; n * image_out];
        let isa = isa::selected();
        let out = float_dispatch!(storage.dtype(), self.name(), T => {
            let input = contiguous(storage.as_slice::<T>()?, layout, self.name())?;
            let mut out = vec![T::from_f64(0.0); n * image_out];
            out.par_chunks_mut(image_out)
                .zip(argmax.par_chunks_mut(image_out))
                .zip(input.par_chunks(h * w * c))
                .for_each(|((out, argmax), image)| {
                    vector_loops(isa, #[inline(always)] || pool_image(image, (h, w, c), out, argmax))
                });
            T::to_cpu_storage_owned(out)
        });
        *self.argmax.lock().expect("argmax lock") = argmax;
        Ok((out, Shape::from((n, out_h, out_w, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let _span = crate::profile::Span::new("max-pool backward");
        let (n, h, w, c) = arg.dims4()?;
        let (out_h, out_w) = (pooled_size(h), pooled_size(w));
        let image_out = out_h * out_w * c;
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let argmax = self.argmax.lock().expect("argmax lock");
        if argmax.len() != n * image_out {
            candle_core::bail!("{}: backward without a forward pass", self.name());
        }
        let isa = isa::selected();
        let grad_in = float_dispatch!(arg.dtype(), self.name(), T => {
            let g = cpu_slice::<T>(&gs, gl, self.name())?;
            let mut grad_in = vec![T::from_f64(0.0); n * h * w * c];
            // Windows overlap, so an input can be the maximum of several: add, per image.
            grad_in
                .par_chunks_mut(h * w * c)
                .zip(g.par_chunks(image_out))
                .zip(argmax.par_chunks(image_out))
                .for_each(|((grad_in, g), argmax)| {
                    vector_loops(isa, #[inline(always)] || {
                        unpool_image(g, argmax, (h, w, c), grad_in)
                    })
                });
            Tensor::from_vec(grad_in, arg.shape(), arg.device())?
        });
        Ok(Some(grad_in))
    }
}

/// 3x3 max-pool, stride 2, padding 1 of a channels-last x [N, H, W, C] on the CPU (f32,
/// f64).
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    if h == 0 || w == 0 || x.elem_count() == 0 {
        candle_core::bail!("max-pool: empty input {:?}", x.dims());
    }
    x.contiguous()?.apply_op1(MaxPool3x3S2 {
        argmax: Mutex::new(Vec::new()),
    })
}

/// The mean over the pixels of each image and channel.
struct GlobalAvgPool;

impl CustomOp1 for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "global-avg-pool-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::profile::Span::new("average pool forward");
        let (n, h, w, c) = layout.shape().dims4()?;
        let isa = isa::selected();
        let out = float_dispatch!(storage.dtype(), self.name(), T => {
            let input = contiguous(storage.as_slice::<T>()?, layout, self.name())?;
            let mut out = vec![T::from_f64(0.0); n * c];
            let inv = T::from_f64(1.0 / (h * w) as f64);
            out.par_chunks_mut(c)
                .zip(input.par_chunks(h * w * c))
                .for_each(|(mean, image)| {
                    vector_loops(isa, #[inline(always)] || {
                        for row in image.chunks_exact(c) {
                            for (m, &v) in mean.iter_mut().zip(row) {
                                *m += v;
                            }
                        }
                        for m in mean.iter_mut() {
                            *m = *m * inv;
                        }
                    })
                });
            T::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from((n, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let _span = crate::profile::Span::new("average pool backward");
        let (n, h, w, c) = arg.dims4()?;
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let isa = isa::selected();
        let grad_in = float_dispatch!(arg.dtype(), self.name(), T => {
            let g = cpu_slice::<T>(&gs, gl, self.name())?;
            let inv = T::from_f64(1.0 / (h * w) as f64);
            let mut grad_in = vec![T::from_f64(0.0); n * h * w * c];
            grad_in
                .par_chunks_mut(h * w * c)
                .zip(g.par_chunks(c))
                .for_each(|(image, gv)| {
                    vector_loops(isa, #[inline(always)] || {
                        for row in image.chunks_exact_mut(c) {
                            for (o, &v) in row.iter_mut().zip(gv) {
                                *o = v * inv;
                            }
                        }
                    })
                });
            Tensor::from_vec(grad_in, arg.shape(), arg.device())?
        });
        Ok(Some(grad_in))
    }
}

/// The global average pool of a channels-last x [N, H, W, C]: [N, C] (f32, f64 on the
/// CPU; elsewhere candle's mean).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    if h == 0 || w == 0 || x.elem_count() == 0 {
        candle_core::bail!("global average pool: empty input {:?}", x.dims());
    }
    if !x.device().is_cpu()
        || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
        return x.mean((1, 2));
    }
    x.contiguous()?.apply_op1(GlobalAvgPool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, seeded};
    use candle_core::{DType, Device, Var};

    fn nhwc(t: &Tensor) -> Tensor {
        t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }

    /// The reference: candle's max-pool over the channels-first input framed by a very
    /// negative value.
    fn reference(x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let frame = Tensor::full(-1e30, (n, c, h + 2, w + 2), &Device::Cpu)
            .unwrap()
            .to_dtype(x.dtype())
            .unwrap();
        let framed = frame
            .slice_assign(&[0..n, 0..c, 1..h + 1, 1..w + 1], x)
            .unwrap();
        framed.max_pool2d_with_stride(3, 2).unwrap()
    }

    #[test]
    fn values_match_candle_on_odd_sizes_and_negative_inputs() {
        for (h, w) in [(16, 16), (15, 17), (7, 8), (1, 2), (3, 1)] {
            for dtype in [DType::F32, DType::F64] {
                let x = seeded(&[2, 19, h, w], dtype, (h * 100 + w) as u64);
                let ours = max_pool_3x3_s2(&nhwc(&x)).unwrap();
                let expected = nhwc(&reference(&x));
                assert_eq!(ours.dims(), expected.dims(), "{h}x{w}");
                assert_eq!(max_diff(&ours, &expected), 0.0, "{h}x{w} {dtype:?}");
            }
        }
    }

    #[test]
    fn gradient_goes_to_each_window_maximum_and_adds_where_windows_overlap() {
        // One plane, 5x5: 0..24 row-major, except 100 at (1, 1), which lies in the windows
        // of outputs (0, 0), (0, 1), (1, 0) and (1, 1) (odd positions are shared by two
        // windows per axis). Two channels, the second the negated plane.
        let mut values: Vec<f64> = (0..25).map(f64::from).collect();
        values[6] = 100.0;
        let argmax = [6usize, 6, 9, 6, 6, 19, 21, 23, 24];
        let two: Vec<f64> = values.iter().flat_map(|&v| [v, -v]).collect();
        let x = Var::from_vec(two, (1, 5, 5, 2), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2(x.as_tensor()).unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let first: Vec<f64> = got.iter().step_by(2).copied().collect();
        assert_eq!(first, argmax.iter().map(|&i| values[i]).collect::<Vec<_>>());
        let weights = Tensor::arange(1f64, 19., &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 3, 2))
            .unwrap();
        let grads = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut expected = vec![0.0; 25];
        for (out, index) in argmax.iter().enumerate() {
            expected[*index] += (2 * out + 1) as f64;
        }
        let first: Vec<f64> = g.iter().step_by(2).copied().collect();
        assert_eq!(expected[6], 1.0 + 3.0 + 7.0 + 9.0);
        assert_eq!(first, expected);
    }

    #[test]
    fn nan_wins_its_window() {
        let mut values = vec![0f32; 16];
        values[5] = f32::NAN;
        let x = Tensor::from_vec(values, (1, 4, 4, 1), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            y[0].is_nan() && y[1].is_nan() && y[2].is_nan() && y[3].is_nan(),
            "{y:?}"
        );
    }

    #[test]
    fn global_average_pool_matches_the_mean_with_its_gradient() {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&seeded(&[3, 5, 7, 11], dtype, 4)).unwrap();
            let ours = global_avg_pool(x.as_tensor()).unwrap();
            let expected = x.as_tensor().mean((1, 2)).unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
            assert!(max_diff(&ours, &expected) < tol);
            let up = seeded(&[3, 11], dtype, 5);
            let g1 = (&ours * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&expected * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                max_diff(
                    g1.get(x.as_tensor()).unwrap(),
                    g2.get(x.as_tensor()).unwrap()
                ) < tol
            );
        }
    }
}
