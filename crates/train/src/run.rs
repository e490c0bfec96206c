//! One training run: `runs/<experiment>/<run-id>/` with the resolved config, meta, metrics,
//! an atomic checkpoint per epoch and a log. A run killed at any point resumes from its last
//! checkpoint and ends with exactly the metrics of an uninterrupted run, because every
//! random draw is a function of (seed, epoch, sample index) and the checkpoint holds
//! everything else (weights, BN statistics, momentum buffers, epoch, metrics).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use cardinal_data::{Dataset, Loader, LoaderConfig, Split, Transform};
use cardinal_zoo::{init_weights, ResNet};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::checkpoint::{load_checkpoint_on, save_checkpoint, Checkpoint};
use crate::evaluate::{evaluate, Totals};
use crate::optim::Sgd;
use crate::provenance::{isa_label, write_meta};
use crate::schedule::Schedule;
use crate::status::{log_line, write_status};
use crate::twin::{copy_twin, finished_twin, Machine};

pub use crate::evaluate::{cross_entropy, topk_mistakes};
pub use crate::provenance::{cpu_model, threads, utc_now};
pub use crate::run_spec::RunSpec;
pub use crate::status::{State, Status};

pub use cardinal_results::MetricRow;
use cardinal_results::INTERIM;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub dir: PathBuf,
    pub state: State,
    /// The run was already finished (or diverged), was copied from another experiment's
    /// finished run of the same configuration, or another process holds it: it was not
    /// trained here.
    pub skipped: bool,
    pub rows: Vec<MetricRow>,
    /// The process training this run elsewhere, when its lock was held.
    pub held_by: Option<String>,
}

impl Outcome {
    /// The last test row (final test error).
    pub fn final_test(&self) -> Option<&MetricRow> {
        self.rows.iter().rev().find(|r| r.split == "test")
    }
}

pub use crate::files::write_atomic;
use crate::files::{remove_stale_temp_files, Locked, RunLock};

/// The rows of a metrics file (see `cardinal_results`).
pub fn read_metrics_csv(path: &Path) -> Result<Vec<MetricRow>> {
    Ok(cardinal_results::read_metrics(path)?)
}

pub(crate) fn write_metrics(dir: &Path, rows: &[MetricRow]) -> Result<()> {
    Ok(cardinal_results::write_metrics(
        &dir.join("metrics.csv"),
        rows,
    )?)
}

/// Stops this process for good at the point named by `CARDINAL_PAUSE_AT` (e.g. `epoch 2
/// step 5`, before that step; `epoch 2 checkpoint`, between epoch 2's checkpoint and its
/// metrics), after saying so on stderr, so that a test can SIGKILL it exactly there and
/// check that the run resumes to the same result. Unset, it costs one comparison.
fn pause_point(point: impl FnOnce() -> String) {
    static PAUSE_AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(target) = PAUSE_AT.get_or_init(|| std::env::var("CARDINAL_PAUSE_AT").ok()) else {
        return;
    };
    let point = point();
    if *target == point {
        eprintln!("paused at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Refuses a model and data that do not fit each other, naming both sides, before any
/// training: otherwise a class count below the labels fails deep inside the loss, and an
/// input size other than the images' trains on the images and records the wrong MACs.
pub fn check_fits(spec: &RunSpec, dataset: &Dataset) -> Result<()> {
    let net = &spec.spec;
    let shape = &dataset.shape;
    let name = &dataset.name;
    if net.classes != dataset.classes.len() {
        bail!(
            "`model.classes` is {} but {name} has {} classes: set model.classes={}",
            net.classes,
            dataset.classes.len(),
            dataset.classes.len()
        );
    }
    if net.in_channels != shape.channels {
        bail!(
            "`model.in_channels` is {} but {name}'s images have {} channels: set model.in_channels={}",
            net.in_channels,
            shape.channels,
            shape.channels
        );
    }
    if shape.height != shape.width || net.input_size != shape.height {
        bail!(
            "`model.input_size` is {} but {name}'s images are {}x{}: set model.input_size={}",
            net.input_size,
            shape.height,
            shape.width,
            shape.height
        );
    }
    for (key, asked, split, have) in [
        (
            "train.train_images",
            spec.train.train_images,
            "training",
            dataset.train.len(),
        ),
        (
            "train.test_images",
            spec.train.test_images,
            "test",
            dataset.test.len(),
        ),
    ] {
        if let Some(asked) = asked.filter(|&n| n > have) {
            bail!(
                "`{key}` is {asked} but {name} has {have} {split} images: use at most {have}, or leave it unset for all"
            );
        }
        if asked == Some(0) {
            bail!("`{key}` is 0: a run needs at least one {split} image");
        }
    }
    Ok(())
}

/// Where and how runs are written and shown.
pub struct RunContext<'a> {
    pub runs_dir: PathBuf,
    pub progress: &'a MultiProgress,
    /// Stop (resumably) after this many epochs in this session: a time budget.
    pub stop_after_epochs: Option<usize>,
    /// Where the model trains; batches are built on the CPU and moved there.
    pub device: Device,
}

/// Takes the run directory for this process: its lock, unless another process holds it,
/// and only while the run is unfinished. Otherwise the outcome to report instead.
fn claim(
    dir: &Path,
    run_id: &str,
    ctx: &RunContext,
) -> Result<std::result::Result<RunLock, Outcome>> {
    let skipped = |state: State, held_by: Option<String>| Outcome {
        run_id: run_id.to_string(),
        dir: dir.to_path_buf(),
        state,
        skipped: true,
        rows: read_metrics_csv(&dir.join("metrics.csv")).unwrap_or_default(),
        held_by,
    };
    let lock = match RunLock::acquire(dir)? {
        Locked::Acquired(lock) => lock,
        Locked::HeldBy(holder) => {
            let message = format!("run {run_id} is being trained by {holder}: skipped here");
            ctx.progress.suspend(|| eprintln!("{message}"));
            tracing::warn!("{message}");
            return Ok(Err(skipped(State::Running, Some(holder))));
        }
    };
    if let Some(status) = Status::read(dir).filter(|s| s.state != State::Running) {
        return Ok(Err(skipped(status.state, None)));
    }
    for stale in remove_stale_temp_files(dir)? {
        log_line(
            dir,
            &format!("removed {stale}, left by an interrupted write"),
        );
    }
    Ok(Ok(lock))
}

/// The run's training loader (its seeded subset, shuffled and augmented by the seed) and
/// test loader (in order, not augmented).
fn loaders(spec: &RunSpec, dataset: &Dataset) -> Result<(Loader, Loader)> {
    let subset = |split: &Split, n: Option<usize>| match n {
        Some(n) => split.sample(n, spec.dataset.validation_seed),
        None => split.clone(),
    };
    let train_split = subset(&dataset.train, spec.train.train_images);
    let test_split = subset(&dataset.test, spec.train.test_images);
    let mut loader_config = LoaderConfig::new(spec.train.batch_size);
    loader_config.seed = spec.seed;
    loader_config.drop_last = train_split.len() > spec.train.batch_size;
    let train_loader = Loader::new(
        train_split,
        Transform::train(dataset, &spec.dataset.augment),
        loader_config,
    )?;
    let mut eval_config = LoaderConfig::new(spec.train.eval_batch_size);
    eval_config.shuffle = false;
    let test_loader = Loader::new(test_split, Transform::eval(dataset), eval_config)?;
    Ok((train_loader, test_loader))
}

/// The model, optimizer, epoch count and metrics a run continues from: its checkpoint's,
/// or freshly initialised from the seed.
struct Restored {
    net: ResNet,
    sgd: Sgd,
    start_epoch: usize,
    rows: Vec<MetricRow>,
}

fn restore(spec: &RunSpec, dir: &Path, device: &Device) -> Result<Restored> {
    let checkpoint_path = dir.join("checkpoint.safetensors");
    let resumed = if checkpoint_path.exists() {
        Some(load_checkpoint_on(&checkpoint_path, device)?)
    } else {
        None
    };
    let state = match &resumed {
        Some(c) => c.state.clone(),
        None => init_weights(&spec.spec, spec.seed, device)?,
    };
    let mut net = ResNet::new(&spec.spec, &state)?;
    net.set_precision(spec.train.precision);
    let mut sgd = Sgd::new(
        net.params().trainable(),
        spec.train.momentum,
        spec.train.nesterov,
        spec.train.weight_decay,
        spec.train.decay_bn_and_bias,
    );
    let (start_epoch, rows) = match resumed {
        Some(c) => {
            sgd.load_buffers(c.momentum)?;
            log_line(dir, &format!("resumed after epoch {}", c.epochs_done));
            (c.epochs_done, c.rows)
        }
        None => {
            log_line(dir, &format!("started run {}", spec.run_id()));
            (0, Vec::new())
        }
    };
    Ok(Restored {
        net,
        sgd,
        start_epoch,
        rows,
    })
}

/// Trains one run to the end, resuming from its checkpoint if one exists; a finished or
/// diverged run is not trained again.
pub fn train(spec: &RunSpec, ctx: &RunContext) -> Result<Outcome> {
    let run_id = spec.run_id();
    let dir = spec.dir(&ctx.runs_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Held until this function returns: one process per run directory.
    let _lock = match claim(&dir, &run_id, ctx)? {
        Ok(lock) => lock,
        Err(skipped) => return Ok(skipped),
    };
    let config_yaml = serde_saphyr::to_string(spec).map_err(|e| anyhow!("config.yaml: {e}"))?;
    write_atomic(&dir.join("config.yaml"), config_yaml.as_bytes())?;
    if !dir.join("checkpoint.safetensors").exists() {
        let machine = Machine {
            isa: isa_label(spec).to_string(),
            threads: threads(),
        };
        if let Some(twin) = finished_twin(spec, &dir, &ctx.runs_dir, &machine) {
            let rows = copy_twin(spec, &dir, &twin)?;
            let message = format!(
                "run {run_id}: copied from {}, a finished run of the same configuration on this instruction-set path and thread count",
                twin.display()
            );
            ctx.progress.suspend(|| eprintln!("{message}"));
            tracing::info!("{message}");
            return Ok(Outcome {
                run_id,
                dir,
                state: State::Finished,
                skipped: true,
                rows,
                held_by: None,
            });
        }
    }
    let started = utc_now();
    write_meta(&dir, spec, &started, None)?;

    let device = ctx.device.clone();
    let dataset = Dataset::open(&spec.dataset)?;
    check_fits(spec, &dataset)?;
    let (train_loader, test_loader) = loaders(spec, &dataset)?;

    let Restored {
        net,
        mut sgd,
        start_epoch,
        mut rows,
    } = restore(spec, &dir, &device)?;
    // Rewritten from the checkpoint, the source of truth, in case a crash fell between the
    // checkpoint and the metrics and status files.
    write_metrics(&dir, &rows)?;
    write_status(&dir, State::Running, start_epoch, spec.train.epochs, None)?;
    let steps_per_epoch = train_loader.batches_per_epoch();
    let schedule = Schedule::new(&spec.train, steps_per_epoch);
    let epochs = spec.train.epochs;
    let mut wall = rows.last().map_or(0.0, |r| r.wall_seconds);

    let bar = ctx.progress.add(
        ProgressBar::new((epochs * steps_per_epoch) as u64).with_style(
            ProgressStyle::with_template(
                "{prefix:>28} {bar:25.cyan/blue} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        ),
    );
    bar.set_prefix(format!("{} s{}", spec.model, spec.seed));
    bar.set_position((start_epoch * steps_per_epoch) as u64);

    let row =
        |(epoch, progress): (usize, f64), split: &str, t: &Totals, lr: f64, ips: f64, wall: f64| {
            MetricRow {
                experiment: spec.experiment.clone(),
                run_id: run_id.clone(),
                model: spec.model.clone(),
                cardinality: spec.spec.cardinality,
                bottleneck_width: spec.spec.bottleneck_width,
                form: format!("{:?}", spec.spec.form),
                params: spec.params,
                macs: spec.macs,
                seed: spec.seed,
                epoch,
                split: split.to_string(),
                loss: t.loss / t.images.max(1) as f64,
                top1_err: t.top1 as f64 / t.images.max(1) as f64,
                top5_err: t.top5 as f64 / t.images.max(1) as f64,
                lr,
                images_per_sec: ips,
                wall_seconds: wall,
                progress,
                precision: spec.train.precision.to_string(),
            }
        };
    // Steps between the evaluations within an epoch (train.eval_every); the epoch's end is
    // evaluated anyway.
    let interim_steps = spec
        .train
        .eval_every
        .map(|e| ((e * steps_per_epoch as f64).round() as usize).max(1));

    let last_epoch = ctx
        .stop_after_epochs
        .map_or(epochs, |n| (start_epoch + n).min(epochs));
    for epoch in start_epoch..last_epoch {
        let started_epoch = Instant::now();
        let mut totals = Totals::default();
        let mut lr = 0.0;
        let mut interim_seconds = 0.0;
        for (b, batch) in train_loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let (images, labels) = (
                batch.images.to_device(&device)?,
                batch.labels.to_device(&device)?,
            );
            pause_point(|| format!("epoch {} step {b}", epoch + 1));
            lr = schedule.lr(epoch * steps_per_epoch + b);
            let logits = net.forward_t(&images, true)?;
            let loss = cross_entropy(&logits, &labels)?;
            let value: f32 = loss.to_scalar()?;
            if !value.is_finite() {
                let message = format!("loss {value} at epoch {epoch}, step {b}: the run diverged");
                log_line(&dir, &message);
                tracing::warn!(run = %run_id, "{message}");
                write_status(&dir, State::Diverged, epoch, epochs, Some(message))?;
                write_meta(&dir, spec, &started, Some(&utc_now()))?;
                bar.abandon_with_message("diverged");
                return Ok(Outcome {
                    run_id,
                    dir,
                    state: State::Diverged,
                    skipped: false,
                    rows,
                    held_by: None,
                });
            }
            let grads = loss.backward()?;
            sgd.step(&grads, lr)?;
            totals.add(&logits.detach(), &labels, value)?;
            if let Some(every) = interim_steps {
                if (b + 1) % every == 0 && b + 1 < steps_per_epoch {
                    let (test, seconds) = evaluate(&net, &test_loader, &device)?;
                    let progress = epoch as f64 + (b + 1) as f64 / steps_per_epoch as f64;
                    let elapsed = wall + started_epoch.elapsed().as_secs_f64();
                    let ips = test.images as f64 / seconds;
                    interim_seconds += seconds;
                    rows.push(row((epoch + 1, progress), INTERIM, &test, lr, ips, elapsed));
                }
            }
            bar.inc(1);
            bar.set_message(format!(
                "epoch {}/{epochs} loss {:.3}",
                epoch + 1,
                totals.loss / totals.images as f64
            ));
        }
        let train_seconds = started_epoch.elapsed().as_secs_f64() - interim_seconds;
        let (test, test_seconds) = evaluate(&net, &test_loader, &device)?;
        wall += started_epoch.elapsed().as_secs_f64();
        let done = (epoch + 1, (epoch + 1) as f64);
        let train_row = row(
            done,
            "train",
            &totals,
            lr,
            totals.images as f64 / train_seconds,
            wall,
        );
        let test_row = row(
            done,
            "test",
            &test,
            lr,
            test.images as f64 / test_seconds,
            wall,
        );
        let line = format!(
            "epoch {}/{epochs}: train loss {:.4} top-1 err {:.2}%, test loss {:.4} top-1 err {:.2}% top-5 err {:.2}%, {:.0} img/s",
            epoch + 1,
            train_row.loss,
            100.0 * train_row.top1_err,
            test_row.loss,
            100.0 * test_row.top1_err,
            100.0 * test_row.top5_err,
            train_row.images_per_sec
        );
        rows.push(train_row);
        rows.push(test_row);
        save_checkpoint(
            &dir,
            &Checkpoint {
                epochs_done: epoch + 1,
                state: net.params().to_state()?,
                momentum: sgd.buffers(),
                rows: rows.clone(),
            },
        )?;
        pause_point(|| format!("epoch {} checkpoint", epoch + 1));
        write_metrics(&dir, &rows)?;
        write_status(&dir, State::Running, epoch + 1, epochs, None)?;
        log_line(&dir, &line);
        tracing::info!(run = %run_id, "{line}");
    }
    if last_epoch < epochs {
        bar.abandon_with_message(format!("stopped after epoch {last_epoch}, resumable"));
        return Ok(Outcome {
            run_id,
            dir,
            state: State::Running,
            skipped: false,
            rows,
            held_by: None,
        });
    }
    write_status(&dir, State::Finished, epochs, epochs, None)?;
    write_meta(&dir, spec, &started, Some(&utc_now()))?;
    log_line(&dir, "finished");
    bar.finish_and_clear();
    Ok(Outcome {
        run_id,
        dir,
        state: State::Finished,
        skipped: false,
        rows,
        held_by: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paired seeds: two cells that differ only in the network (here C and d) get the same
    /// batches, augmentation included, in the same order, for the same seed; another seed
    /// gets another order.
    #[test]
    fn one_seed_gives_every_cell_the_same_data() {
        let tmp = tempfile::tempdir().unwrap();
        cardinal_data::synthetic::write_squares(&tmp.path().join("mnist"), 96, 32).unwrap();
        let text = format!(
            "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: 1\n  batch_size: 16\n  lr: 0.1\nsweep:\n  cardinality: {{values: [1, 4]}}\nseeds: [0, 1]\n",
            tmp.path().display()
        );
        let (e, _) = crate::experiment::parse(&text)
            .unwrap()
            .resolve(None, &[])
            .unwrap();
        let cells = e.cells("pairs").unwrap();
        let batches = |spec: &RunSpec| -> Vec<Vec<f32>> {
            let dataset = Dataset::open(&spec.dataset).unwrap();
            let (train, _) = loaders(spec, &dataset).unwrap();
            train
                .epoch(1)
                .map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let (c1s0, c4s0, c1s1) = (&cells[0], &cells[1], &cells[2]);
        assert_eq!((c1s0.spec.cardinality, c4s0.spec.cardinality), (1, 4));
        assert_eq!((c1s0.seed, c1s1.seed, c4s0.seed), (0, 1, 0));
        assert_eq!(batches(c1s0), batches(c4s0));
        assert_ne!(batches(c1s0), batches(c1s1));
        // The same initialisation stream: the stem, drawn first and shaped alike in both
        // networks, starts identical.
        let stem = |spec: &RunSpec| -> Vec<f32> {
            let state = cardinal_zoo::init_weights(&spec.spec, spec.seed, &Device::Cpu).unwrap();
            state["conv1.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(stem(c1s0), stem(c4s0));
        assert_ne!(stem(c1s0), stem(c1s1));
    }
}
