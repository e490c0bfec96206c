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
mod twin;

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

/// Runs cells `jobs` at a time, each job on a thread pool of its own with `threads_per_job`
/// threads: for machines with more cores than one small net can use. Cells are taken in
/// order as jobs free up; finished cells are skipped and interrupted ones resume, as in
/// [`sweep`], and a cell's result does not depend on which job trained it (the kernels'
/// sums have a fixed order for a given thread count). After an error no new cell starts;
/// the first error is returned once the running cells end. `jobs` <= 1 is [`sweep`].
pub fn sweep_jobs(
    cells: &[RunSpec],
    ctx: &RunContext,
    jobs: usize,
    threads_per_job: usize,
) -> anyhow::Result<Vec<Outcome>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    if jobs <= 1 {
        return sweep(cells, ctx);
    }
    let bar = ctx.progress.add(
        indicatif::ProgressBar::new(cells.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>28} {bar:25.green/white} {pos}/{len} runs [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        ),
    );
    bar.set_prefix(format!("sweep, {jobs} jobs"));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<anyhow::Result<Outcome>>>> =
        Mutex::new((0..cells.len()).map(|_| None).collect());
    let pools = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(cells.len()))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads_per_job.max(1))
                        .build()?;
                    while !failed.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(cell) = cells.get(i) else { break };
                        let outcome = pool.install(|| train(cell, ctx));
                        if outcome.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        results.lock().expect("results lock")[i] = Some(outcome);
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a sweep job panicked"))
            .collect::<anyhow::Result<Vec<()>>>()
    });
    pools?;
    bar.finish_and_clear();
    let mut outcomes = Vec::with_capacity(cells.len());
    for result in results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .flatten()
    {
        outcomes.push(result?);
    }
    Ok(outcomes)
}
