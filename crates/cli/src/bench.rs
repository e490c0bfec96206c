//! `cardinal bench ...`: speed measured, never asserted. Each case warms up, then reports
//! the median of repeated runs.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use cardinal_data::{Loader, LoaderConfig, Transform};
use cardinal_zoo::{init_weights, ResNet};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::data_cmd::DatasetArgs;
use crate::model_arg;
use crate::table::{thousands, Table};
use crate::{print_json, Format};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Loading plus augmentation throughput of a dataset on one core (no prefetch thread),
    /// and through the prefetching loader; with --model, its share of a training step.
    Data(BenchDataArgs),
    /// Convolution forward and forward+backward times, cardinal's CPU kernel beside
    /// candle's conv2d, for the shapes of the speed table (batch 8) and the CPU models.
    Conv(BenchConvArgs),
}

#[derive(Args)]
pub struct BenchConvArgs {
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct ConvCase {
    case: String,
    cardinal_forward_ms: f64,
    cardinal_train_ms: f64,
    /// None where candle's conv2d backward fails (stride 2 on even sizes).
    candle_forward_ms: f64,
    candle_train_ms: Option<f64>,
    train_speedup: Option<f64>,
}

#[derive(Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed passes over the training split (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Stop each pass after this many images (default: the whole training split).
    #[arg(long)]
    images: Option<usize>,
    /// Also time a training step (forward, loss, backward) of this model at the same batch
    /// size, and report the data's share of it.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct DataBench {
    dataset: String,
    batch_size: usize,
    images_per_pass: usize,
    repeats: usize,
    /// One thread builds batches (augmentation, normalization, tensor) in the caller.
    images_per_sec: f64,
    ms_per_batch: f64,
    /// The background loader consumed as fast as it produces.
    prefetch_images_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    train_step_ms: Option<f64>,
    /// ms_per_batch / train_step_ms: the cost of data if it were not prefetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_share_of_step: Option<f64>,
    threads: usize,
    peak_rss_bytes: Option<u64>,
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Data(args) => data(args),
        BenchCommand::Conv(args) => conv(args),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set size of this process (Linux), for memory targets.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn data(args: BenchDataArgs) -> Result<()> {
    let dataset = args.dataset.open()?;
    let transform = Transform::train(&dataset, &Default::default());
    let mut config = LoaderConfig::new(args.batch_size);
    config.drop_last = true;
    config.prefetch = 0;
    let sync_loader = Loader::new(dataset.train.clone(), transform.clone(), config.clone())?;
    let limit = args
        .images
        .unwrap_or(usize::MAX)
        .min(sync_loader.images_per_epoch());
    let batches = (limit / args.batch_size).max(1);
    let images = batches * args.batch_size;
    let repeats = args.repeats.max(1);

    let pass = |loader: &Loader, epoch: u64| -> Result<f64> {
        let start = Instant::now();
        for batch in loader.epoch(epoch).take(batches) {
            std::hint::black_box(batch?);
        }
        Ok(images as f64 / start.elapsed().as_secs_f64())
    };
    let progress = indicatif::ProgressBar::new((2 * (repeats + 1)) as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} passes [{eta}]")
            .unwrap(),
    );
    progress.set_message("data bench");
    // Epoch 0 warms up caches and the allocator; the timed passes use fresh epochs so
    // that every pass draws new augmentations.
    let timed = |loader: &Loader| -> Result<Vec<f64>> {
        (0..=repeats as u64)
            .map(|epoch| {
                let rate = pass(loader, epoch);
                progress.inc(1);
                rate
            })
            .collect::<Result<Vec<_>>>()
            .map(|mut rates| rates.split_off(1))
    };
    let sync = timed(&sync_loader)?;
    config.prefetch = 4;
    let prefetched = timed(&Loader::new(dataset.train.clone(), transform, config)?)?;
    progress.finish_and_clear();
    let images_per_sec = median(sync);
    let ms_per_batch = args.batch_size as f64 / images_per_sec * 1e3;

    let train_step_ms = match &args.model {
        Some(model) => Some(train_step_ms(model, &sync_loader, repeats)?),
        None => None,
    };
    let result = DataBench {
        dataset: dataset.name.clone(),
        batch_size: args.batch_size,
        images_per_pass: images,
        repeats,
        images_per_sec,
        ms_per_batch,
        prefetch_images_per_sec: median(prefetched),
        model: args.model.clone(),
        train_step_ms,
        data_share_of_step: train_step_ms.map(|t| ms_per_batch / t),
        threads: cardinal_train::run::threads(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    match args.format {
        Format::Json => print_json(&result),
        _ => {
            let mut t = Table::new(["measure", "value"]);
            t.row(["dataset".into(), result.dataset.clone()]);
            t.row(["batch size".into(), result.batch_size.to_string()]);
            t.row([
                "images per pass".into(),
                thousands(result.images_per_pass as u64),
            ]);
            t.row([
                "one core: images/s".into(),
                thousands(result.images_per_sec.round() as u64),
            ]);
            t.row([
                "one core: ms per batch".into(),
                format!("{ms_per_batch:.2}"),
            ]);
            t.row([
                "prefetching loader: images/s".into(),
                thousands(result.prefetch_images_per_sec.round() as u64),
            ]);
            if let (Some(model), Some(step)) = (&result.model, result.train_step_ms) {
                t.row([format!("{model} train step (ms)"), format!("{step:.1}")]);
                t.row([
                    "data / train step".into(),
                    format!("{:.2}%", 100.0 * ms_per_batch / step),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}

/// Median wall time of forward (train mode), cross-entropy and backward on one batch.
fn train_step_ms(model: &str, loader: &Loader, repeats: usize) -> Result<f64> {
    let spec = model_arg::resolve(model)?.spec;
    let state = init_weights(&spec, 0, &Device::Cpu)?;
    let net = ResNet::new(&spec, &state)?;
    let batch = loader.batch(0, 0)?;
    net.check_input(&batch.images)
        .with_context(|| format!("model {model} does not take this dataset's images"))?;
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

/// Median milliseconds of `f` over `repeats` runs after one warm-up; None if it fails.
fn time_ms(repeats: usize, f: impl Fn() -> candle_core::Result<()>) -> Option<f64> {
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

fn conv(args: BenchConvArgs) -> Result<()> {
    // (name, batch, channels in, channels out, side, kernel, stride, groups)
    let cases = [
        (
            "grouped 3x3, C=32, 128 ch, 28x28",
            8,
            128,
            128,
            28,
            3,
            1,
            32,
        ),
        ("dense 3x3, 128 ch, 28x28", 8, 128, 128, 28, 3, 1, 1),
        (
            "grouped 3x3 stride 2, C=32, 256 ch, 56x56",
            8,
            256,
            256,
            56,
            3,
            2,
            32,
        ),
        ("1x1, 256->128, 28x28", 8, 256, 128, 28, 1, 1, 1),
        (
            "cpu_resnext20_4x12d stage 1 3x3 (4x12d), batch 128",
            128,
            48,
            48,
            14,
            3,
            1,
            4,
        ),
        (
            "cpu_resnext20_32x2d stage 1 3x3 (32x2d), batch 128",
            128,
            64,
            64,
            14,
            3,
            1,
            32,
        ),
    ];
    let mut rows = Vec::new();
    for (name, n, c_in, c_out, side, k, stride, groups) in cases {
        let x = candle_core::Var::from_tensor(&Tensor::randn(
            0f32,
            1.0,
            (n, c_in, side, side),
            &Device::Cpu,
        )?)?;
        let w = candle_core::Var::from_tensor(&Tensor::randn(
            0f32,
            0.1,
            (c_out, c_in / groups, k, k),
            &Device::Cpu,
        )?)?;
        let padding = k / 2;
        let ours = |train: bool| {
            let y = cardinal_zoo::kernels::conv2d(
                x.as_tensor(),
                w.as_tensor(),
                padding,
                stride,
                groups,
            )?;
            if train {
                y.sum_all()?.backward()?;
            }
            Ok(())
        };
        let theirs = |train: bool| {
            let y = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, groups)?;
            if train {
                y.sum_all()?.backward()?;
            }
            Ok(())
        };
        let cardinal_forward_ms =
            time_ms(args.repeats, || ours(false)).context("cardinal conv failed")?;
        let cardinal_train_ms =
            time_ms(args.repeats, || ours(true)).context("cardinal conv backward failed")?;
        let candle_forward_ms =
            time_ms(args.repeats, || theirs(false)).context("candle conv failed")?;
        let candle_train_ms = time_ms(args.repeats, || theirs(true));
        rows.push(ConvCase {
            case: name.to_string(),
            cardinal_forward_ms,
            cardinal_train_ms,
            candle_forward_ms,
            candle_train_ms,
            train_speedup: candle_train_ms.map(|t| t / cardinal_train_ms),
        });
    }
    match args.format {
        Format::Json => print_json(&rows),
        _ => {
            let mut t = Table::new([
                "case",
                "cardinal fwd / fwd+bwd ms",
                "candle fwd / fwd+bwd ms",
                "train speed-up",
            ]);
            for r in &rows {
                t.row([
                    r.case.clone(),
                    format!("{:.1} / {:.1}", r.cardinal_forward_ms, r.cardinal_train_ms),
                    format!(
                        "{:.1} / {}",
                        r.candle_forward_ms,
                        r.candle_train_ms
                            .map_or("fails".into(), |v| format!("{v:.1}"))
                    ),
                    r.train_speedup.map_or("-".into(), |v| format!("{v:.1}x")),
                ]);
            }
            print!("{}", t.render());
            println!("threads: {}", cardinal_train::run::threads());
            Ok(())
        }
    }
}
