//! `cardinal`: one command per architecture question. The binary only parses and prints;
//! the work happens in the library crates.

mod bench;
mod data_cmd;
mod device_arg;
mod infer_cmd;
mod model_arg;
mod report_cmd;
mod slurm;
mod table;
mod train_cmd;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use cardinal_zoo::equivalence::{self, Check};
use cardinal_zoo::{preserve_complexity, presets, Complexity};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use table::{scientific, short, thousands, Table};

// Training allocates and frees activation-sized buffers at every op; glibc's malloc returns
// each large one to the kernel and page-faults it back in, which cost about a fifth of a
// CPU training step (measured with `cardinal bench train`). mimalloc keeps them.
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
    Models(ModelsArgs),
    /// Params and multiply-adds of models (paper Table 1), or with --preserve the bottleneck
    /// widths that keep a block's complexity for each cardinality (paper Table 2).
    Complexity(ComplexityArgs),
    /// Check numerically that block forms A, B and C are one function (outputs and
    /// gradients, train and eval mode) and that an aggregated depth-2 block is a wider dense
    /// block. Exits with 1 if any check fails.
    Equivalence(EquivalenceArgs),
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
    /// interrupted ones resume, diverged ones are recorded. Exits with 1 if a run diverged.
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

#[derive(Args)]
struct ModelsArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
struct ComplexityArgs {
    /// Preset names (see `cardinal models`) or YAML/JSON spec files.
    models: Vec<String>,
    /// Input side in pixels (default: each model's own, 224 for ImageNet models).
    #[arg(long)]
    input_size: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Also list every layer (table and csv) or include them in the JSON.
    #[arg(long)]
    layers: bool,
    /// Solve for the bottleneck width d that preserves the block complexity of MODEL's
    /// stage (paper Table 2) for each --cardinality.
    #[arg(long, value_name = "MODEL")]
    preserve: Option<String>,
    /// Cardinalities to solve for with --preserve.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 32])]
    cardinality: Vec<usize>,
    /// Stage to solve with --preserve: 1 is the first residual stage (the paper's conv2).
    #[arg(long, default_value_t = 1)]
    stage: usize,
}

#[derive(Args)]
struct EquivalenceArgs {
    /// Model whose block forms are compared (preset or spec file).
    #[arg(default_value = "resnext50_32x4d")]
    model: String,
    /// Seed of the weights and of the input batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input side; small so that the check takes seconds on a CPU, large enough that
    /// train-mode BN sees several values per channel in the last stage.
    #[arg(long, default_value_t = 48)]
    input_size: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Precision of the check. Deep nets in train mode amplify f32 rounding through nearly
    /// constant BN channels; f64 tests the functions themselves. Small nets pass in f32.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    dtype: Precision,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
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
        Command::Models(args) => models(args).map(|_| true),
        Command::Complexity(args) => complexity(args).map(|_| true),
        Command::Equivalence(args) => equivalence(args),
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

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Serialize)]
struct ModelRow {
    model: String,
    family: String,
    description: String,
    depth: usize,
    cardinality: usize,
    bottleneck_width: usize,
    input_size: usize,
    params: u64,
    macs: u64,
}

fn models(args: ModelsArgs) -> Result<()> {
    let rows = presets()
        .into_iter()
        .map(|p| {
            let c = Complexity::of(&p.spec)?;
            Ok(ModelRow {
                model: p.name.to_string(),
                family: p.family.to_string(),
                description: p.description.to_string(),
                depth: p.spec.depth(),
                cardinality: p.spec.cardinality,
                bottleneck_width: p.spec.bottleneck_width,
                input_size: p.spec.input_size,
                params: c.params,
                macs: c.macs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv => {
            println!("model,family,depth,cardinality,bottleneck_width,input_size,params,macs");
            for r in rows {
                println!(
                    "{},{},{},{},{},{},{},{}",
                    r.model,
                    r.family,
                    r.depth,
                    r.cardinality,
                    r.bottleneck_width,
                    r.input_size,
                    r.params,
                    r.macs
                );
            }
        }
        Format::Table => {
            let mut t = Table::new([
                "model",
                "family",
                "C x d",
                "depth",
                "input",
                "params",
                "MACs",
                "description",
            ]);
            for r in rows {
                t.row([
                    r.model,
                    r.family,
                    format!("{}x{}d", r.cardinality, r.bottleneck_width),
                    r.depth.to_string(),
                    r.input_size.to_string(),
                    thousands(r.params),
                    thousands(r.macs),
                    r.description,
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ComplexityRow {
    model: String,
    input_size: usize,
    params: u64,
    macs: u64,
    stages: Vec<cardinal_zoo::complexity::StageComplexity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<cardinal_zoo::complexity::LayerComplexity>>,
}

/// The paper's rounded totals (Table 1), printed beside ours.
fn paper_table_1(model: &str) -> Option<&'static str> {
    match model {
        "resnet50" => Some("25.5×10⁶ / 4.1×10⁹"),
        "resnext50_32x4d" => Some("25.0×10⁶ / 4.2×10⁹"),
        _ => None,
    }
}

fn complexity(args: ComplexityArgs) -> Result<()> {
    if let Some(template) = &args.preserve {
        return preserve(template, &args);
    }
    if args.models.is_empty() {
        bail!("give at least one MODEL (`cardinal models` lists them), or --preserve MODEL");
    }
    let mut rows = Vec::new();
    for name in &args.models {
        let mut model = model_arg::resolve(name)?;
        if let Some(size) = args.input_size {
            model.spec.input_size = size;
        }
        let c = Complexity::of(&model.spec).with_context(|| format!("model {name}"))?;
        rows.push(ComplexityRow {
            model: model.name,
            input_size: c.input_size,
            params: c.params,
            macs: c.macs,
            stages: c.stages,
            layers: if args.layers || !matches!(args.format, Format::Json) {
                Some(c.layers)
            } else {
                None
            },
        });
    }
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv if args.layers => {
            println!("model,input_size,layer,output_size,params,macs");
            for r in &rows {
                for l in r.layers.iter().flatten() {
                    println!(
                        "{},{},{},{},{},{}",
                        r.model, r.input_size, l.name, l.output_size, l.params, l.macs
                    );
                }
            }
        }
        Format::Csv => {
            println!("model,input_size,params,macs");
            for r in &rows {
                println!("{},{},{},{}", r.model, r.input_size, r.params, r.macs);
            }
        }
        Format::Table => print!("{}", complexity_table(&rows, args.layers)),
    }
    Ok(())
}

/// Stage-by-stage, models side by side, as the paper's Table 1.
fn complexity_table(rows: &[ComplexityRow], with_layers: bool) -> String {
    let mut stage_names: Vec<String> = Vec::new();
    for r in rows {
        for s in &r.stages {
            if !stage_names.contains(&s.stage) {
                stage_names.push(s.stage.clone());
            }
        }
    }
    let mut headers = vec!["stage".to_string()];
    for r in rows {
        headers.push(format!(
            "{} (output, {}x{} input)",
            r.model, r.input_size, r.input_size
        ));
        headers.push("params".into());
        headers.push("MACs".into());
    }
    let mut t = Table::new(headers);
    for stage in &stage_names {
        let mut cells = vec![stage.clone()];
        for r in rows {
            match r.stages.iter().find(|s| &s.stage == stage) {
                Some(s) => {
                    cells.push(format!(
                        "{}x{}  {}",
                        s.output_size, s.output_size, s.structure
                    ));
                    cells.push(short(s.params));
                    cells.push(short(s.macs));
                }
                None => cells.extend(["".to_string(), "".to_string(), "".to_string()]),
            }
        }
        t.row(cells);
    }
    let mut params = vec!["# params".to_string()];
    let mut macs = vec!["FLOPs (multiply-adds)".to_string()];
    let mut paper = vec!["paper (Table 1)".to_string()];
    for r in rows {
        params.extend([
            format!("{} ({})", thousands(r.params), scientific(r.params)),
            String::new(),
            String::new(),
        ]);
        macs.extend([
            format!("{} ({})", thousands(r.macs), scientific(r.macs)),
            String::new(),
            String::new(),
        ]);
        let published = if r.input_size == 224 {
            paper_table_1(&r.model)
        } else {
            None
        };
        paper.extend([
            published.unwrap_or("").to_string(),
            String::new(),
            String::new(),
        ]);
    }
    t.row(params);
    t.row(macs);
    // The paper's figures are for 224x224 inputs only.
    if rows
        .iter()
        .any(|r| r.input_size == 224 && paper_table_1(&r.model).is_some())
    {
        t.row(paper);
    }
    let mut out = t.render();
    if with_layers {
        for r in rows {
            let mut lt = Table::new(["layer", "output", "params", "MACs"]);
            for l in r.layers.iter().flatten() {
                lt.row([
                    l.name.clone(),
                    format!("{}x{}", l.output_size, l.output_size),
                    thousands(l.params),
                    thousands(l.macs),
                ]);
            }
            out.push_str(&format!("\n{}:\n{}", r.model, lt.render()));
        }
    }
    out
}

fn preserve(template: &str, args: &ComplexityArgs) -> Result<()> {
    let mut model = model_arg::resolve(template)?;
    if let Some(size) = args.input_size {
        model.spec.input_size = size;
    }
    if args.stage == 0 {
        bail!("--stage starts at 1 (the first residual stage, the paper's conv2)");
    }
    let rows = preserve_complexity(&model.spec, args.stage - 1, &args.cardinality)?;
    match args.format {
        Format::Json => print_json(&rows)?,
        Format::Csv => {
            println!("cardinality,bottleneck_width,group_width,block_params");
            for r in &rows {
                println!(
                    "{},{},{},{}",
                    r.cardinality, r.bottleneck_width, r.group_width, r.block_params
                );
            }
        }
        Format::Table => {
            let spec = &model.spec;
            let stage = args.stage - 1;
            let target = cardinal_zoo::solver::block_params(
                spec.block,
                spec.stage_out_channels(stage),
                spec.cardinality,
                spec.path_width(stage),
            );
            println!(
                "Preserved complexity (paper Table 2): template {} {}x{}d, stage {} (conv{}), {} params per block\n",
                model.name,
                spec.cardinality,
                spec.path_width(stage),
                args.stage,
                args.stage + 1,
                thousands(target)
            );
            let mut t = Table::new([
                "cardinality C",
                "bottleneck width d",
                "width of group conv",
                "block params",
                "vs template",
            ]);
            for r in &rows {
                t.row([
                    r.cardinality.to_string(),
                    r.bottleneck_width.to_string(),
                    r.group_width.to_string(),
                    thousands(r.block_params),
                    format!(
                        "{:+.1}%",
                        100.0 * (r.block_params as f64 / target as f64 - 1.0)
                    ),
                ]);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

fn equivalence(args: EquivalenceArgs) -> Result<bool> {
    let mut model = model_arg::resolve(&args.model)?;
    model.spec.input_size = args.input_size;
    if args.batch_size < 2 {
        bail!("--batch-size must be at least 2: train-mode BN needs two samples per channel");
    }
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let started = std::time::Instant::now();
    let checks: Vec<Check> = equivalence::run_all_with_progress(
        &model.spec,
        args.seed,
        args.batch_size,
        dtype,
        &mut |step| spinner.set_message(format!("{}: {step}", model.name)),
    )
    .with_context(|| format!("equivalence checks on {}", model.name))?;
    spinner.finish_and_clear();
    eprintln!("checked in {:.1} s", started.elapsed().as_secs_f64());
    let failed = checks.iter().filter(|c| !c.passed).count();
    match args.format {
        Format::Json => print_json(&checks)?,
        Format::Csv => {
            println!("check,tensor,max_abs_diff,tolerance,passed");
            for c in &checks {
                println!(
                    "\"{}\",{},{:e},{:e},{}",
                    c.check,
                    c.tensor.as_deref().unwrap_or(""),
                    c.max_abs_diff,
                    c.tolerance,
                    c.passed
                );
            }
        }
        Format::Table => {
            println!(
                "Block forms of {} ({}), {:?}, seed {}, batch {} at {}x{}; tolerance {:.0e} of each reference's largest magnitude (per tensor for weight gradients and BN statistics: the row shows the tensor closest to its tolerance)\n",
                model.name,
                model.spec.template(),
                dtype,
                args.seed,
                args.batch_size,
                args.input_size,
                args.input_size,
                equivalence::RELATIVE_TOLERANCE
            );
            let mut t = Table::new(["check", "max |diff|", "tolerance", "result"]);
            for c in &checks {
                let check = match &c.tensor {
                    Some(tensor) => format!("{} [{tensor}]", c.check),
                    None => c.check.clone(),
                };
                t.row([
                    check,
                    format!("{:.2e}", c.max_abs_diff),
                    format!("{:.2e}", c.tolerance),
                    if c.passed {
                        "ok".to_string()
                    } else {
                        "FAILED".to_string()
                    },
                ]);
            }
            print!("{}", t.render());
            if failed == 0 {
                println!(
                    "\nall {} checks agree: the forms compute one function",
                    checks.len()
                );
            } else {
                println!("\n{failed} of {} checks FAILED", checks.len());
            }
        }
    }
    Ok(failed == 0)
}
