//! `cardinal ablate NAME --launcher slurm`: the sweep as a Slurm job array, one task per
//! cell, plus a report job that runs after every task succeeded and writes the report.
//!
//! Each task runs `cardinal ablate NAME --cell $SLURM_ARRAY_TASK_ID`, which is idempotent (a
//! finished cell is skipped, an interrupted one resumes from its checkpoint), so requeued
//! or retried tasks are safe; runs write into their own directories with atomic renames, so
//! tasks on many nodes can share one `runs/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Launcher {
    /// Train the cells here, one after another.
    #[default]
    Local,
    /// Write a Slurm job array (runs/NAME/slurm/array.sbatch) and a report job that depends
    /// on it (report.sbatch); submit both with --submit.
    Slurm,
}

#[derive(Args)]
pub struct SlurmArgs {
    #[arg(long, value_enum, default_value_t)]
    pub launcher: Launcher,
    /// Slurm partition (default: the cluster's default partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Wall-time limit per task, in Slurm's format (e.g. 02:00:00 or 1-00:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPU cores per task; the task trains with this many threads.
    #[arg(long, default_value_t = 2)]
    pub cpus_per_task: usize,
    /// GPUs per task.
    #[arg(long)]
    pub gpus_per_task: Option<usize>,
    /// At most this many cells at once (the array's %K throttle).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// Also submit: `sbatch` the array, then the report job with --dependency=afterany.
    #[arg(long)]
    pub submit: bool,
}

/// What the job scripts need to re-run this exact sweep on a compute node.
pub struct Sweep<'a> {
    pub name: &'a str,
    pub experiment: &'a Path,
    pub preset: Option<&'a str>,
    pub overrides: &'a [String],
    pub runs_dir: &'a Path,
    pub reports_dir: &'a Path,
    pub device: crate::device_arg::DeviceArg,
    pub cells: usize,
}

/// Single-quotes a word for bash.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The `cardinal ablate ...` words of an array task.
fn ablate_command(sweep: &Sweep, binary: &Path) -> Result<String> {
    let mut words = vec![
        quote(&binary.display().to_string()),
        "ablate".into(),
        quote(&absolute(sweep.experiment)?.display().to_string()),
        "--runs-dir".into(),
        quote(&absolute(sweep.runs_dir)?.display().to_string()),
    ];
    if sweep.device != crate::device_arg::DeviceArg::Cpu {
        words.push("--device".into());
        words.push(sweep.device.to_string());
    }
    words.extend(selection(sweep));
    Ok(words.join(" "))
}

/// The `cardinal report ...` words of the report job: the same runs, the same report.
fn report_command(sweep: &Sweep, binary: &Path) -> Result<String> {
    let mut words = vec![
        quote(&binary.display().to_string()),
        "report".into(),
        quote(&absolute(sweep.experiment)?.display().to_string()),
        "--runs-dir".into(),
        quote(&absolute(sweep.runs_dir)?.display().to_string()),
        "--reports-dir".into(),
        quote(&absolute(sweep.reports_dir)?.display().to_string()),
    ];
    words.extend(selection(sweep));
    Ok(words.join(" "))
}

/// The preset and overrides, which pick the cells.
fn selection(sweep: &Sweep) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(preset) = sweep.preset {
        words.push("--preset".into());
        words.push(quote(preset));
    }
    words.extend(sweep.overrides.iter().map(|o| quote(o)));
    words
}

fn header(sweep: &Sweep, args: &SlurmArgs, job: &str, log: &Path) -> Result<String> {
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=cardinal-{}-{job}", sweep.name),
        format!("#SBATCH --chdir={}", absolute(Path::new("."))?.display()),
        format!("#SBATCH --output={}", log.display()),
        "#SBATCH --ntasks=1".into(),
        format!("#SBATCH --cpus-per-task={}", args.cpus_per_task),
    ];
    if let Some(partition) = &args.partition {
        lines.push(format!("#SBATCH --partition={partition}"));
    }
    if let Some(time) = &args.time {
        lines.push(format!("#SBATCH --time={time}"));
    }
    Ok(lines.join("\n"))
}

/// Writes runs/NAME/slurm/{array,report}.sbatch; returns their paths.
pub fn write_scripts(sweep: &Sweep, args: &SlurmArgs) -> Result<(PathBuf, PathBuf)> {
    if sweep.cells == 0 {
        bail!("{} has no cells to submit", sweep.experiment.display());
    }
    if args.cpus_per_task == 0 {
        bail!("--cpus-per-task must be at least 1");
    }
    if args.max_parallel == Some(0) {
        bail!("--max-parallel must be at least 1");
    }
    let dir = absolute(&sweep.runs_dir.join(sweep.name).join("slurm"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let binary = std::env::current_exe().context("cannot locate the cardinal binary")?;
    let command = ablate_command(sweep, &binary)?;

    let mut array = header(sweep, args, "cells", &dir.join("cell-%a.out"))?;
    let throttle = args
        .max_parallel
        .map(|k| format!("%{k}"))
        .unwrap_or_default();
    array.push_str(&format!(
        "\n#SBATCH --array=0-{}{throttle}",
        sweep.cells - 1
    ));
    if let Some(gpus) = args.gpus_per_task {
        array.push_str(&format!("\n#SBATCH --gpus-per-task={gpus}"));
    }
    array.push_str(&format!(
        "\n\n# One cell of {} per array task; re-running a task skips or resumes its cell.\n\
         set -euo pipefail\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n\
         exec {command} --cell \"$SLURM_ARRAY_TASK_ID\"\n",
        sweep.experiment.display(),
        args.cpus_per_task
    ));

    // Every cell is finished by then, so this only reads the results and writes the report.
    let mut report = header(sweep, args, "report", &dir.join("report.out"))?;
    report.push_str(&format!(
        "\n\n# After every array task ended (submitted with --dependency=afterany: a diverged cell\n\
         # exits 1, and the report lists it rather than waiting forever):\n\
         # the sweep's report, as `just ablate` writes it on one machine.\n\
         set -euo pipefail\n\
         exec {}\n",
        report_command(sweep, &binary)?
    ));

    let array_path = dir.join("array.sbatch");
    let report_path = dir.join("report.sbatch");
    for (path, text) in [(&array_path, &array), (&report_path, &report)] {
        cardinal_train::run::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok((array_path, report_path))
}

/// `sbatch --parsable` and the job id it prints ("ID" or "ID;cluster").
fn sbatch(args: &[&str]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "sbatch is not on PATH: submit from a Slurm login node, or run the written \
                 scripts there with `sbatch`"
            ),
            _ => anyhow::anyhow!("cannot run sbatch: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed no job id: {stdout:?}");
    }
    Ok(id)
}

/// Writes the scripts, prints where, and with --submit submits them (array first).
pub fn launch(sweep: &Sweep, args: &SlurmArgs) -> Result<()> {
    let (array, report) = write_scripts(sweep, args)?;
    println!("wrote {}", array.display());
    println!("wrote {}", report.display());
    if !args.submit {
        println!(
            "submit with: sbatch {} (then the report job with --dependency=afterany:<array job id>), \
             or pass --submit",
            array.display()
        );
        return Ok(());
    }
    let array_id = sbatch(&[&array.display().to_string()])?;
    println!("array job {array_id}: {} cells", sweep.cells);
    // afterany, not afterok: a diverged cell exits 1, which would leave an afterok job
    // pending forever; the report lists unfinished cells instead.
    let dependency = format!("--dependency=afterany:{array_id}");
    let report_id = sbatch(&[&dependency, &report.display().to_string()])?;
    println!("report job {report_id} (after every task of job {array_id} ends)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_keeps_plain_words_and_escapes_the_rest() {
        assert_eq!(quote("train.epochs=3"), "train.epochs=3");
        assert_eq!(quote("seeds=[0,1]"), "'seeds=[0,1]'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
