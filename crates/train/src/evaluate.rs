//! The loss and the error counts of a batch, summed over an epoch, and a pass over the
//! test split.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use cardinal_data::Loader;
use cardinal_zoo::ResNet;

/// Mean cross-entropy of logits [N, K] against labels [N] (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}

/// Counts of top-1 and top-5 mistakes in a batch: a label is within top-k when fewer than k
/// classes score strictly higher.
pub fn topk_mistakes(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let labels: Vec<u32> = labels.to_vec1()?;
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &label) in logits.iter().zip(&labels) {
        let target = row[label as usize];
        let higher = row.iter().filter(|&&v| v > target).count();
        top1 += usize::from(higher >= 1);
        top5 += usize::from(higher >= 5);
    }
    Ok((top1, top5))
}

/// Sums over the batches of an epoch: loss (weighted by batch size) and mistakes.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) loss: f64,
    pub(crate) top1: usize,
    pub(crate) top5: usize,
    pub(crate) images: usize,
}

impl Totals {
    pub(crate) fn add(&mut self, logits: &Tensor, labels: &Tensor, loss: f32) -> Result<()> {
        let (m1, m5) = topk_mistakes(logits, labels)?;
        let n = labels.dim(0)?;
        self.loss += loss as f64 * n as f64;
        self.top1 += m1;
        self.top5 += m5;
        self.images += n;
        Ok(())
    }
}

pub(crate) fn evaluate(net: &ResNet, loader: &Loader, device: &Device) -> Result<(Totals, f64)> {
    let start = Instant::now();
    let mut t = Totals::default();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let labels = batch.labels.to_device(device)?;
        let logits = net
            .forward_t(&batch.images.to_device(device)?, false)?
            .detach();
        let loss: f32 = cross_entropy(&logits, &labels)?.to_scalar()?;
        t.add(&logits, &labels, loss)?;
    }
    Ok((t, start.elapsed().as_secs_f64()))
}
