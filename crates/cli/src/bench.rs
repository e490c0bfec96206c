//! `cardinal bench ...`: speed measured, never asserted. The cases and their output are
//! here; the timing is `cardinal_bench`'s.

use anyhow::{bail, Context, Result};
use cardinal_bench::{median, peak_rss_bytes, ConvShape};
use cardinal_data::{Loader, LoaderConfig, Transform};
use cardinal_zoo::{BlockForm, Kernels, NetSpec, Precision, Stem};
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
    /// Whole training steps (forward, cross-entropy, backward, SGD with momentum) of
    /// networks on random inputs: images/s and peak memory per model. With --kernels both,
    /// cardinal's CPU kernels and candle's own ops side by side.
    Train(BenchTrainArgs),
}

/// The cardinality grid of `experiments/cardinality.yaml`: its template and its C values.
const GRID_TEMPLATE: &str = "cpu_resnet20";
const GRID_CARDINALITIES: [usize; 5] = [1, 2, 4, 8, 32];

/// The CPU ablation models: what `bench train` times when no --model is given.
pub const CPU_MODELS: [&str; 3] = ["cpu_resnet20", "cpu_resnext20_4x12d", "cpu_resnext20_32x2d"];

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// cardinal's fused CPU kernels (what training uses).
    Cardinal,
    /// candle's own convolution, batch norm and element-wise ops (the reference).
    Candle,
    /// Both, side by side, with the speed-up.
    Both,
}

#[derive(Args)]
pub struct BenchTrainArgs {
    /// A preset (see `cardinal models`) or spec file; repeat for several. Default: the CPU
    /// ablation models (cpu_resnet20, cpu_resnext20_4x12d, cpu_resnext20_32x2d).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Images per step. Default: 128 for CIFAR-stem models, 16 for ImageNet models.
    #[arg(long, value_parser = crate::at_least_one)]
    batch_size: Option<usize>,
    /// Input side in pixels. Default: the model's own (28 for the CPU models, 224).
    #[arg(long, value_parser = crate::at_least_one)]
    input_size: Option<usize>,
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::at_least_one)]
    steps: usize,
    /// Untimed steps first (allocations, thread pools, caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Time every case this many times, the cases in turn within each round, and report
    /// each case's median. With several models, each is also compared with the first by
    /// the median of the rounds' ratios: cases timed seconds apart, not minutes, so a
    /// shared machine's drift cancels (the grid's cells against its dense cell, say). An
    /// odd count has a middle round; of an even one the upper middle is taken.
    #[arg(long, default_value_t = 1, value_parser = crate::at_least_one)]
    rounds: usize,
    /// Build every case's model once and keep them all, then in each round take `--steps`
    /// steps of each case in turn (after `--warmup` steps of each): the cases' steps are
    /// then a fraction of a second apart instead of seconds, so each round's ratios carry
    /// less of the machine's drift, and many short rounds (`--steps 1 --rounds 30`) give a
    /// tight median. Peak memory is not reported, since every model is held at once.
    #[arg(long)]
    interleave: bool,
    #[arg(long, value_enum, default_value_t = KernelChoice::Cardinal)]
    kernels: KernelChoice,
    /// Where the steps run: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, value_parser = crate::device_arg::parse, default_value = "cpu")]
    device: crate::device_arg::DeviceArg,
    /// Build every model in this block form (A: paths, B: early concatenation, C: grouped
    /// convolution); default: each model's own.
    #[arg(long, value_parser = parse_form)]
    form: Option<BlockForm>,
    /// f32, or bf16-mixed (bf16 products with f32 sums, as PyTorch's bf16 autocast).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Threads of the steps (default: all cores, or RAYON_NUM_THREADS). A machine that
    /// trains cells side by side (`ablate --jobs`) gives each a share of its cores.
    #[arg(long, value_parser = crate::at_least_one)]
    threads: Option<usize>,
    /// json: one object for one case, an array for several.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Print where the timed steps' time goes, after each case (on standard error): every
    /// op of cardinal's CPU kernels, convolutions by shape with their multiply-adds per
    /// second, then the sums per step by kind (1x1, dense and grouped kxk products, batch
    /// norm, ...), each the median over the timed steps. Comparing two models' kinds shows
    /// where one loses time to the other. The same as CARDINAL_PROFILE=1.
    #[arg(long)]
    profile: bool,
}

/// One case of `bench train`: its name, spec, batch, kernels and complexity.
type PlannedCase = (String, NetSpec, usize, Kernels, cardinal_zoo::Complexity);

#[derive(Serialize)]
struct TrainCase {
    model: String,
    kernels: &'static str,
    device: String,
    batch_size: usize,
    input_size: usize,
    steps: usize,
    ms_per_step: f64,
    images_per_sec: f64,
    /// Peak resident memory of the process during this case (reset before it where the
    /// kernel allows, so earlier cases do not count); of the first round, since the
    /// allocator keeps what earlier rounds' larger cases took.
    peak_rss_bytes: Option<u64>,
    params: u64,
    macs: u64,
    threads: usize,
    precision: Precision,
    /// The instruction set that ran the products (`amx-bf16`, `avx512-bf16`, `avx512`,
    /// `avx2`, `portable`; `CARDINAL_ISA` forces one).
    isa: &'static str,
    /// The network timed, as data: what `benches/pytorch_reference.py` rebuilds in PyTorch.
    spec: NetSpec,
    /// Rounds timed (`--rounds`); ms_per_step and images_per_sec are their medians.
    rounds: usize,
    /// images_per_sec of each round.
    round_images_per_sec: Vec<f64>,
    /// Whether the rounds took the cases' steps in turn with every model held
    /// (`--interleave`).
    interleaved: bool,
    /// With several rounds and models: images_per_sec against the first case of the same
    /// kernels, the median of the rounds' ratios, with their least and greatest.
    #[serde(skip_serializing_if = "Option::is_none")]
    against_first: Option<Ratio>,
}

#[derive(Serialize, Clone, Copy)]
struct Ratio {
    median: f64,
    min: f64,
    max: f64,
    /// The lower and upper quartiles of the rounds' ratios (the values a quarter of the
    /// way in from each end of their sorted list): half the rounds lie between them.
    quartiles: (f64, f64),
}

impl Ratio {
    fn of(mut ratios: Vec<f64>) -> Ratio {
        ratios.sort_by(f64::total_cmp);
        let last = ratios.len().saturating_sub(1);
        Ratio {
            min: ratios.first().copied().unwrap_or(f64::NAN),
            max: ratios.last().copied().unwrap_or(f64::NAN),
            quartiles: (
                ratios.get(last / 4).copied().unwrap_or(f64::NAN),
                ratios.get(last - last / 4).copied().unwrap_or(f64::NAN),
            ),
            median: median(ratios),
        }
    }
}

fn parse_form(s: &str) -> std::result::Result<BlockForm, String> {
    match s {
        "A" | "a" => Ok(BlockForm::A),
        "B" | "b" => Ok(BlockForm::B),
        "C" | "c" => Ok(BlockForm::C),
        other => Err(format!("unknown block form `{other}` (expected A, B or C)")),
    }
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
    /// The shape, for `benches/pytorch_reference.py` to time the same layer.
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    side: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
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
        BenchCommand::Train(args) => train(args),
    }
}

fn train(args: BenchTrainArgs) -> Result<()> {
    if args.profile {
        if args.kernels != KernelChoice::Cardinal || args.device.to_string() != "cpu" {
            bail!("--profile times cardinal's CPU kernels: use it with --kernels cardinal on the cpu device");
        }
        if args.interleave {
            bail!("--profile reports one case's steps at a time: use it without --interleave");
        }
        cardinal_kernels::profile::enable();
    }
    if args.interleave && args.rounds < 2 {
        bail!("--interleave compares the cases round by round: give it --rounds 2 or more");
    }
    let models = if args.models.is_empty() {
        CPU_MODELS.iter().map(|m| m.to_string()).collect()
    } else {
        args.models.clone()
    };
    let kernels: &[Kernels] = match args.kernels {
        KernelChoice::Cardinal => &[Kernels::Cardinal],
        KernelChoice::Candle => &[Kernels::Candle],
        KernelChoice::Both => &[Kernels::Cardinal, Kernels::Candle],
    };
    // Every case's model, spec and batch first, so that a bad model fails before any timing.
    let mut plan: Vec<PlannedCase> = Vec::new();
    for model in &models {
        let mut spec = model_arg::resolve(model)?.spec;
        if let Some(size) = args.input_size {
            spec.input_size = size;
        }
        if let Some(form) = args.form {
            spec.form = form;
        }
        let complexity = cardinal_zoo::Complexity::of(&spec)
            .with_context(|| format!("model {model} at input size {}", spec.input_size))?;
        let batch_size = args.batch_size.unwrap_or(match spec.stem {
            Stem::Imagenet { .. } => 16,
            Stem::Cifar { .. } => 128,
        });
        let name = match args.form {
            Some(form) => format!("{model} form {form}"),
            None => model.clone(),
        };
        for &k in kernels {
            plan.push((
                name.clone(),
                spec.clone(),
                batch_size,
                k,
                complexity.clone(),
            ));
        }
    }
    let pool = match args.threads {
        Some(threads) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .context("starting the benchmark's threads")?,
        ),
        None => None,
    };
    let timed = match (&pool, args.interleave) {
        (Some(pool), true) => pool.install(|| interleaved(&plan, &args))?,
        (None, true) => interleaved(&plan, &args)?,
        (_, false) => {
            // Rounds outermost: each round times every case once, in order.
            let mut timed: Vec<Vec<TrainCase>> = plan.iter().map(|_| Vec::new()).collect();
            for round in 0..args.rounds {
                for ((name, spec, batch_size, k, _), runs) in plan.iter().zip(&mut timed) {
                    let label = if args.rounds > 1 {
                        format!("{name}, round {}/{}", round + 1, args.rounds)
                    } else {
                        name.clone()
                    };
                    let case = match &pool {
                        Some(pool) => {
                            pool.install(|| train_case(&label, spec, *batch_size, *k, &args))?
                        }
                        None => train_case(&label, spec, *batch_size, *k, &args)?,
                    };
                    runs.push(TrainCase {
                        model: name.clone(),
                        ..case
                    });
                }
            }
            timed
        }
    };
    let per_round: Vec<Vec<f64>> = timed
        .iter()
        .map(|runs| runs.iter().map(|c| c.images_per_sec).collect())
        .collect();
    let mut cases = Vec::new();
    for (i, ((_, _, _, k, complexity), runs)) in plan.iter().zip(timed).enumerate() {
        let ms_per_step = median(runs.iter().map(|c| c.ms_per_step).collect());
        // The first case of the same kernels is the reference of the ratios.
        let against_first = plan
            .iter()
            .position(|p| p.3 == *k)
            .filter(|&first| args.rounds > 1 && first != i)
            .map(|first| {
                let ratios = per_round[i].iter().zip(&per_round[first]);
                Ratio::of(ratios.map(|(a, b)| a / b).collect())
            });
        let first = runs.into_iter().next().expect("at least one round");
        cases.push(TrainCase {
            params: complexity.params,
            macs: complexity.macs,
            ms_per_step,
            images_per_sec: median(per_round[i].clone()),
            rounds: args.rounds,
            round_images_per_sec: per_round[i].clone(),
            against_first,
            ..first
        });
    }
    match args.format {
        Format::Json if cases.len() == 1 => print_json(&cases[0]),
        Format::Json => print_json(&cases),
        _ => {
            let mut t = Table::new([
                "model",
                "kernels",
                "precision",
                "batch",
                "input",
                "ms / step",
                "img/s",
                "peak RSS MiB",
                "MMACs",
            ]);
            for c in &cases {
                t.row([
                    c.model.clone(),
                    c.kernels.to_string(),
                    c.precision.to_string(),
                    c.batch_size.to_string(),
                    c.input_size.to_string(),
                    format!("{:.0}", c.ms_per_step),
                    format!("{:.1}", c.images_per_sec),
                    c.peak_rss_bytes.map_or("-".into(), |b| {
                        format!("{:.0}", b as f64 / (1 << 20) as f64)
                    }),
                    format!("{:.1}", c.macs as f64 / 1e6),
                ]);
            }
            print!("{}", t.render());
            if args.rounds > 1 {
                println!(
                    "medians of {} rounds{}; img/s against the first model, median of the rounds' ratios (middle half of the rounds; all):",
                    args.rounds,
                    if args.interleave {
                        ", the cases' steps in turn"
                    } else {
                        ""
                    }
                );
                for c in cases.iter().filter(|c| c.against_first.is_some()) {
                    let r = c.against_first.expect("filtered");
                    println!(
                        "  {} ({}): {:.3} ({:.3}-{:.3}; {:.3}-{:.3})",
                        c.model, c.kernels, r.median, r.quartiles.0, r.quartiles.1, r.min, r.max
                    );
                }
            }
            if args.kernels == KernelChoice::Both {
                for pair in cases.chunks(2) {
                    println!(
                        "{}: cardinal kernels {:.2}x candle's ops",
                        pair[0].model,
                        pair[0].images_per_sec / pair[1].images_per_sec
                    );
                }
            }
            let threads = cases
                .first()
                .map_or_else(cardinal_train::run::threads, |c| c.threads);
            println!(
                "threads: {threads}, products on {}",
                cases.first().map_or("-", |c| c.isa)
            );
            Ok(())
        }
    }
}

/// Times `args.steps` full SGD steps of one model with one kernel choice.
fn train_case(
    model: &str,
    spec: &NetSpec,
    batch_size: usize,
    kernels: Kernels,
    args: &BenchTrainArgs,
) -> Result<TrainCase> {
    let device = args.device.open()?;
    let progress = indicatif::ProgressBar::new((args.warmup + args.steps) as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps, ETA {eta}")
            .expect("valid template"),
    );
    progress.set_message(format!("{model} ({})", kernel_name(kernels)));
    let timing = cardinal_bench::train_steps(
        spec,
        batch_size,
        (kernels, args.precision),
        &device,
        (args.warmup, args.steps),
        &mut || progress.inc(1),
    )?;
    progress.finish_and_clear();
    Ok(measured_case(
        model, spec, batch_size, kernels, args, timing,
    ))
}

/// A case's record from what its steps measured (its complexity and the rounds' figures
/// are filled in by the caller).
fn measured_case(
    model: &str,
    spec: &NetSpec,
    batch_size: usize,
    kernels: Kernels,
    args: &BenchTrainArgs,
    timing: cardinal_bench::StepTiming,
) -> TrainCase {
    TrainCase {
        model: model.to_string(),
        kernels: kernel_name(kernels),
        device: args.device.to_string(),
        batch_size,
        input_size: spec.input_size,
        steps: args.steps,
        ms_per_step: timing.ms_per_step,
        images_per_sec: timing.images_per_sec,
        peak_rss_bytes: timing.peak_rss_bytes,
        params: 0,
        macs: 0,
        threads: cardinal_train::run::threads(),
        precision: args.precision,
        isa: if kernels == Kernels::Cardinal && args.device.to_string() == "cpu" {
            cardinal_kernels::isa::selected().label(args.precision == Precision::Bf16Mixed)
        } else {
            "candle"
        },
        spec: spec.clone(),
        rounds: 1,
        round_images_per_sec: vec![timing.images_per_sec],
        interleaved: args.interleave,
        against_first: None,
    }
}

/// `--interleave`: every case's model built and warmed up, then each round takes
/// `args.steps` steps of every case in turn; a case's round is the median of its steps.
/// Returns each case's rounds, as the plain rounds do.
fn interleaved(plan: &[PlannedCase], args: &BenchTrainArgs) -> Result<Vec<Vec<TrainCase>>> {
    let device = args.device.open()?;
    let total = plan.len() * (args.warmup + args.rounds * args.steps);
    let progress = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps, ETA {eta}")
            .expect("valid template"),
    );
    progress.set_message("warming up every case");
    let mut steppers = Vec::with_capacity(plan.len());
    for (name, spec, batch_size, k, _) in plan {
        let mut stepper =
            cardinal_bench::TrainStepper::new(spec, *batch_size, (*k, args.precision), &device)
                .with_context(|| format!("building {name}"))?;
        for _ in 0..args.warmup {
            stepper.step()?;
            progress.inc(1);
        }
        steppers.push(stepper);
    }
    let mut timed: Vec<Vec<TrainCase>> = plan.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        progress.set_message(format!("round {}/{}", round + 1, args.rounds));
        for (((name, spec, batch_size, k, _), stepper), runs) in
            plan.iter().zip(&mut steppers).zip(&mut timed)
        {
            let mut times = Vec::with_capacity(args.steps);
            for _ in 0..args.steps {
                times.push(stepper.step()?);
                progress.inc(1);
            }
            let ms_per_step = median(times);
            let timing = cardinal_bench::StepTiming {
                ms_per_step,
                images_per_sec: stepper.images_per_sec(ms_per_step),
                peak_rss_bytes: None,
            };
            runs.push(measured_case(name, spec, *batch_size, *k, args, timing));
        }
    }
    progress.finish_and_clear();
    Ok(timed)
}

fn kernel_name(kernels: Kernels) -> &'static str {
    match kernels {
        Kernels::Cardinal => "cardinal",
        Kernels::Candle => "candle",
    }
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
        cardinal_bench::loader_images_per_sec(loader, epoch, batches)
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
    let batch = loader.batch(0, 0)?;
    cardinal_bench::forward_backward_ms(&spec, &batch, repeats)
        .with_context(|| format!("model {model}"))
}

/// A convolution to time, as (batch, channels in, channels out, side, kernel, stride,
/// groups).
fn shape(
    (batch, in_channels, out_channels, side, kernel, stride, groups): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
) -> ConvShape {
    ConvShape {
        batch,
        in_channels,
        out_channels,
        side,
        kernel,
        stride,
        groups,
    }
}

fn conv(args: BenchConvArgs) -> Result<()> {
    // The shapes of the speed table in the performance issue, batch 8.
    let mut cases: Vec<(String, ConvShape)> = [
        (
            "grouped 3x3, C=32, 128 ch, 28x28",
            (8, 128, 128, 28, 3, 1, 32),
        ),
        ("dense 3x3, 128 ch, 28x28", (8, 128, 128, 28, 3, 1, 1)),
        (
            "grouped 3x3 stride 2, C=32, 256 ch, 56x56",
            (8, 256, 256, 56, 3, 2, 32),
        ),
        ("1x1, 256->128, 28x28", (8, 256, 128, 28, 1, 1, 1)),
    ]
    .into_iter()
    .map(|(name, dims)| (name.to_string(), shape(dims)))
    .collect();
    // The grouped 3x3 layer of every cell of the cardinality grid (stage 1 of the template,
    // d solved to preserve complexity), at the training batch size.
    let template = cardinal_zoo::preset(GRID_TEMPLATE)?;
    let side = template.block_shapes()[0][0].input_size;
    for cell in cardinal_zoo::preserve_complexity(&template, 0, &GRID_CARDINALITIES)? {
        let (c, width) = (cell.cardinality, cell.group_width);
        cases.push((
            format!(
                "grid {c}x{}d: {GRID_TEMPLATE} stage 1 3x3, batch 128",
                cell.bottleneck_width
            ),
            shape((128, width, width, side, 3, 1, c)),
        ));
    }
    let mut rows = Vec::new();
    for (name, shape) in cases {
        let timing = cardinal_bench::conv(shape, args.repeats)?;
        rows.push(ConvCase {
            case: name,
            batch: shape.batch,
            in_channels: shape.in_channels,
            out_channels: shape.out_channels,
            side: shape.side,
            kernel: shape.kernel,
            stride: shape.stride,
            groups: shape.groups,
            cardinal_forward_ms: timing.cardinal_forward_ms,
            cardinal_train_ms: timing.cardinal_train_ms,
            candle_forward_ms: timing.candle_forward_ms,
            candle_train_ms: timing.candle_train_ms,
            train_speedup: timing.candle_train_ms.map(|t| t / timing.cardinal_train_ms),
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
