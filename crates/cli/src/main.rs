//! `cardinal`: one command per architecture question. The binary only parses and prints,
//! one module per command; the work happens in the library crates.

mod bench;
mod complexity_cmd;
mod data_cmd;
mod device_arg;
mod equivalence_cmd;
mod experiment_arg;
mod infer_cmd;
mod model_arg;
mod models_cmd;
mod report_cmd;
mod slurm;
mod table;
mod train_cmd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

// Training allocates and frees activation-sized buffers at every op; glibc's malloc returns
// each large one to the kernel and page-faults it back in (docs/speed.md has the measured
// cost). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cardinal",
    version,
    about = "Architecture research for residual networks: ResNet vs ResNeXt, measured",
    long_about = "Architecture research for residual networks.\n\n\
        Models are specs (data): `cardinal models` lists the presets; any MODEL argument \
        takes a preset name or a YAML/JSON spec file. Complexity is exact (params and \
        multiply-adds, the paper's FLOPs), and the three ResNeXt block forms are checked to \
        be the same function by `cardinal equivalence`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the model presets with their params and multiply-adds.
    Models(models_cmd::ModelsArgs),
    /// Params and multiply-adds of models (paper Table 1), or with --preserve the bottleneck
    /// widths that keep a block's complexity for each cardinality (paper Table 2).
    Complexity(complexity_cmd::ComplexityArgs),
    /// Check numerically that block forms A, B and C are one function (outputs and
    /// gradients, train and eval mode) and that an aggregated depth-2 block is a wider dense
    /// block. Exits with 1 if any check fails.
    Equivalence(equivalence_cmd::EquivalenceArgs),
    /// Run a model in eval mode on a batch: reads tensor `input` [N,C,H,W] from a
    /// safetensors file and writes tensor `logits` [N,classes]. The model is a trained run
    /// (its directory or checkpoint) or a preset or spec with a weights file.
    Infer(infer_cmd::InferArgs),
    /// Write a trained run's weights as a torchvision state dict (safetensors), which
    /// PyTorch's `load_state_dict` takes for the same architecture.
    Export(infer_cmd::ExportArgs),
    /// Train one run of an experiment file (resumes it if it was interrupted).
    Train(train_cmd::TrainArgs),
    /// Run an experiment's sweep (experiments/NAME.yaml): finished cells are skipped,
    /// interrupted ones resume, diverged ones are recorded, and a cell that another
    /// experiment has finished (same config and seed, same instruction set and threads) is
    /// copied, not trained again. Exits with 1 if a run diverged.
    Ablate(train_cmd::AblateArgs),
    /// Write an experiment's report (reports/NAME/README.md with its figures): question,
    /// setup, complexity and error tables beside the paper's, training curves, and a
    /// conclusion that weighs each difference against the seed-to-seed spread.
    Report(report_cmd::ReportArgs),
    /// Runs side by side on the terminal: experiment names, run directories or run ids;
    /// seeds of one configuration are aggregated (mean ± std).
    Compare(report_cmd::CompareArgs),
    /// Datasets: where they are, their statistics, a look at their images.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Measure speed (median of repeated runs; JSON with --format json).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

fn main() -> ExitCode {
    cardinal_kernels::memory::keep_freed_memory();
    let cli = Cli::parse();
    // Progress bars show training; CARDINAL_LOG=info (or debug) adds the log lines.
    let level = std::env::var("CARDINAL_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Models(args) => models_cmd::run(args).map(|_| true),
        Command::Complexity(args) => complexity_cmd::run(args).map(|_| true),
        Command::Equivalence(args) => equivalence_cmd::run(args),
        Command::Infer(args) => infer_cmd::infer(args).map(|_| true),
        Command::Export(args) => infer_cmd::export(args).map(|_| true),
        Command::Train(args) => train_cmd::train(args),
        Command::Ablate(args) => train_cmd::ablate(args),
        Command::Report(args) => report_cmd::report(args).map(|_| true),
        Command::Compare(args) => report_cmd::compare(args).map(|_| true),
        Command::Data(command) => data_cmd::run(command).map(|_| true),
        Command::Bench(command) => bench::run(command).map(|_| true),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A count of at least 1, for clap's value_parser: clap names the flag in the error.
pub(crate) fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
