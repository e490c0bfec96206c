//! The ImageNet stem's 3x3 max-pool (stride 2, padding 1) as one CPU op that saves the
//! argmax of every window, so the backward pass is a scatter instead of nine strided views
//! and their comparisons in candle's graph (candle's own max-pool backward needs kernel ==
//! stride).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{contiguous, cpu_slice, float_dispatch};

/// Output side of a 3x3, stride-2, padding-1 window over `size`.
pub fn pooled_size(size: usize) -> usize {
    (size - 1) / 2 + 1
}

struct MaxPool3x3S2 {
    /// Per output element, the flat index within its input plane of the window's maximum.
    argmax: Mutex<Vec<u32>>,
}

/// One plane: the window maxima and their flat indices. Padding counts as -inf (as in
/// PyTorch), ties keep the first in scan order and a NaN wins its window.
fn pool_plane<T: WithDType + PartialOrd>(
    input: &[T],
    (h, w): (usize, usize),
    out: &mut [T],
    argmax: &mut [u32],
) {
    let out_w = pooled_size(w);
    for (o, (value, index)) in out.iter_mut().zip(argmax.iter_mut()).enumerate() {
        let (oy, ox) = (o / out_w, o % out_w);
        let (y0, x0) = ((2 * oy).saturating_sub(1), (2 * ox).saturating_sub(1));
        let (y1, x1) = ((2 * oy + 2).min(h), (2 * ox + 2).min(w));
        let mut best = y0 * w + x0;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * w + x;
                let v = input[i];
                #[allow(clippy::eq_op)] // v != v: NaN
                let nan = v != v;
                if nan || v > input[best] {
                    best = i;
                    if nan {
                        break;
                    }
                }
            }
        }
        *value = input[best];
        *index = best as u32;
    }
}

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (out_h, out_w) = (pooled_size(h), pooled_size(w));
        let plane_out = out_h * out_w;
        let mut argmax = vec![0u32; n * c * plane_out];
        let out = float_dispatch!(storage.dtype(), self.name(), T => {
            let input = contiguous(storage.as_slice::<T>()?, layout, self.name())?;
            let mut out = vec![T::from_f64(0.0); n * c * plane_out];
            out.par_chunks_mut(plane_out)
                .zip(argmax.par_chunks_mut(plane_out))
                .zip(input.par_chunks(h * w))
                .for_each(|((out, argmax), plane)| pool_plane(plane, (h, w), out, argmax));
            T::to_cpu_storage_owned(out)
        });
        *self.argmax.lock().expect("argmax lock") = argmax;
        Ok((out, Shape::from((n, c, out_h, out_w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let plane_out = pooled_size(h) * pooled_size(w);
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let argmax = self.argmax.lock().expect("argmax lock");
        if argmax.len() != n * c * plane_out {
            candle_core::bail!("{}: backward without a forward pass", self.name());
        }
        let grad_in = float_dispatch!(arg.dtype(), self.name(), T => {
            let g = cpu_slice::<T>(&gs, gl, self.name())?;
            let mut grad_in = vec![T::from_f64(0.0); n * c * h * w];
            // Windows overlap, so an input can be the maximum of several: add, per plane.
            grad_in
                .par_chunks_mut(h * w)
                .zip(g.par_chunks(plane_out))
                .zip(argmax.par_chunks(plane_out))
                .for_each(|((grad_in, g), argmax)| {
                    for (&i, &v) in argmax.iter().zip(g) {
                        grad_in[i as usize] += v;
                    }
                });
            Tensor::from_vec(grad_in, arg.shape(), arg.device())?
        });
        Ok(Some(grad_in))
    }
}

/// 3x3 max-pool, stride 2, padding 1 of x [N, C, H, W] on the CPU (f32, f64).
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max-pool: empty input {:?}", x.dims());
    }
    x.contiguous()?.apply_op1(MaxPool3x3S2 {
        argmax: Mutex::new(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;
    use candle_core::{DType, Device, Var};

    /// The reference: candle's max-pool over the input framed by a very negative value.
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
                let x = seeded(&[2, 3, h, w], dtype, (h * 100 + w) as u64);
                let ours = max_pool_3x3_s2(&x).unwrap();
                let expected = reference(&x);
                assert_eq!(ours.dims(), expected.dims(), "{h}x{w}");
                let diff = (ours - expected)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{h}x{w} {dtype:?}");
            }
        }
    }

    #[test]
    fn gradient_goes_to_each_window_maximum_and_adds_where_windows_overlap() {
        // One plane, 5x5: 0..24 row-major, except 100 at (1, 1), which lies in the windows
        // of outputs (0, 0), (0, 1), (1, 0) and (1, 1) (odd positions are shared by two
        // windows per axis).
        let mut values: Vec<f64> = (0..25).map(f64::from).collect();
        values[6] = 100.0;
        let argmax = [6usize, 6, 9, 6, 6, 19, 21, 23, 24];
        let x = Var::from_vec(values.clone(), (1, 1, 5, 5), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2(x.as_tensor()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            argmax.iter().map(|&i| values[i]).collect::<Vec<_>>()
        );
        let weights = Tensor::arange(1f64, 10., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
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
            expected[*index] += (out + 1) as f64;
        }
        assert_eq!(expected[6], 1.0 + 2.0 + 4.0 + 5.0);
        assert_eq!(g, expected);
    }

    #[test]
    fn nan_wins_its_window() {
        let mut values = vec![0f32; 16];
        values[5] = f32::NAN;
        let x = Tensor::from_vec(values, (1, 1, 4, 4), &Device::Cpu).unwrap();
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
}
