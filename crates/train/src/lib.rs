//! cardinal-train: the recipe (SGD with momentum, schedules), the train/eval loop with
//! atomic per-epoch checkpoints, and experiments as YAML that expand into sweeps of runs.
//!
//! ```text
//! experiments/NAME.yaml --load/resolve(preset, overrides)--> Experiment --cells--> [RunSpec]
//! RunSpec --train--> runs/NAME/<run-id>/{config.yaml, meta.json, metrics.csv,
//!                                        checkpoint.safetensors, status.json, log.txt}
//! ```

pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod experiment;
pub mod files;
pub mod optim;
pub mod provenance;
pub mod run;
pub mod run_spec;
pub mod schedule;
pub mod status;
pub mod trained;

pub use config::{ScheduleKind, TrainConfig};
pub use experiment::Experiment;
pub use optim::Sgd;
pub use run::{train, MetricRow, Outcome, RunContext, RunSpec, State, Status};
pub use schedule::Schedule;
pub use trained::Trained;

/// Runs cells in order: finished cells are skipped, interrupted ones resume, a diverged
/// one is recorded and the sweep goes on.
pub fn sweep(cells: &[RunSpec], ctx: &RunContext) -> anyhow::Result<Vec<Outcome>> {
    let bar = ctx.progress.add(
        indicatif::ProgressBar::new(cells.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>28} {bar:25.green/white} {pos}/{len} runs [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        ),
    );
    bar.set_prefix("sweep");
    let mut outcomes = Vec::new();
    for cell in cells {
        let outcome = train(cell, ctx)?;
        bar.inc(1);
        outcomes.push(outcome);
    }
    bar.finish_and_clear();
    Ok(outcomes)
}
