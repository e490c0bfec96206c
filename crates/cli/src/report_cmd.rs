//! `cardinal report` (an experiment's README with tables, figures and a conclusion) and
//! `cardinal compare` (runs side by side on the terminal).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cardinal_analysis::{ReportInput, Run};
use cardinal_train::RunSpec;
use clap::Args;

use crate::experiment_arg::{experiment_path, ResolvedExperiment};

#[derive(Args)]
pub struct ReportArgs {
    /// Experiment name (experiments/NAME.yaml) or a YAML file.
    pub name: String,
    /// The dotted key=value overrides the runs were trained with (they pick the runs).
    pub overrides: Vec<String>,
    /// The preset the runs were trained with (default: the experiment's default preset).
    #[arg(long)]
    pub preset: Option<String>,
    /// Where the runs are (runs/<experiment>/<run-id>/).
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Where reports go: REPORTS_DIR/NAME, REPORTS_DIR/NAME-PRESET for a preset other than
    /// the default, with a `-custom` suffix when overrides are given.
    #[arg(long, default_value = "reports")]
    pub reports_dir: PathBuf,
    /// Write the report into exactly this directory instead.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Experiment names (every run under runs/NAME), run directories or run ids.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Where runs are looked up.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Print a Markdown table instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
}

/// The report directory for a preset and overrides.
pub fn default_out(
    reports_dir: &Path,
    name: &str,
    preset: Option<&str>,
    default: Option<&str>,
    custom: bool,
) -> PathBuf {
    let mut dir = name.to_string();
    if let Some(p) = preset.filter(|p| Some(*p) != default) {
        dir.push('-');
        dir.push_str(p);
    }
    if custom {
        dir.push_str("-custom");
    }
    reports_dir.join(dir)
}

pub fn report(args: ReportArgs) -> Result<()> {
    let experiment = ResolvedExperiment::load(&args.name, args.preset.as_deref(), &args.overrides)?;
    write(
        &experiment,
        &args.runs_dir,
        &args.reports_dir,
        args.out.clone(),
    )?;
    Ok(())
}

/// Writes the report of a resolved experiment's cells and says where.
pub fn write(
    experiment: &ResolvedExperiment,
    runs_dir: &Path,
    reports_dir: &Path,
    out: Option<PathBuf>,
) -> Result<PathBuf> {
    let ResolvedExperiment {
        path,
        name,
        file,
        preset,
        overrides,
        cells,
        target_half_width,
    } = experiment;
    let default_preset = file.default_preset.as_deref();
    let out = out.unwrap_or_else(|| {
        default_out(
            reports_dir,
            name,
            preset.as_deref(),
            default_preset,
            !overrides.is_empty(),
        )
    });
    let mut reproduce = format!("just ablate {}", path_arg(path, name));
    if let Some(p) = preset.as_deref().filter(|p| Some(*p) != default_preset) {
        reproduce.push_str(&format!(" --preset {p}"));
    }
    for o in overrides {
        reproduce.push(' ');
        reproduce.push_str(o);
    }
    let input = ReportInput {
        experiment: name.clone(),
        question: file.question.clone(),
        preset: preset.clone(),
        overrides: overrides.clone(),
        setup: setup(cells),
        runs: cells.iter().map(|c| c.dir(runs_dir)).collect(),
        reproduce,
        commit: git_commit(),
        generated: cardinal_train::run::utc_now()[..10].to_string(),
        target_half_width: *target_half_width,
    };
    let written = cardinal_analysis::write_report(&input, &out)?;
    eprintln!(
        "wrote {} ({} of {} runs finished; {} figure files)",
        written.readme.display(),
        written.finished,
        written.total,
        written.figures.len()
    );
    Ok(written.readme)
}

fn path_arg(path: &Path, name: &str) -> String {
    if path == experiment_path(name) {
        name.to_string()
    } else {
        path.display().to_string()
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn setup(cells: &[RunSpec]) -> Vec<(String, String)> {
    let Some(first) = cells.first() else {
        return Vec::new();
    };
    let (data, train, spec) = (&first.dataset, &first.train, &first.spec);
    let images = |n: Option<usize>, what: &str| match n {
        Some(n) => format!("a fixed random sample of {n} {what} images"),
        None => format!("all {what} images"),
    };
    let dataset = format!(
        "{}: {}, {}{}",
        data.name,
        images(train.train_images, "training"),
        images(train.test_images, "test"),
        if data.augment.enabled {
            "; training images augmented (pad-and-crop, and flips where the dataset allows)"
        } else {
            "; no augmentation"
        }
    );
    // Models that share a block kind and stages are named together, so a sweep over
    // depths describes each depth it trained (the grouped widths are in the tables).
    let mut shapes: Vec<(String, Vec<&str>)> = Vec::new();
    for cell in cells {
        let stages: Vec<String> = cell
            .spec
            .stages
            .iter()
            .map(|s| format!("{}x{} (stride {})", s.blocks, s.planes, s.stride))
            .collect();
        let shape = format!(
            "{} blocks, stages (blocks x width) {}",
            format!("{:?}", cell.spec.block).to_lowercase(),
            stages.join(", ")
        );
        match shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, models)) if models.contains(&cell.model.as_str()) => {}
            Some((_, models)) => models.push(&cell.model),
            None => shapes.push((shape, vec![&cell.model])),
        }
    }
    let model = format!(
        "{}; input {}x{}x{}, {} classes",
        shapes
            .iter()
            .map(|(shape, models)| format!("{}: {shape}", models.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
        spec.in_channels,
        spec.input_size,
        spec.input_size,
        spec.classes
    );
    let reference = train
        .lr_reference_batch
        .map(|b| format!(" per batch of {b}, scaled linearly"))
        .unwrap_or_default();
    let recipe = format!(
        "{} epochs, batch {}, SGD lr {}{reference}, momentum {}{}, weight decay {}, {:?} schedule with {} warm-up epochs",
        train.epochs,
        train.batch_size,
        train.lr,
        train.momentum,
        if train.nesterov { " (Nesterov)" } else { "" },
        train.weight_decay,
        train.schedule,
        train.warmup_epochs
    )
    .replace("Cosine", "cosine")
    .replace("Step", "step")
    .replace("Constant", "constant");
    let seeds: BTreeSet<u64> = cells.iter().map(|c| c.seed).collect();
    // The first cell's recipe: the swept keys are in the tables.
    vec![
        ("Dataset".into(), dataset),
        ("Model".into(), model),
        ("Recipe".into(), recipe),
        (
            "Seeds".into(),
            seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ]
}

pub fn compare(args: CompareArgs) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for target in &args.targets {
        dirs.extend(resolve_target(target, &args.runs_dir)?);
    }
    let runs = dirs
        .iter()
        .map(|d| Run::open(d))
        .collect::<cardinal_analysis::Result<Vec<_>>>()?;
    let table = cardinal_analysis::compare(runs)?;
    if args.markdown {
        print!("{}", table.markdown());
    } else {
        print!("{}", table.text());
    }
    Ok(())
}

/// An experiment name (every run directory under runs/NAME), a run directory, or a run id
/// found under runs/*/.
fn resolve_target(target: &str, runs_dir: &Path) -> Result<Vec<PathBuf>> {
    let as_path = Path::new(target);
    if as_path.join("metrics.csv").is_file() || as_path.join("config.yaml").is_file() {
        return Ok(vec![as_path.to_path_buf()]);
    }
    let experiment_dir = runs_dir.join(target);
    if experiment_dir.is_dir() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&experiment_dir)
            .with_context(|| format!("cannot read {}", experiment_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("metrics.csv").is_file())
            .collect();
        dirs.sort();
        if dirs.is_empty() {
            bail!("{} has no run with results yet", experiment_dir.display());
        }
        return Ok(dirs);
    }
    let mut found = Vec::new();
    if let Ok(experiments) = std::fs::read_dir(runs_dir) {
        for e in experiments.flatten() {
            let candidate = e.path().join(target);
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    match found.len() {
        1 => Ok(found),
        0 => bail!(
            "`{target}` is neither a run directory, an experiment under {} nor a run id there",
            runs_dir.display()
        ),
        _ => bail!(
            "run id `{target}` exists in several experiments: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep over depths names the stages of each depth, not only the first model's.
    #[test]
    fn the_model_line_describes_every_depth_of_a_sweep() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/resnet-vs-resnext.yaml");
        let experiment = ResolvedExperiment::load_path(&path, None, &[]).unwrap();
        let rows = setup(&experiment.cells);
        let (_, model) = rows.iter().find(|(k, _)| k == "Model").unwrap();
        for (models, blocks) in [
            ("cpu_resnet11, cpu_resnext11_32x2d", 1),
            ("cpu_resnet20, cpu_resnext20_32x2d", 2),
            ("cpu_resnet29, cpu_resnext29_32x2d", 3),
        ] {
            let stages = format!(
                "{models}: bottleneck blocks, stages (blocks x width) {blocks}x32 (stride 1), {blocks}x64 (stride 2), {blocks}x128 (stride 2)"
            );
            assert!(model.contains(&stages), "{model}");
        }
        assert!(model.ends_with("; input 1x28x28, 10 classes"), "{model}");
    }
}
