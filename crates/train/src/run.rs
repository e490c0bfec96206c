//! One training run: `runs/<experiment>/<run-id>/` with the resolved config, meta, metrics,
//! an atomic checkpoint per epoch and a log. A run killed at any point resumes from its last
//! checkpoint and ends with exactly the metrics of an uninterrupted run, because every
//! random draw is a function of (seed, epoch, sample index) and the checkpoint holds
//! everything else (weights, BN statistics, momentum buffers, epoch, metrics).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use cardinal_data::{DataConfig, Dataset, Loader, LoaderConfig, Split, Transform};
use cardinal_zoo::{init_weights, NetSpec, ResNet};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TrainConfig;
use crate::optim::Sgd;
use crate::schedule::Schedule;

/// A fully resolved run: everything that decides its result, plus names for tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub experiment: String,
    /// Display name of the model (preset, and the solved C x d in a cardinality sweep).
    pub model: String,
    pub spec: NetSpec,
    pub dataset: DataConfig,
    pub train: TrainConfig,
    pub seed: u64,
    /// The sweep values of this cell, for tables (`cardinality`, `model.form`, ...).
    pub labels: BTreeMap<String, String>,
    pub params: u64,
    pub macs: u64,
}

impl RunSpec {
    /// Stable for a config: a readable prefix and a hash of everything that changes the
    /// result (spec, dataset, recipe, seed), so an interrupted sweep finds its runs again.
    pub fn run_id(&self) -> String {
        let key = serde_json::to_string(&(&self.spec, &self.dataset, &self.train, self.seed))
            .expect("a run spec serializes");
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect();
        let form = match self.spec.form {
            cardinal_zoo::BlockForm::C => String::new(),
            other => format!("-form{other:?}"),
        };
        format!(
            "c{}x{}d{form}-s{}-{hash}",
            self.spec.cardinality, self.spec.bottleneck_width, self.seed
        )
    }

    pub fn dir(&self, runs_dir: &Path) -> PathBuf {
        runs_dir.join(&self.experiment).join(self.run_id())
    }
}

pub use cardinal_results::MetricRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Finished,
    /// The loss became NaN or infinite; the run stopped and the sweep went on.
    Diverged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub epochs_done: usize,
    pub epochs: usize,
    #[serde(default)]
    pub message: Option<String>,
}

impl Status {
    pub fn read(dir: &Path) -> Option<Status> {
        let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub dir: PathBuf,
    pub state: State,
    /// The run was already finished (or diverged), or another process holds it, and was
    /// not trained here.
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

fn write_metrics(dir: &Path, rows: &[MetricRow]) -> Result<()> {
    Ok(cardinal_results::write_metrics(
        &dir.join("metrics.csv"),
        rows,
    )?)
}

fn write_status(
    dir: &Path,
    state: State,
    epochs_done: usize,
    epochs: usize,
    message: Option<String>,
) -> Result<()> {
    let status = Status {
        state,
        epochs_done,
        epochs,
        message,
    };
    write_atomic(
        &dir.join("status.json"),
        serde_json::to_string_pretty(&status)?.as_bytes(),
    )
}

fn log_line(dir: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log.txt"))
    {
        let _ = writeln!(f, "{} {line}", utc_now());
    }
}

/// UTC time as ISO 8601 (civil-from-days, so no date crate is needed for a timestamp).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Threads candle's CPU kernels use.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// "Intel(R) Xeon(R) Processor, 2 logical CPUs" from /proc/cpuinfo (Linux), for reports.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))?
        .split_once(':')?
        .1
        .trim()
        .to_string();
    let logical = info.lines().filter(|l| l.starts_with("processor")).count();
    Some(format!("{model}, {logical} logical CPUs"))
}

fn write_meta(dir: &Path, spec: &RunSpec, started: &str, ended: Option<&str>) -> Result<()> {
    let path = dir.join("meta.json");
    let mut meta: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({ "sessions": [] }));
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    meta["run_id"] = spec.run_id().into();
    meta["experiment"] = spec.experiment.clone().into();
    meta["cardinal_version"] = env!("CARGO_PKG_VERSION").into();
    meta["candle_version"] = env!("CARDINAL_CANDLE").into();
    meta["host"] = host.into();
    meta["threads"] = threads().into();
    if let Some(cpu) = cpu_model() {
        meta["cpu"] = cpu.into();
    }
    let sessions = meta["sessions"].as_array_mut().expect("sessions is a list");
    match sessions.last_mut() {
        Some(last) if last["start"] == started => {
            last["end"] = ended.into();
        }
        _ => sessions.push(serde_json::json!({
            "start": started,
            "end": ended,
            "git_commit": commit,
            "git_dirty": dirty,
            "build_commit": env!("CARDINAL_BUILD_COMMIT"),
        })),
    }
    write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes())
}

pub(crate) struct Checkpoint {
    pub(crate) epochs_done: usize,
    pub(crate) state: BTreeMap<String, Tensor>,
    momentum: BTreeMap<String, Tensor>,
    rows: Vec<MetricRow>,
}

fn save_checkpoint(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    // Checkpoints hold CPU tensors whatever device trained, so any device can resume them.
    for (k, t) in &checkpoint.state {
        tensors.push((
            format!("model/{k}"),
            t.to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    for (k, t) in &checkpoint.momentum {
        tensors.push((
            format!("momentum/{k}"),
            t.to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    let metadata = HashMap::from([
        (
            "epochs_done".to_string(),
            checkpoint.epochs_done.to_string(),
        ),
        ("rows".to_string(), serde_json::to_string(&checkpoint.rows)?),
        (
            "rng".to_string(),
            "every draw is a function of (seed, epoch, sample index); the seed is in config.yaml"
                .to_string(),
        ),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| anyhow!("serializing the checkpoint: {e}"))?;
    write_atomic(&dir.join("checkpoint.safetensors"), &bytes)
}

fn load_checkpoint_on(path: &Path, device: &Device) -> Result<Checkpoint> {
    let mut c = load_checkpoint(path)?;
    let move_all = |m: BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
        m.into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect()
    };
    c.state = move_all(c.state)?;
    c.momentum = move_all(c.momentum)?;
    Ok(c)
}

pub(crate) fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: damaged checkpoint ({e})", path.display()))?;
    let info = metadata
        .metadata()
        .clone()
        .ok_or_else(|| anyhow!("{}: checkpoint has no metadata", path.display()))?;
    let epochs_done: usize = info
        .get("epochs_done")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{}: checkpoint lacks epochs_done", path.display()))?;
    let rows: Vec<MetricRow> = serde_json::from_str(
        info.get("rows")
            .ok_or_else(|| anyhow!("{}: checkpoint lacks rows", path.display()))?,
    )?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut state = BTreeMap::new();
    let mut momentum = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(name) = k.strip_prefix("model/") {
            state.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("momentum/") {
            momentum.insert(name.to_string(), t);
        }
    }
    Ok(Checkpoint {
        epochs_done,
        state,
        momentum,
        rows,
    })
}

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
struct Totals {
    loss: f64,
    top1: usize,
    top5: usize,
    images: usize,
}

impl Totals {
    fn add(&mut self, logits: &Tensor, labels: &Tensor, loss: f32) -> Result<()> {
        let (m1, m5) = topk_mistakes(logits, labels)?;
        let n = labels.dim(0)?;
        self.loss += loss as f64 * n as f64;
        self.top1 += m1;
        self.top5 += m5;
        self.images += n;
        Ok(())
    }
}

fn evaluate(net: &ResNet, loader: &Loader, device: &Device) -> Result<(Totals, f64)> {
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

/// Trains one run to the end, resuming from its checkpoint if one exists; a finished or
/// diverged run is not trained again.
pub fn train(spec: &RunSpec, ctx: &RunContext) -> Result<Outcome> {
    let run_id = spec.run_id();
    let dir = spec.dir(&ctx.runs_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Held until this function returns: one process per run directory.
    let _lock = match RunLock::acquire(&dir)? {
        Locked::Acquired(lock) => lock,
        Locked::HeldBy(holder) => {
            let message = format!("run {run_id} is being trained by {holder}: skipped here");
            ctx.progress.suspend(|| eprintln!("{message}"));
            tracing::warn!("{message}");
            let rows = read_metrics_csv(&dir.join("metrics.csv")).unwrap_or_default();
            return Ok(Outcome {
                run_id,
                dir,
                state: State::Running,
                skipped: true,
                rows,
                held_by: Some(holder),
            });
        }
    };
    if let Some(status) = Status::read(&dir) {
        if status.state != State::Running {
            let rows = read_metrics_csv(&dir.join("metrics.csv")).unwrap_or_default();
            return Ok(Outcome {
                run_id,
                dir,
                state: status.state,
                skipped: true,
                rows,
                held_by: None,
            });
        }
    }
    for stale in remove_stale_temp_files(&dir)? {
        log_line(
            &dir,
            &format!("removed {stale}, left by an interrupted write"),
        );
    }
    let config_yaml = serde_saphyr::to_string(spec).map_err(|e| anyhow!("config.yaml: {e}"))?;
    write_atomic(&dir.join("config.yaml"), config_yaml.as_bytes())?;
    let started = utc_now();
    write_meta(&dir, spec, &started, None)?;

    let device = ctx.device.clone();
    let dataset = Dataset::open(&spec.dataset)?;
    check_fits(spec, &dataset)?;
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
        Transform::train(&dataset, &spec.dataset.augment),
        loader_config,
    )?;
    let mut eval_config = LoaderConfig::new(spec.train.eval_batch_size);
    eval_config.shuffle = false;
    let test_loader = Loader::new(test_split, Transform::eval(&dataset), eval_config)?;

    let checkpoint_path = dir.join("checkpoint.safetensors");
    let resumed = if checkpoint_path.exists() {
        Some(load_checkpoint_on(&checkpoint_path, &device)?)
    } else {
        None
    };
    let state = match &resumed {
        Some(c) => c.state.clone(),
        None => init_weights(&spec.spec, spec.seed, &device)?,
    };
    let net = ResNet::new(&spec.spec, &state)?;
    let mut sgd = Sgd::new(
        net.params().trainable(),
        spec.train.momentum,
        spec.train.nesterov,
        spec.train.weight_decay,
        spec.train.decay_bn_and_bias,
    );
    let (start_epoch, mut rows) = match resumed {
        Some(c) => {
            sgd.load_buffers(c.momentum)?;
            log_line(&dir, &format!("resumed after epoch {}", c.epochs_done));
            (c.epochs_done, c.rows)
        }
        None => {
            log_line(&dir, &format!("started run {run_id}"));
            (0, Vec::new())
        }
    };
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

    let row = |epoch: usize, split: &str, t: &Totals, lr: f64, ips: f64, wall: f64| MetricRow {
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
    };

    let last_epoch = ctx
        .stop_after_epochs
        .map_or(epochs, |n| (start_epoch + n).min(epochs));
    for epoch in start_epoch..last_epoch {
        let started_epoch = Instant::now();
        let mut totals = Totals::default();
        let mut lr = 0.0;
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
            bar.inc(1);
            bar.set_message(format!(
                "epoch {}/{epochs} loss {:.3}",
                epoch + 1,
                totals.loss / totals.images as f64
            ));
        }
        let train_seconds = started_epoch.elapsed().as_secs_f64();
        let (test, test_seconds) = evaluate(&net, &test_loader, &device)?;
        wall += started_epoch.elapsed().as_secs_f64();
        let train_row = row(
            epoch + 1,
            "train",
            &totals,
            lr,
            totals.images as f64 / train_seconds,
            wall,
        );
        let test_row = row(
            epoch + 1,
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
