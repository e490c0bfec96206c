//! `cardinal train` (one run) and `cardinal ablate` (an experiment's sweep).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use cardinal_train::experiment::parse_overrides;
use cardinal_train::{RunContext, RunSpec, State};
use cardinal_zoo::Precision;
use clap::Args;
use indicatif::MultiProgress;
use serde::Serialize;

use crate::device_arg::DeviceArg;
use crate::experiment_arg::ResolvedExperiment;
use crate::slurm::{self, Launcher, SlurmArgs, Sweep};
use crate::table::{thousands, Table};
use crate::{print_json, Format};

/// What both `train` and `ablate` take besides the experiment.
#[derive(Args)]
pub struct RunArgs {
    /// dotted key=value overrides, e.g. train.epochs=3 seeds=[0,1,2] model.form=A
    pub overrides: Vec<String>,
    /// Named preset of the experiment (e.g. quick, full; default: its default_preset).
    #[arg(long)]
    pub preset: Option<String>,
    /// Only this cell of the sweep (0-based, as `ablate --dry-run` lists them); finished
    /// cells are skipped, interrupted ones resume.
    #[arg(long)]
    pub cell: Option<usize>,
    /// Where runs are written (runs/<experiment>/<run-id>/).
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Train on cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`; the fused
    /// CPU kernels fall back to candle's own ops there).
    #[arg(long, value_parser = crate::device_arg::parse, default_value = "cpu")]
    pub device: DeviceArg,
    /// f32, or bf16-mixed (bf16 products with f32 sums, as PyTorch's bf16 autocast): the
    /// same as the override train.precision=P. Unset: the experiment's, else bf16-mixed
    /// where the CPU multiplies bf16 in hardware (AMX, AVX512-BF16) and f32 elsewhere.
    #[arg(long)]
    pub precision: Option<Precision>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

impl RunArgs {
    /// The key=value overrides as typed, then `--precision` as the override it stands for.
    fn overrides(&self) -> Result<Vec<String>> {
        let mut overrides = self.overrides.clone();
        if let Some(precision) = self.precision {
            let parsed = parse_overrides(&overrides)?;
            if let Some(i) = parsed.iter().position(|(key, _)| key == "train.precision") {
                bail!(
                    "--precision {precision} and the override `{}` both set train.precision; give one",
                    overrides[i]
                );
            }
            overrides.push(format!("train.precision={precision}"));
        }
        Ok(overrides)
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Experiment YAML file (see experiments/). It must describe one run, or pick one with
    /// --cell.
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct AblateArgs {
    /// Experiment name (experiments/NAME.yaml) or a YAML file.
    pub name: String,
    /// List the cells (run id, model, C, d, params, MACs, seed) without training.
    #[arg(long)]
    pub dry_run: bool,
    /// Train up to N cells at once, each on its own share of the cores (for machines with
    /// more cores than one small net uses well). 1 trains them one after another on all
    /// cores.
    #[arg(long, default_value_t = 1, value_parser = crate::at_least_one)]
    pub jobs: usize,
    /// Threads of each job with --jobs (default: the machine's cores divided by N, at
    /// least 1).
    #[arg(long, value_parser = crate::at_least_one)]
    pub threads_per_job: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Where the sweep's report is written when it ends (see `cardinal report`).
    #[arg(long, default_value = "reports")]
    pub reports_dir: PathBuf,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

fn pick(cells: Vec<RunSpec>, cell: Option<usize>) -> Result<Vec<RunSpec>> {
    match cell {
        None => Ok(cells),
        Some(i) if i < cells.len() => Ok(vec![cells[i].clone()]),
        Some(i) => bail!(
            "cell {i} is out of range: this experiment has cells 0..={}",
            cells.len() - 1
        ),
    }
}

#[derive(Serialize)]
struct CellRow {
    cell: usize,
    run_id: String,
    model: String,
    cardinality: usize,
    bottleneck_width: usize,
    form: String,
    params: u64,
    macs: u64,
    seed: u64,
    precision: String,
    labels: std::collections::BTreeMap<String, String>,
}

fn dry_run(cells: &[RunSpec], format: Format) -> Result<()> {
    let rows: Vec<CellRow> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| CellRow {
            cell: i,
            run_id: c.run_id(),
            model: c.model.clone(),
            cardinality: c.spec.cardinality,
            bottleneck_width: c.spec.bottleneck_width,
            form: format!("{:?}", c.spec.form),
            params: c.params,
            macs: c.macs,
            seed: c.seed,
            precision: c.train.precision.to_string(),
            labels: c.labels.clone(),
        })
        .collect();
    match format {
        Format::Json => print_json(&rows),
        _ => {
            let mut t = Table::new([
                "cell",
                "run id",
                "model",
                "C x d",
                "form",
                "params",
                "MACs",
                "precision",
                "seed",
            ]);
            for r in &rows {
                t.row([
                    r.cell.to_string(),
                    r.run_id.clone(),
                    r.model.clone(),
                    format!("{}x{}d", r.cardinality, r.bottleneck_width),
                    r.form.clone(),
                    thousands(r.params),
                    thousands(r.macs),
                    r.precision.clone(),
                    r.seed.to_string(),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ResultRow {
    run_id: String,
    model: String,
    cardinality: usize,
    bottleneck_width: usize,
    seed: u64,
    state: State,
    epochs: usize,
    final_test_top1_err: Option<f64>,
    best_test_top1_err: Option<f64>,
    final_test_top5_err: Option<f64>,
    train_images_per_sec: Option<f64>,
    wall_seconds: Option<f64>,
    dir: PathBuf,
}

/// How many cells train at once, and on how many threads each.
#[derive(Clone, Copy)]
struct Jobs {
    jobs: usize,
    threads_per_job: usize,
}

impl Jobs {
    const ONE: Jobs = Jobs {
        jobs: 1,
        threads_per_job: 0,
    };
}

fn run_cells(cells: &[RunSpec], run: &RunArgs, jobs: Jobs) -> Result<bool> {
    let (runs_dir, format) = (&run.runs_dir, run.format);
    let progress = MultiProgress::new();
    let ctx = RunContext {
        runs_dir: runs_dir.to_path_buf(),
        progress: &progress,
        stop_after_epochs: None,
        device: run.device.open()?,
    };
    let outcomes = cardinal_train::sweep_jobs(cells, &ctx, jobs.jobs, jobs.threads_per_job)?;
    let rows: Vec<ResultRow> = outcomes
        .iter()
        .zip(cells)
        .map(|(o, c)| {
            let tests: Vec<_> = o.rows.iter().filter(|r| r.split == "test").collect();
            let trains: Vec<_> = o.rows.iter().filter(|r| r.split == "train").collect();
            ResultRow {
                run_id: o.run_id.clone(),
                model: c.model.clone(),
                cardinality: c.spec.cardinality,
                bottleneck_width: c.spec.bottleneck_width,
                seed: c.seed,
                state: o.state,
                epochs: tests.len(),
                final_test_top1_err: tests.last().map(|r| r.top1_err),
                best_test_top1_err: tests
                    .iter()
                    .map(|r| r.top1_err)
                    .min_by(|a, b| a.total_cmp(b)),
                final_test_top5_err: tests.last().map(|r| r.top5_err),
                train_images_per_sec: (!trains.is_empty()).then(|| {
                    trains.iter().map(|r| r.images_per_sec).sum::<f64>() / trains.len() as f64
                }),
                wall_seconds: o.rows.last().map(|r| r.wall_seconds),
                dir: o.dir.clone(),
            }
        })
        .collect();
    let all_finished = rows.iter().all(|r| r.state == State::Finished);
    match format {
        Format::Json => print_json(&rows)?,
        _ => {
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v));
            let mut t = Table::new([
                "run id",
                "model",
                "C x d",
                "seed",
                "state",
                "epochs",
                "test top-1 err %",
                "best %",
                "top-5 %",
                "train img/s",
                "minutes",
            ]);
            for r in &rows {
                t.row([
                    r.run_id.clone(),
                    r.model.clone(),
                    format!("{}x{}d", r.cardinality, r.bottleneck_width),
                    r.seed.to_string(),
                    format!("{:?}", r.state).to_lowercase(),
                    r.epochs.to_string(),
                    pct(r.final_test_top1_err),
                    pct(r.best_test_top1_err),
                    pct(r.final_test_top5_err),
                    r.train_images_per_sec
                        .map_or("-".into(), |v| format!("{v:.0}")),
                    r.wall_seconds
                        .map_or("-".into(), |v| format!("{:.1}", v / 60.0)),
                ]);
            }
            print!("{}", t.render());
            if let Some(first) = rows.first() {
                println!(
                    "results: {}/<run-id>/metrics.csv",
                    first.dir.parent().unwrap_or(Path::new(".")).display()
                );
            }
        }
    }
    Ok(all_finished)
}

/// Exit status: true when every run finished (a diverged run makes it false).
pub fn train(args: TrainArgs) -> Result<bool> {
    let run = &args.run;
    let experiment =
        ResolvedExperiment::load_path(&args.config, run.preset.as_deref(), &run.overrides()?)?;
    let cells = experiment.cells;
    if cells.len() > 1 && run.cell.is_none() {
        bail!(
            "{} describes {} runs (a sweep); pick one with --cell N (0..={}) or run them all with `cardinal ablate {}`",
            args.config.display(),
            cells.len(),
            cells.len() - 1,
            args.config.display()
        );
    }
    let cells = pick(cells, run.cell)?;
    run_cells(&cells, run, Jobs::ONE)
}

pub fn ablate(args: AblateArgs) -> Result<bool> {
    let run = &args.run;
    // Resolved once: the same value trains the cells and writes the report.
    let overrides = run.overrides()?;
    let experiment = ResolvedExperiment::load(&args.name, run.preset.as_deref(), &overrides)?;
    if args.slurm.launcher == Launcher::Slurm && !args.dry_run {
        if run.cell.is_some() {
            bail!("--cell picks one cell to run here; --launcher slurm submits them all");
        }
        if args.jobs > 1 {
            bail!("--jobs runs cells side by side on this machine; with --launcher slurm, --max-parallel and --cpus-per-task say how many run at once and on how many cores");
        }
        let sweep = Sweep {
            name: &experiment.name,
            experiment: &experiment.path,
            preset: experiment.preset.as_deref(),
            overrides: &overrides,
            runs_dir: &run.runs_dir,
            reports_dir: &args.reports_dir,
            device: run.device,
            cells: experiment.cells.len(),
        };
        slurm::launch(&sweep, &args.slurm)?;
        return Ok(true);
    }
    let cells = pick(experiment.cells.clone(), run.cell)?;
    if args.dry_run {
        dry_run(&cells, run.format)?;
        return Ok(true);
    }
    if run.format != Format::Json {
        eprintln!(
            "{}: {} runs{}",
            experiment.path.display(),
            cells.len(),
            experiment
                .preset
                .as_ref()
                .map(|p| format!(" (preset {p})"))
                .unwrap_or_default()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = Jobs {
        jobs: args.jobs.min(cells.len().max(1)),
        threads_per_job: args.threads_per_job.unwrap_or((cores / args.jobs).max(1)),
    };
    if jobs.jobs > 1 && run.format != Format::Json {
        eprintln!(
            "{} cells at a time, {} thread{} each",
            jobs.jobs,
            jobs.threads_per_job,
            if jobs.threads_per_job == 1 { "" } else { "s" }
        );
    }
    let all_finished = run_cells(&cells, run, jobs)?;
    // A whole sweep ends with its report; one cell (a Slurm task) leaves that to the
    // summary job.
    if run.cell.is_none() {
        crate::report_cmd::write(&experiment, &run.runs_dir, &args.reports_dir, None)?;
    }
    Ok(all_finished)
}
