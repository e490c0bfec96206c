//! `reports/<experiment>/README.md`: question, setup, tables, figures, conclusion and the
//! list of runs; and the terminal comparison of `cardinal compare`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::comparison::{comparisons, trend};
use crate::conclusion::{conclude, paper_trend_text, trend_sentence, METHOD};
use crate::store::{f64s, scan_run, strings, Run};
use crate::summary::{summarize, Config};
use crate::table::{self, has_paper_cardinality, Table};
use crate::{figure, Error, Result};

/// What the caller (which knows the experiment file) tells the report.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    pub experiment: String,
    pub question: String,
    /// The preset the runs were resolved with (None: the experiment has none).
    pub preset: Option<String>,
    /// `key=value` overrides on top of the preset.
    pub overrides: Vec<String>,
    /// Setup lines (name, value) such as the dataset and the recipe.
    pub setup: Vec<(String, String)>,
    /// The run directories of the experiment's cells, in cell order.
    pub runs: Vec<PathBuf>,
    /// The command that reproduces the runs and this report.
    pub reproduce: String,
    /// The commit the report is written at, and the date (UTC).
    pub commit: Option<String>,
    pub generated: String,
    /// The half-width (percentage points) the paired intervals should reach; the report
    /// gives the seeds it takes at the spread measured.
    pub target_half_width: Option<f64>,
}

/// What `write_report` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub readme: PathBuf,
    pub figures: Vec<PathBuf>,
    pub finished: usize,
    pub total: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Writes `out/README.md` and the figures beside it from the finished runs among
/// `input.runs`; refuses when none has finished.
pub fn write_report(input: &ReportInput, out: &Path) -> Result<Written> {
    let runs = input
        .runs
        .iter()
        .map(|dir| Run::open(dir))
        .collect::<Result<Vec<_>>>()?;
    let finished: Vec<&Run> = runs.iter().filter(|r| r.finished()).collect();
    if finished.is_empty() {
        let where_ = input
            .runs
            .first()
            .and_then(|d| d.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "runs".into());
        return Err(Error::NoRuns(format!(
            "no finished run of {} under {where_} ({} expected){}: train it first with `cardinal ablate {}`",
            input.experiment,
            input.runs.len(),
            input
                .preset
                .as_ref()
                .map(|p| format!(" for preset {p}"))
                .unwrap_or_default(),
            input.experiment
        )));
    }
    let configs = summarize(&finished)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let figures = figure::all(&configs, out)?;

    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", title(input));
    let _ = writeln!(md, "> {}\n", input.question.trim());
    let _ = writeln!(
        md,
        "{} of {} runs finished{}. Written by `cardinal report` on {}{}.\n",
        finished.len(),
        runs.len(),
        if finished.len() < runs.len() {
            "; the tables and figures cover the finished ones (see [Runs](#runs))"
        } else {
            ""
        },
        input.generated,
        input
            .commit
            .as_ref()
            .map(|c| format!(" at commit {c}"))
            .unwrap_or_default()
    );

    md.push_str("## Setup\n\n| | |\n|---|---|\n");
    let preset = match (&input.preset, input.overrides.is_empty()) {
        (Some(p), true) => p.clone(),
        (Some(p), false) => format!("{p}, with {}", input.overrides.join(" ")),
        (None, true) => "none".into(),
        (None, false) => input.overrides.join(" "),
    };
    let _ = writeln!(md, "| Preset | {preset} |");
    for (name, value) in &input.setup {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let _ = writeln!(md, "| Precision | {} |", precision_line(&configs));
    for (name, value) in provenance(&finished) {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let mut wall = 0.0;
    for run in &finished {
        wall += last_test(run)?.1.unwrap_or(0.0);
    }
    let _ = writeln!(
        md,
        "| Wall time | {} summed over the {} finished runs (Trained gives the span, shorter than the sum where runs trained side by side with `--jobs`) |",
        duration(wall),
        finished.len()
    );
    let _ = writeln!(
        md,
        "| Reproduce | `{}`: the runs are deterministic, so it gives these metrics bit for bit on a machine with the same instruction-set path, thread count and precision |\n",
        input.reproduce
    );

    md.push_str("## Complexity\n\n");
    md.push_str(&table::complexity(&configs).markdown());
    md.push_str("\nParams count conv and fc weights, fc bias and BN affine parameters; MACs are the multiply-adds of conv and fc layers for one image (the paper's FLOPs).");
    if has_paper_cardinality(&configs) {
        md.push_str(" The paper's column is its Table 2: the widths that preserve the complexity of ResNet-50's first stage on ImageNet, for the same C.");
    }
    md.push_str("\n\n## Errors\n\n");
    md.push_str(&table::errors(&configs).markdown());
    md.push_str("\nTest error on the dataset's test split; mean ± sample std over seeds (a single value for one seed); the lowest final error in bold when every configuration has several seeds. The best error is the lowest test error over epochs, picked on the test set itself, so it is optimistic. Train error is measured on augmented images during each epoch.");
    if has_paper_cardinality(&configs) {
        md.push_str(" The paper's column is **a different dataset and scale**: ImageNet-1K top-1 error of ResNet/ResNeXt-50 at the same cardinality (Table 3, 224x224 single crop), given for the trend, not as a target.");
    }
    let unsteady: Vec<String> = configs
        .iter()
        .filter(|c| !table::steady(c))
        .map(|c| format!("{} ({:.1}x)", c.label, c.throughput_variation))
        .collect();
    if !unsteady.is_empty() {
        let _ = write!(
            md,
            "\n\n† Throughput varied by more than {:.0}% between the epochs of a run (fastest / slowest epoch: {}): other work shared the machine, so these timings are not comparable; `cardinal bench train` measures speed side by side.",
            (table::UNSTEADY - 1.0) * 100.0,
            unsteady.join(", ")
        );
    }
    md.push_str(&comparisons_section(&configs, input.target_half_width));
    md.push_str(&trend_section(&configs));
    md.push_str("\n\n## Figures\n\n");
    for f in &figures {
        let _ = writeln!(
            md,
            "### {}\n\n![{}]({}.svg)\n\n{} ([PNG]({}.png))\n",
            f.title, f.title, f.stem, f.caption, f.stem
        );
    }
    md.push_str("## Conclusion\n\n");
    for line in conclude(&configs) {
        let _ = writeln!(md, "- {line}");
    }
    let mut absent: Vec<&str> = Vec::new();
    for run in &runs {
        if !configs.iter().any(|c| c.label == run.label) && !absent.contains(&run.label.as_str()) {
            absent.push(&run.label);
        }
    }
    if !absent.is_empty() {
        let _ = writeln!(
            md,
            "- Not in the tables, figures or comparisons (no finished run yet): {}.",
            absent.join(", ")
        );
    }
    let _ = writeln!(md, "\n{METHOD}");

    md.push_str("\n## Runs\n\n");
    md.push_str(&runs_table(&runs)?.markdown());

    let readme = out.join("README.md");
    // Temp file + rename, so a crash never leaves half a report.
    cardinal_results::write_atomic(&readme, md.as_bytes())?;
    let mut written: Vec<PathBuf> = Vec::new();
    for f in &figures {
        written.push(f.svg(out));
        written.push(f.png(out));
    }
    Ok(Written {
        readme,
        figures: written,
        finished: finished.len(),
        total: runs.len(),
    })
}

/// "f32", or each precision with its configurations when they differ.
fn precision_line(configs: &[Config]) -> String {
    let mut by_precision: Vec<(String, Vec<&str>)> = Vec::new();
    for c in configs {
        match by_precision.iter_mut().find(|(p, _)| *p == c.precision) {
            Some((_, labels)) => labels.push(&c.label),
            None => by_precision.push((c.precision.clone(), vec![&c.label])),
        }
    }
    match by_precision.as_slice() {
        [(only, _)] => only.clone(),
        _ => by_precision
            .iter()
            .map(|(p, labels)| format!("{p} ({})", labels.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The "Comparisons" section: each configuration against its reference, paired over seeds.
fn comparisons_section(configs: &[Config], target_half_width: Option<f64>) -> String {
    let rows = comparisons(configs);
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n\n## Comparisons\n\n");
    md.push_str(&table::comparisons(&rows, configs, target_half_width).markdown());
    md.push_str("\nFinal top-1 test error of each configuration minus its reference's, paired by seed, in percentage points (negative: lower error than the reference). Verdicts are Holm-corrected over the table's rows; the method is under the conclusion. The standard deviation is that of the per-seed differences: the seed-to-seed spread that pairing leaves.");
    if let Some(w) = target_half_width {
        let _ = write!(
            md,
            " The experiment asks for 95% intervals of at most ±{w} points: the seeds column is the fewest seeds whose interval would be that narrow if the differences kept the spread measured here (t interval, n seeds: t(n - 1) x std / sqrt(n)); a spread measured on few seeds is itself uncertain, so read it as a first sizing."
        );
    }
    if has_paper_cardinality(configs) {
        md.push_str(" The paper's column is the same difference in its Table 3 (ImageNet-1K, 50 layers), for the trend, not as a target.");
    }
    let unmatched: Vec<String> = rows
        .iter()
        .filter_map(|c| {
            let seeds = &c.paired.as_ref().ok()?.unmatched;
            (!seeds.is_empty()).then(|| {
                let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
                format!(
                    "{} vs {}: seeds {}",
                    c.config.label,
                    c.reference.label,
                    seeds.join(", ")
                )
            })
        })
        .collect();
    if !unmatched.is_empty() {
        let _ = write!(
            md,
            " Seeds that only one side of a comparison has are not in it (no partner to pair with): {}.",
            unmatched.join("; ")
        );
    }
    md
}

/// The "Trend" section of a cardinality sweep: per-seed slopes against log2 C, their mean
/// and its interval, in one sentence and a table.
fn trend_section(configs: &[Config]) -> String {
    let Some(trend) = trend(configs) else {
        return String::new();
    };
    let mut md = String::from("\n\n## Trend\n\n");
    md.push_str(&trend_sentence(&trend));
    md.push_str("\n\n");
    md.push_str(&table::trend(&trend).markdown());
    let cardinalities: Vec<String> = trend.cardinalities.iter().map(usize::to_string).collect();
    let _ = write!(
        md,
        "\nPer seed, the least-squares slope of final top-1 test error (percentage points) against log2 C over C = {}; then the mean slope over seeds with its 95% t interval. Error falls with C when the interval lies entirely below 0.",
        cardinalities.join(", ")
    );
    if !trend.left_out.is_empty() {
        let seeds: Vec<String> = trend.left_out.iter().map(u64::to_string).collect();
        let _ = write!(
            md,
            " Left out: {} {} (not every cardinality has {} exactly once).",
            if seeds.len() == 1 { "seed" } else { "seeds" },
            seeds.join(", "),
            if seeds.len() == 1 { "it" } else { "them" }
        );
    }
    if has_paper_cardinality(configs) {
        md.push(' ');
        md.push_str(&paper_trend_text());
    }
    md
}

/// The experiment, and the preset and overrides that chose its runs: `cardinality`,
/// `cardinality, preset quick`, `cardinality, preset full, train.epochs=2`.
fn title(input: &ReportInput) -> String {
    let mut title = input.experiment.clone();
    if let Some(preset) = &input.preset {
        title.push_str(&format!(", preset {preset}"));
    }
    for o in &input.overrides {
        title.push_str(&format!(", {o}"));
    }
    title
}

/// Machine, threads, commits and dates, from the runs' meta.json.
fn provenance(runs: &[&Run]) -> Vec<(String, String)> {
    let metas: Vec<_> = runs.iter().filter_map(|r| r.meta.as_ref()).collect();
    let join = |values: BTreeSet<String>| values.into_iter().collect::<Vec<_>>().join(", ");
    let hosts = join(metas.iter().filter_map(|m| m.host.clone()).collect());
    let threads = join(
        metas
            .iter()
            .filter_map(|m| m.threads.map(|t| t.to_string()))
            .collect(),
    );
    let cpus = join(metas.iter().filter_map(|m| m.cpu.clone()).collect());
    let devices = join(metas.iter().filter_map(|m| m.device.clone()).collect());
    let isas = join(metas.iter().filter_map(|m| m.isa.clone()).collect());
    let plural = if threads == "1" { "" } else { "s" };
    let mut machine = format!("host {hosts}, {threads} thread{plural} a run");
    if !cpus.is_empty() {
        machine.push_str(&format!(", {cpus}"));
    } else if let Some(cpu) = local_cpu(&hosts) {
        machine.push_str(&format!(
            ", {cpu} (read when this report was written on the same host)"
        ));
    }
    if !isas.is_empty() {
        machine.push_str(&format!(", products on {isas}"));
    }
    if !devices.is_empty() {
        machine.push_str(&format!(", device {devices}"));
    }
    let sessions: Vec<_> = metas.iter().flat_map(|m| m.sessions.iter()).collect();
    let commits = join(
        sessions
            .iter()
            .filter_map(|s| {
                let commit = s.git_commit.as_ref()?;
                let short: String = commit.chars().take(10).collect();
                Some(if s.git_dirty == Some(true) {
                    format!("{short} (with uncommitted changes)")
                } else {
                    short.to_string()
                })
            })
            .collect(),
    );
    let builds = join(
        sessions
            .iter()
            .filter_map(|s| {
                let commit = s.build_commit.as_ref()?;
                let dirty = commit.ends_with("-dirty");
                let short: String = commit.trim_end_matches("-dirty").chars().take(10).collect();
                Some(if dirty {
                    format!("{short} (with uncommitted changes)")
                } else {
                    short
                })
            })
            .collect(),
    );
    let start = sessions.iter().filter_map(|s| s.start.clone()).min();
    let end = sessions.iter().filter_map(|s| s.end.clone()).max();
    let versions = join(
        metas
            .iter()
            .filter_map(|m| {
                Some(format!(
                    "cardinal {}, candle {}",
                    m.cardinal_version.as_deref()?,
                    m.candle_version.as_deref()?
                ))
            })
            .collect(),
    );
    let mut lines = vec![("Machine".to_string(), machine)];
    if !builds.is_empty() {
        lines.push(("Binary built from".into(), builds));
    }
    if !commits.is_empty() {
        lines.push(("Checkout when trained".into(), commits));
    }
    if let (Some(start), Some(end)) = (start, end) {
        lines.push(("Trained".into(), format!("{start} to {end}")));
    }
    if !versions.is_empty() {
        lines.push(("Versions".into(), versions));
    }
    lines
}

/// The CPU of this machine when it is the host the runs name (runs written before meta.json
/// recorded the CPU).
fn local_cpu(hosts: &str) -> Option<String> {
    let here = std::fs::read_to_string("/etc/hostname").ok()?;
    if here.trim().is_empty() || here.trim() != hosts {
        return None;
    }
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

fn runs_table(runs: &[Run]) -> Result<Table> {
    let mut table = Table {
        header: [
            "run",
            "configuration",
            "seed",
            "state",
            "last test top-1 err (%)",
            "wall time",
            "precision",
            "checkout when trained",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
        numeric: vec![false, false, true, false, true, true, false, false],
    };
    for run in runs {
        let (error, wall, precision) = if run.metrics_path().is_file() {
            last_test(run)?
        } else {
            (None, None, None)
        };
        table.rows.push(vec![
            format!("`{}`", run.run_id),
            run.label.clone(),
            run.seed
                .map(|s| s.to_string())
                .unwrap_or_else(|| "–".into()),
            run.state(),
            error
                .map(|e| format!("{:.2}", e * 100.0))
                .unwrap_or_else(|| "–".into()),
            wall.map(duration).unwrap_or_else(|| "–".into()),
            precision.unwrap_or_else(|| "–".into()),
            commits(run),
        ]);
    }
    Ok(table)
}

/// The commits of a run's sessions, short, marked when the tree had uncommitted changes.
fn commits(run: &Run) -> String {
    let mut out: Vec<String> = Vec::new();
    for session in run.meta.iter().flat_map(|m| &m.sessions) {
        if let Some(commit) = &session.git_commit {
            let mut short: String = commit.chars().take(10).collect();
            if session.git_dirty == Some(true) {
                short.push_str(" (dirty)");
            }
            if !out.contains(&short) {
                out.push(short);
            }
        }
    }
    if out.is_empty() {
        "–".into()
    } else {
        out.join(", ")
    }
}

/// The last end-of-epoch test error, the run's wall seconds so far and the precision it
/// trained with.
fn last_test(run: &Run) -> Result<(Option<f64>, Option<f64>, Option<String>)> {
    let df = scan_run(run)?
        .filter(col("split").eq(lit("test")))
        .sort(["epoch"], SortMultipleOptions::default())
        .collect()?;
    let errors = f64s(&df, "top1_err")?;
    let walls = f64s(&df, "wall_seconds")?;
    let precisions = strings(&df, "precision")?;
    Ok((
        errors.last().copied().flatten(),
        walls.last().copied().flatten(),
        precisions.last().cloned(),
    ))
}

/// 4696 -> "1 h 18 min", 272 -> "4 min 32 s".
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// A side-by-side table of runs (any experiments): configurations are grouped over seeds;
/// runs of one label trained with different recipes (epochs, images) are kept apart.
pub fn compare(mut runs: Vec<Run>) -> Result<Table> {
    runs.retain(|r| r.metrics_path().is_file());
    // The same run named twice (an experiment and one of its run ids) counts once.
    let mut seen = BTreeSet::new();
    runs.retain(|r| seen.insert(std::fs::canonicalize(&r.dir).unwrap_or_else(|_| r.dir.clone())));
    // Configurations in grid order (C, then d), not in directory-name order.
    let number = |r: &Run, key: &str| r.config_value(key).and_then(|v| v.as_u64()).unwrap_or(0);
    runs.sort_by_key(|r| {
        (
            number(r, "spec.cardinality"),
            number(r, "spec.bottleneck_width"),
            r.label.clone(),
            r.seed,
        )
    });
    if runs.is_empty() {
        return Err(Error::NoRuns(
            "none of these runs has results (metrics.csv) yet".into(),
        ));
    }
    let experiment = |r: &Run| {
        r.config_value("experiment")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let recipe = |r: &Run| {
        let epochs = r.config_value("train.epochs").and_then(|v| v.as_u64());
        let images = r
            .config_value("train.train_images")
            .and_then(|v| v.as_u64());
        let mut s = epochs.map(|e| format!("{e} epochs")).unwrap_or_default();
        if let Some(n) = images {
            s.push_str(&format!(", {n} images"));
        }
        // Runs trained at different precisions are different experiments.
        if let Some(p) = r.config_value("train.precision").and_then(|v| v.as_str()) {
            s.push_str(&format!(", {p}"));
        }
        s
    };
    let experiments: BTreeSet<String> = runs.iter().map(experiment).collect();
    let labelled: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            let label = if experiments.len() > 1 {
                format!("{}: {}", experiment(r), r.label)
            } else {
                r.label.clone()
            };
            (label, recipe(r))
        })
        .collect();
    for (run, (label, recipe)) in runs.iter_mut().zip(&labelled) {
        let recipes: BTreeSet<&String> = labelled
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, r)| r)
            .collect();
        run.label = if recipes.len() > 1 {
            format!("{label} ({recipe})")
        } else {
            label.clone()
        };
        // Seeds at different points of training must not be averaged together.
        if !run.finished() {
            run.label = format!("{} [{}]", run.label, run.state());
        }
    }
    let refs: Vec<&Run> = runs.iter().collect();
    let configs = summarize(&refs)?;
    let mut errors = table::errors(&configs);
    let complexity = table::complexity(&configs);
    // params and MACs beside the errors: the comparison at a glance.
    errors.header.insert(1, "params".into());
    errors.header.insert(2, "MACs".into());
    errors.numeric.insert(1, true);
    errors.numeric.insert(2, true);
    for (row, c) in errors.rows.iter_mut().zip(&complexity.rows) {
        row.insert(1, c[4].clone());
        row.insert(2, c[5].clone());
    }
    Ok(errors)
}
