//! Batches of a split as candle tensors: a seeded permutation per epoch, augmentation, and a
//! background thread that keeps up to `prefetch` batches ready so the training step never
//! waits on data.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::LoaderConfig;
use crate::dataset::{Split, Storage};
use crate::error::{DataError, Result};
use crate::transform::Transform;

/// One batch: images [N, C, H, W] f32 and labels [N] u32 on the CPU, and the sample index
/// of each row.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

#[derive(Clone)]
pub struct Loader {
    split: Split,
    transform: Arc<Transform>,
    config: LoaderConfig,
}

impl Loader {
    pub fn new(split: Split, transform: Transform, config: LoaderConfig) -> Result<Loader> {
        if config.batch_size == 0 {
            return Err(DataError::config("batch_size", "must be at least 1"));
        }
        if split.is_empty() {
            return Err(DataError::config("split", "the split has no images"));
        }
        Ok(Loader {
            split,
            transform: Arc::new(transform),
            config,
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn split(&self) -> &Split {
        &self.split
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Images seen per epoch (fewer than the split when the last partial batch is dropped).
    pub fn images_per_epoch(&self) -> usize {
        if self.config.drop_last {
            self.batches_per_epoch() * self.config.batch_size
        } else {
            self.split.len()
        }
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.split.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order in which an epoch visits the split's positions.
    pub fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.split.len() as u32).collect();
        if self.config.shuffle {
            // Seeded by (seed, epoch) alone: the order of epoch k does not depend on how
            // many epochs ran before it in this process.
            let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
        }
        order
    }

    /// Builds batch `batch` of `epoch` from an epoch order, in the calling thread.
    pub fn assemble(&self, order: &[u32], epoch: u64, batch: usize) -> Result<Batch> {
        let b = self.config.batch_size;
        let positions = &order[batch * b..((batch + 1) * b).min(order.len())];
        let shape = self.transform.shape;
        let per_image = shape.len();
        let mut pixels = vec![0f32; positions.len() * per_image];
        let seed = self.config.seed;
        let work = |(out, &position): (&mut [f32], &u32)| {
            self.transform
                .apply(&self.split, position as usize, seed, epoch, out)
        };
        match self.split.samples.storage {
            // Decoding a JPEG costs milliseconds: spread a batch over the cores.
            Storage::Files { .. } => pixels
                .par_chunks_mut(per_image)
                .zip(positions.par_iter())
                .try_for_each(work)?,
            // In-memory images take microseconds: one thread is plenty and leaves the other
            // cores to the training step.
            Storage::Dense { .. } => pixels
                .chunks_mut(per_image)
                .zip(positions.iter())
                .try_for_each(work)?,
        }
        let labels: Vec<u32> = positions
            .iter()
            .map(|&p| self.split.label(p as usize))
            .collect();
        let indices = positions
            .iter()
            .map(|&p| self.split.sample_index(p as usize))
            .collect();
        let n = positions.len();
        Ok(Batch {
            images: Tensor::from_vec(
                pixels,
                (n, shape.channels, shape.height, shape.width),
                &Device::Cpu,
            )?,
            labels: Tensor::from_vec(labels, n, &Device::Cpu)?,
            indices,
        })
    }

    /// Batch `batch` of `epoch`, built synchronously.
    pub fn batch(&self, epoch: u64, batch: usize) -> Result<Batch> {
        self.assemble(&self.order(epoch), epoch, batch)
    }

    /// The batches of an epoch, prefetched in the background when `prefetch` > 0.
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of an epoch from batch `start` on (resuming inside an epoch).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Batches {
        let order = Arc::new(self.order(epoch));
        let count = self.batches_per_epoch();
        if self.config.prefetch == 0 {
            return Batches {
                inner: Inner::Sync {
                    loader: self.clone(),
                    order,
                    epoch,
                    next: start,
                    count,
                },
            };
        }
        let (sender, receiver) = sync_channel(self.config.prefetch);
        let loader = self.clone();
        let worker = std::thread::Builder::new()
            .name("cardinal-loader".into())
            .spawn(move || {
                for batch in start..count {
                    let result = loader.assemble(&order, epoch, batch);
                    let failed = result.is_err();
                    // The receiver is gone when the consumer stopped early: stop too.
                    if sender.send(result).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawning the loader thread");
        Batches {
            inner: Inner::Prefetch {
                receiver: Some(receiver),
                worker: Some(worker),
            },
        }
    }
}

/// Iterator over the batches of one epoch.
pub struct Batches {
    inner: Inner,
}

enum Inner {
    Sync {
        loader: Loader,
        order: Arc<Vec<u32>>,
        epoch: u64,
        next: usize,
        count: usize,
    },
    Prefetch {
        receiver: Option<Receiver<Result<Batch>>>,
        worker: Option<JoinHandle<()>>,
    },
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match &mut self.inner {
            Inner::Sync {
                loader,
                order,
                epoch,
                next,
                count,
            } => {
                if *next >= *count {
                    return None;
                }
                *next += 1;
                Some(loader.assemble(order, *epoch, *next - 1))
            }
            Inner::Prefetch { receiver, .. } => receiver.as_ref()?.recv().ok(),
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Inner::Prefetch { receiver, worker } = &mut self.inner {
            // Closing the channel first unblocks a worker waiting to send.
            drop(receiver.take());
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
    }
}
