//! Real training on a small learnable dataset: learning happens, runs are bit-for-bit
//! deterministic, a resumed run ends where an uninterrupted one does, divergence is recorded.

use std::path::Path;

use cardinal_train::experiment::{self, parse_overrides};
use cardinal_train::run::read_metrics_csv;
use cardinal_train::{MetricRow, RunContext, RunSpec, State};
use indicatif::{MultiProgress, ProgressDrawTarget};

/// A learnable 16x16 dataset in MNIST's file layout.
fn write_dataset(dir: &Path) {
    cardinal_data::synthetic::write_squares(dir, 320, 100).unwrap();
}

fn spec(data: &Path, overrides: &[&str]) -> RunSpec {
    let text = format!(
        "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: 3\n  batch_size: 32\n  lr: 0.1\n  schedule: cosine\n  warmup_epochs: 0.5\n",
        data.display()
    );
    let e = experiment::parse(&text).unwrap();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let (e, _) = e
        .resolve(None, &parse_overrides(&overrides).unwrap())
        .unwrap();
    e.cells("tiny").unwrap().remove(0)
}

fn hidden() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
}

/// Metrics without the timing columns, which differ from run to run by nature.
fn results(rows: &[MetricRow]) -> Vec<(usize, String, f64, f64, f64, f64)> {
    rows.iter()
        .map(|r| {
            (
                r.epoch,
                r.split.clone(),
                r.loss,
                r.top1_err,
                r.top5_err,
                r.lr,
            )
        })
        .collect()
}

#[test]
fn learns_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let run = spec(tmp.path(), &[]);
    let progress = hidden();
    let ctx = |dir: &str| RunContext {
        runs_dir: tmp.path().join(dir),
        progress: &progress,
        stop_after_epochs: None,
        device: candle_core::Device::Cpu,
    };
    let a = cardinal_train::train(&run, &ctx("a")).unwrap();
    assert_eq!(a.state, State::Finished);
    assert_eq!(a.rows.len(), 6);
    let test = a.final_test().unwrap();
    assert!(
        test.top1_err < 0.5,
        "test top-1 error {} after 3 epochs",
        test.top1_err
    );
    assert!(a.rows[4].loss < a.rows[0].loss, "train loss must fall");
    // The files of the run.
    for file in [
        "config.yaml",
        "meta.json",
        "metrics.csv",
        "checkpoint.safetensors",
        "status.json",
        "log.txt",
    ] {
        assert!(a.dir.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        results(&read_metrics_csv(&a.dir.join("metrics.csv")).unwrap()),
        results(&a.rows)
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("meta.json")).unwrap()).unwrap();
    assert!(meta["threads"].as_u64().unwrap() >= 1);
    // The same config and seed, in another directory: bit-identical metrics.
    let b = cardinal_train::train(&run, &ctx("b")).unwrap();
    assert_eq!(results(&a.rows), results(&b.rows));
    // Another seed differs.
    let c = cardinal_train::train(&spec(tmp.path(), &["seeds=[1]"]), &ctx("b")).unwrap();
    assert_ne!(results(&a.rows), results(&c.rows));
    // A finished run is skipped when asked again.
    let again = cardinal_train::train(&run, &ctx("a")).unwrap();
    assert!(again.skipped);
    assert_eq!(results(&again.rows), results(&a.rows));
}

#[test]
fn resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_does() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let progress = hidden();
    let run = spec(tmp.path(), &[]);
    let ctx = |dir: &str, stop: Option<usize>| RunContext {
        runs_dir: tmp.path().join(dir),
        progress: &progress,
        stop_after_epochs: stop,
        device: candle_core::Device::Cpu,
    };
    let straight = cardinal_train::train(&run, &ctx("straight", None)).unwrap();
    // Stopped after each epoch, then resumed from the checkpoint each time.
    for epochs in 1..=2 {
        let stopped = cardinal_train::train(&run, &ctx("resumed", Some(1))).unwrap();
        assert_eq!(stopped.state, State::Running);
        assert_eq!(stopped.rows.len(), 2 * epochs);
    }
    let resumed = cardinal_train::train(&run, &ctx("resumed", None)).unwrap();
    assert_eq!(resumed.state, State::Finished);
    assert_eq!(results(&straight.rows), results(&resumed.rows));
    let log = std::fs::read_to_string(resumed.dir.join("log.txt")).unwrap();
    assert_eq!(log.matches("resumed after epoch").count(), 2, "{log}");
}

#[test]
fn a_diverging_run_is_marked_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let progress = hidden();
    let ctx = RunContext {
        runs_dir: tmp.path().join("runs"),
        progress: &progress,
        stop_after_epochs: None,
        device: candle_core::Device::Cpu,
    };
    let bad = spec(tmp.path(), &["train.lr=1.0e30", "train.warmup_epochs=0"]);
    let good = spec(tmp.path(), &["train.epochs=1"]);
    let outcomes = cardinal_train::sweep(&[bad.clone(), good], &ctx).unwrap();
    assert_eq!(outcomes[0].state, State::Diverged);
    assert_eq!(outcomes[1].state, State::Finished);
    let status = cardinal_train::Status::read(&bad.dir(&ctx.runs_dir)).unwrap();
    assert_eq!(status.state, State::Diverged);
    assert!(status.message.unwrap().contains("diverged"));
    // A diverged run is not retried on the next pass of the sweep.
    assert!(cardinal_train::train(&bad, &ctx).unwrap().skipped);
}

/// A model and data that do not fit are refused before training, naming both sides.
#[test]
fn model_and_data_mismatches_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let progress = hidden();
    let ctx = RunContext {
        runs_dir: tmp.path().join("runs"),
        progress: &progress,
        stop_after_epochs: None,
        device: candle_core::Device::Cpu,
    };
    for (overrides, expected) in [
        (
            &["model.classes=5"][..],
            "`model.classes` is 5 but mnist has 10 classes",
        ),
        (
            &["model.input_size=32"][..],
            "`model.input_size` is 32 but mnist's images are 16x16",
        ),
        (&["model.in_channels=3"][..], "`model.in_channels` is 3"),
        (
            &["train.train_images=1000000"][..],
            "`train.train_images` is 1000000 but mnist has 320 training images",
        ),
        (&["train.test_images=0"][..], "`train.test_images` is 0"),
    ] {
        let err = cardinal_train::train(&spec(tmp.path(), overrides), &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{overrides:?}: {err}");
    }
    // Nothing was trained: no run got a checkpoint.
    let checkpoints = walk(&tmp.path().join("runs"))
        .into_iter()
        .filter(|p| p.ends_with("checkpoint.safetensors"))
        .count();
    assert_eq!(checkpoints, 0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `train.eval_every` adds test evaluations within each epoch, at the fractions of it
/// asked for, without changing what trains; `train.precision` is recorded in every row.
#[test]
fn interim_evaluations_add_curve_points_and_change_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let progress = hidden();
    let ctx = |dir: &str| RunContext {
        runs_dir: tmp.path().join(dir),
        progress: &progress,
        stop_after_epochs: None,
        device: candle_core::Device::Cpu,
    };
    let plain =
        cardinal_train::train(&spec(tmp.path(), &["train.precision=f32"]), &ctx("plain")).unwrap();
    let interim = cardinal_train::train(
        &spec(tmp.path(), &["train.eval_every=0.5", "train.precision=f32"]),
        &ctx("interim"),
    )
    .unwrap();
    // 10 steps an epoch (320 images, batch 32): one evaluation after step 5 of each.
    let points: Vec<(usize, f64)> = interim
        .rows
        .iter()
        .filter(|r| r.split == cardinal_results::INTERIM)
        .map(|r| (r.epoch, r.progress))
        .collect();
    assert_eq!(points, vec![(1, 0.5), (2, 1.5), (3, 2.5)]);
    let ends: Vec<MetricRow> = interim
        .rows
        .iter()
        .filter(|r| r.split != cardinal_results::INTERIM)
        .cloned()
        .collect();
    assert_eq!(results(&ends), results(&plain.rows));
    assert!(interim.rows.iter().all(|r| r.precision == "f32"));
}

/// A run directory held by another trainer is skipped, naming the holder, and not trained
/// twice; once free, an interrupted run's leftover temporary files are removed as it
/// resumes.
#[test]
fn a_held_run_is_skipped_and_a_resumed_run_sweeps_its_temporary_files() {
    use cardinal_train::files::{Locked, RunLock};
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let run = spec(tmp.path(), &["train.epochs=2"]);
    let progress = hidden();
    let ctx = |stop: Option<usize>| RunContext {
        runs_dir: tmp.path().join("runs"),
        progress: &progress,
        stop_after_epochs: stop,
        device: candle_core::Device::Cpu,
    };
    let dir = run.dir(&tmp.path().join("runs"));
    std::fs::create_dir_all(&dir).unwrap();
    let held = match RunLock::acquire(&dir).unwrap() {
        Locked::Acquired(lock) => lock,
        Locked::HeldBy(who) => panic!("free directory held by {who}"),
    };
    let skipped = cardinal_train::train(&run, &ctx(None)).unwrap();
    assert!(skipped.skipped && skipped.held_by.is_some(), "{skipped:?}");
    assert!(
        !dir.join("checkpoint.safetensors").exists(),
        "trained while held"
    );
    drop(held);
    // One epoch, then a leftover of an interrupted write beside the checkpoint.
    let first = cardinal_train::train(&run, &ctx(Some(1))).unwrap();
    assert_eq!(first.state, State::Running);
    let leftover = dir.join(".checkpoint.safetensors.4242.tmp");
    std::fs::write(&leftover, b"half a checkpoint").unwrap();
    let done = cardinal_train::train(&run, &ctx(None)).unwrap();
    assert_eq!(done.state, State::Finished);
    assert!(
        !leftover.exists(),
        "the stale temporary file is still there"
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains(".checkpoint.safetensors.4242.tmp"), "{log}");
}

/// meta.json names what trained the run: the commit the binary was built from beside the
/// checkout's, candle with its vendored patch, the precision and the instruction set.
#[test]
fn run_metadata_records_the_build_precision_and_instruction_set() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let run = spec(
        tmp.path(),
        &["train.epochs=1", "train.precision=bf16-mixed"],
    );
    let progress = hidden();
    let ctx = RunContext {
        runs_dir: tmp.path().join("runs"),
        progress: &progress,
        stop_after_epochs: None,
        device: candle_core::Device::Cpu,
    };
    let outcome = cardinal_train::train(&run, &ctx).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(outcome.dir.join("meta.json")).unwrap())
            .unwrap();
    assert!(
        meta["candle_version"]
            .as_str()
            .unwrap()
            .contains("vendored patch"),
        "{meta}"
    );
    let build = meta["sessions"][0]["build_commit"].as_str().unwrap();
    assert!(!build.is_empty(), "{meta}");
    assert!(meta["sessions"][0].get("git_commit").is_some(), "{meta}");
    assert_eq!(meta["precision"], "bf16-mixed");
    let isa = meta["isa"].as_str().unwrap();
    assert!(
        ["amx-bf16", "avx512-bf16", "avx512", "avx2", "portable"].contains(&isa),
        "{isa}"
    );
    assert!(outcome.rows.iter().all(|r| r.precision == "bf16-mixed"));
}
