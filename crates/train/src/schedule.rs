//! Learning rate as a function of the optimizer step: linear warm-up, then cosine, step or
//! constant. A function of the step alone, so a resumed run follows the same curve.

use crate::config::{ScheduleKind, TrainConfig};

#[derive(Debug, Clone)]
pub struct Schedule {
    kind: ScheduleKind,
    peak: f64,
    min_lr: f64,
    warmup_steps: f64,
    total_steps: f64,
    steps_per_epoch: usize,
    milestones: Vec<usize>,
    gamma: f64,
}

impl Schedule {
    pub fn new(config: &TrainConfig, steps_per_epoch: usize) -> Schedule {
        Schedule {
            kind: config.schedule,
            peak: config.peak_lr(),
            min_lr: config.min_lr,
            warmup_steps: config.warmup_epochs * steps_per_epoch as f64,
            total_steps: (config.epochs * steps_per_epoch) as f64,
            steps_per_epoch,
            milestones: config.milestones.clone(),
            gamma: config.gamma,
        }
    }

    /// Rate for optimizer step `step` (0-based, counted over the whole run).
    pub fn lr(&self, step: usize) -> f64 {
        let s = step as f64;
        if s < self.warmup_steps {
            // Step k of warm-up uses (k+1)/warmup of the peak, so no step has rate 0.
            return self.peak * (s + 1.0) / self.warmup_steps;
        }
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Step => {
                let epoch = step / self.steps_per_epoch.max(1);
                let passed = self.milestones.iter().filter(|&&m| epoch >= m).count();
                self.peak * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                let span = (self.total_steps - self.warmup_steps).max(1.0);
                let progress = ((s - self.warmup_steps) / span).clamp(0.0, 1.0);
                self.min_lr
                    + (self.peak - self.min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: ScheduleKind) -> TrainConfig {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 0.1,
            lr_reference_batch: Some(256),
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            decay_bn_and_bias: false,
            schedule: kind,
            warmup_epochs: 1.0,
            min_lr: 0.0,
            milestones: vec![5, 8],
            gamma: 0.1,
            eval_batch_size: 500,
            train_images: None,
            test_images: None,
            eval_every: None,
            precision: cardinal_zoo::Precision::F32,
        }
    }

    #[test]
    fn warmup_then_cosine_to_zero() {
        let s = Schedule::new(&config(ScheduleKind::Cosine), 100);
        // Batch 128 at 0.1 per 256: peak 0.05.
        assert!((s.lr(0) - 0.05 / 100.0).abs() < 1e-15);
        assert!((s.lr(99) - 0.05).abs() < 1e-15);
        assert!((s.lr(100) - 0.05).abs() < 1e-15);
        assert!((s.lr(550) - 0.025).abs() < 1e-12, "halfway: {}", s.lr(550));
        assert!(s.lr(999) < 1e-5);
        assert!((1..1000).all(|k| k < 100 || s.lr(k) <= s.lr(k - 1)));
    }

    #[test]
    fn step_drops_at_milestones() {
        let s = Schedule::new(&config(ScheduleKind::Step), 100);
        assert!((s.lr(499) - 0.05).abs() < 1e-15);
        assert!((s.lr(500) - 0.005).abs() < 1e-15);
        assert!((s.lr(800) - 0.0005).abs() < 1e-15);
    }
}
