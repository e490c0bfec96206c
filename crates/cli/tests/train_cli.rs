//! `cardinal train` and `cardinal ablate` as a user runs them, including a real training
//! process killed with SIGKILL and resumed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A learnable 16x16 dataset in MNIST's file layout.
fn write_dataset(dir: &Path) {
    cardinal_data::synthetic::write_squares(dir, 512, 64).unwrap();
}

fn write_experiment(tmp: &Path, epochs: usize) -> PathBuf {
    write_experiment_in(tmp, epochs, None)
}

/// `write_experiment`, with `train.precision` set where given (unset: the machine's default).
fn write_experiment_in(tmp: &Path, epochs: usize, precision: Option<&str>) -> PathBuf {
    write_dataset(&tmp.join("mnist"));
    let path = tmp.join("tiny.yaml");
    let precision = precision.map_or(String::new(), |p| format!("  precision: {p}\n"));
    std::fs::write(
        &path,
        format!(
            "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: {epochs}\n  batch_size: 32\n  lr: 0.1\n  warmup_epochs: 0.5\n{precision}",
            tmp.display()
        ),
    )
    .unwrap();
    path
}

/// A metrics line without its timing columns (images_per_sec, wall_seconds: the 16th and
/// 17th), which differ between runs; every other column, progress and precision included.
fn without_timings(line: &str) -> String {
    line.split(',')
        .enumerate()
        .filter(|(i, _)| !matches!(i, 15 | 16))
        .map(|(_, v)| v)
        .collect::<Vec<_>>()
        .join(",")
}

/// Metrics rows without the timing columns.
fn metrics(runs: &Path) -> Vec<String> {
    let run_dir = std::fs::read_dir(runs.join("tiny"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_to_string(run_dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(without_timings)
        .collect()
}

fn epochs_done(runs: &Path) -> usize {
    let Some(Ok(entry)) = std::fs::read_dir(runs.join("tiny"))
        .ok()
        .and_then(|mut d| d.next())
    else {
        return 0;
    };
    std::fs::read_to_string(entry.path().join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["epochs_done"].as_u64())
        .unwrap_or(0) as usize
}

/// The run's checkpoint's epoch count (0 without a checkpoint).
fn checkpoint_epochs(runs: &Path) -> usize {
    let Some(Ok(entry)) = std::fs::read_dir(runs.join("tiny"))
        .ok()
        .and_then(|mut d| d.next())
    else {
        return 0;
    };
    let Ok(bytes) = std::fs::read(entry.path().join("checkpoint.safetensors")) else {
        return 0;
    };
    // safetensors: a little-endian u64 header length, then the JSON header, whose metadata
    // holds the epoch count (see the trainer's checkpoint format).
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"]["epochs_done"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts `cardinal train` paused at `point` (see the trainer's `CARDINAL_PAUSE_AT`), waits
/// until it says it got there, checks that it is still running, and SIGKILLs it.
fn kill_at(config: &Path, runs: &Path, point: &str) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cardinal"))
        .arg("train")
        .arg(config)
        .arg("--runs-dir")
        .arg(runs)
        .env("CARDINAL_PAUSE_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("paused at") {
                let _ = tx.send(line);
            }
        }
    });
    let reached = rx.recv_timeout(Duration::from_secs(300));
    let still_running = child.try_wait().unwrap().is_none();
    // Child::kill sends SIGKILL on Unix: no handler, no cleanup.
    let _ = child.kill();
    child.wait().unwrap();
    let line = reached.unwrap_or_else(|_| panic!("the run never reached `{point}`"));
    assert_eq!(line.trim(), format!("paused at {point}"));
    assert!(still_running, "the run ended before the kill at `{point}`");
}

/// In both precisions (bf16-mixed runs its bf16 code on any machine: on the units where the
/// CPU has them, else as f32 kernels on rounded values).
#[test]
fn a_run_killed_at_any_point_resumes_to_the_same_metrics() {
    for precision in ["f32", "bf16-mixed"] {
        let tmp = tempfile::tempdir().unwrap();
        killed_and_resumed_matches_straight(tmp.path(), precision);
    }
}

fn killed_and_resumed_matches_straight(tmp: &Path, precision: &str) {
    let config = write_experiment_in(tmp, 3, Some(precision));
    let straight = tmp.join("straight");
    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("train")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&straight)
        .assert()
        .success();

    let killed = tmp.join("killed");
    // Inside epoch 1, before any checkpoint.
    kill_at(&config, &killed, "epoch 1 step 3");
    assert_eq!((epochs_done(&killed), checkpoint_epochs(&killed)), (0, 0));
    // Between epoch 2's checkpoint and its metrics: the checkpoint is one epoch ahead of
    // metrics.csv and status.json.
    kill_at(&config, &killed, "epoch 2 checkpoint");
    assert_eq!((epochs_done(&killed), checkpoint_epochs(&killed)), (1, 2));
    // Inside the last epoch.
    kill_at(&config, &killed, "epoch 3 step 5");
    assert_eq!((epochs_done(&killed), checkpoint_epochs(&killed)), (2, 2));
    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("train")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&killed)
        .assert()
        .success();
    assert_eq!(epochs_done(&killed), 3);
    assert_eq!(metrics(&straight), metrics(&killed), "{precision}");
    assert_eq!(metrics(&straight).len(), 1 + 2 * 3);
    assert!(
        metrics(&killed)[1..]
            .iter()
            .all(|row| row.contains(precision)),
        "{precision}: {:?}",
        metrics(&killed)
    );
}

/// A trained run is a model: `infer` takes its directory or checkpoint, and `export`
/// writes torchvision-named weights that give the same logits through `--model`.
#[test]
fn a_trained_run_infers_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_experiment(tmp.path(), 1);
    let runs = tmp.path().join("runs");
    Command::cargo_bin("cardinal")
        .unwrap()
        .args([
            "train",
            config.to_str().unwrap(),
            "--runs-dir",
            runs.to_str().unwrap(),
        ])
        .assert()
        .success();
    let run_dir = std::fs::read_dir(runs.join("tiny"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let input = tmp.path().join("input.safetensors");
    let images =
        candle_core::Tensor::randn(0f32, 1.0, (3, 1, 16, 16), &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("input", images)].into_iter().collect(), &input).unwrap();
    let logits = |args: &[&str], out: &str| {
        let out = tmp.path().join(out);
        Command::cargo_bin("cardinal")
            .unwrap()
            .arg("infer")
            .args(args)
            .args([
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ])
            .assert()
            .success();
        candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap()["logits"]
            .to_vec2::<f32>()
            .unwrap()
    };
    let from_dir = logits(&["--weights", run_dir.to_str().unwrap()], "a.safetensors");
    let checkpoint = run_dir.join("checkpoint.safetensors");
    let from_checkpoint = logits(
        &["--weights", checkpoint.to_str().unwrap()],
        "b.safetensors",
    );
    assert_eq!(from_dir, from_checkpoint);
    assert_eq!((from_dir.len(), from_dir[0].len()), (3, 10));

    let exported = tmp.path().join("model.safetensors");
    Command::cargo_bin("cardinal")
        .unwrap()
        .args([
            "export",
            run_dir.to_str().unwrap(),
            "--out",
            exported.to_str().unwrap(),
        ])
        .assert()
        .success();
    let saved = candle_core::safetensors::load(&exported, &candle_core::Device::Cpu).unwrap();
    assert!(saved.contains_key("conv1.weight") && saved.contains_key("fc.bias"));
    assert!(saved.keys().all(|k| !k.starts_with("model/")));
    // The run's spec as a file, for --model.
    let config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(run_dir.join("config.yaml")).unwrap())
            .unwrap();
    let spec_file = tmp.path().join("spec.json");
    std::fs::write(&spec_file, config["spec"].to_string()).unwrap();
    let from_export = logits(
        &[
            "--weights",
            exported.to_str().unwrap(),
            "--model",
            spec_file.to_str().unwrap(),
        ],
        "c.safetensors",
    );
    assert_eq!(from_export, from_dir);

    // A plain weights file without --model says what is missing.
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .args(["infer", "--weights", exported.to_str().unwrap()])
        .args([
            "--input",
            input.to_str().unwrap(),
            "--output",
            "x.safetensors",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

/// `cardinal ablate cardinality --dry-run --format json seeds=[0] EXTRA...` in the workspace:
/// the grid's cells as JSON.
fn grid_cells(extra: &[&str]) -> Vec<Value> {
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .current_dir(workspace())
        .args([
            "ablate",
            "cardinality",
            "--dry-run",
            "--format",
            "json",
            "seeds=[0]",
        ])
        .args(extra)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn ablate_dry_run_lists_the_cardinality_grid() {
    let cells = grid_cells(&[]);
    assert_eq!(cells.len(), 5);
    for key in [
        "run_id",
        "model",
        "cardinality",
        "bottleneck_width",
        "params",
        "macs",
        "seed",
    ] {
        assert!(cells.iter().all(|c| !c[key].is_null()), "{key}");
    }
    let c: Vec<u64> = cells
        .iter()
        .map(|c| c["cardinality"].as_u64().unwrap())
        .collect();
    assert_eq!(c, vec![1, 2, 4, 8, 32]);
}

/// `--precision P` is the override `train.precision=P`: it reaches every cell (and so its
/// run id), and naming the key twice is refused rather than silently resolved.
#[test]
fn the_precision_flag_sets_every_cells_precision() {
    let f32_cells = grid_cells(&["--precision", "f32"]);
    let bf16_cells = grid_cells(&["--precision", "bf16-mixed"]);
    assert_eq!(grid_cells(&["train.precision=f32"]), f32_cells);
    assert!(
        f32_cells.iter().all(|c| c["precision"] == "f32"),
        "{f32_cells:?}"
    );
    assert!(
        bf16_cells.iter().all(|c| c["precision"] == "bf16-mixed"),
        "{bf16_cells:?}"
    );
    assert_ne!(f32_cells[0]["run_id"], bf16_cells[0]["run_id"]);

    let refused = Command::cargo_bin("cardinal")
        .unwrap()
        .current_dir(workspace())
        .args(["ablate", "cardinality", "--dry-run", "--precision", "f32"])
        .arg("train.precision=bf16-mixed")
        .assert()
        .failure();
    let text = String::from_utf8_lossy(&refused.get_output().stderr);
    assert!(
        text.contains("--precision f32") && text.contains("train.precision=bf16-mixed"),
        "{text}"
    );
}

#[test]
fn bad_cells_and_files_are_named() {
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .current_dir(workspace())
        .args(["ablate", "cardinality", "--cell", "99", "--dry-run"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("cell 99") && text.contains("0..=14"),
        "{text}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = write_experiment(tmp.path(), 1);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lr: 0.1", "lr: 0.1\n  momentun: 0.5");
    std::fs::write(&config, text).unwrap();
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .arg("train")
        .arg(&config)
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("tiny.yaml") && text.contains("momentun") && text.contains("line 12"),
        "{text}"
    );
}

#[test]
fn ablate_ends_with_a_report_and_compare_reads_the_same_runs() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let config = tmp.path().join("grid.yaml");
    std::fs::write(
        &config,
        format!(
            "question: Does C matter on squares?\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: 2\n  batch_size: 64\n  lr: 0.1\n  warmup_epochs: 0.5\nsweep:\n  cardinality: {{values: [1, 4]}}\nseeds: [0, 1]\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let reports = tmp.path().join("reports");
    let no_report = Command::cargo_bin("cardinal")
        .unwrap()
        .arg("report")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--reports-dir")
        .arg(&reports)
        .output()
        .unwrap();
    assert_eq!(no_report.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&no_report.stderr);
    assert!(stderr.contains("no finished run of grid"), "{stderr}");

    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("ablate")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--reports-dir")
        .arg(&reports)
        .assert()
        .success();
    let readme = std::fs::read_to_string(reports.join("grid/README.md")).unwrap();
    assert!(readme.contains("> Does C matter on squares?"), "{readme}");
    assert!(readme.contains("4 of 4 runs finished"), "{readme}");
    assert!(readme.contains("| Recipe | 2 epochs, batch 64"), "{readme}");
    // Two seeds per cell: the conclusion gives the paired difference with its interval.
    assert!(readme.contains("paired difference"), "{readme}");
    assert!(readme.contains("2 seeds"), "{readme}");
    for figure in ["curves", "error-vs-cardinality", "error-vs-complexity"] {
        let png = image::open(reports.join(format!("grid/{figure}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (960, 540));
        assert!(reports.join(format!("grid/{figure}.svg")).is_file());
    }

    // A preset or overrides other than the default go to their own directory.
    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("ablate")
        .arg(&config)
        .arg("seeds=[0]")
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--reports-dir")
        .arg(&reports)
        .assert()
        .success();
    let custom = std::fs::read_to_string(reports.join("grid-custom/README.md")).unwrap();
    assert!(custom.contains("2 of 2 runs finished"), "{custom}");
    assert!(custom.contains("| Preset | seeds=[0] |"), "{custom}");

    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .args(["compare", "grid", "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let c1 = table.lines().find(|l| l.starts_with("1x")).expect(&table);
    let c4 = table.lines().find(|l| l.starts_with("4x")).expect(&table);
    // Both seeds of each cell, aggregated: "2" seeds, "2" epochs.
    assert!(c1.split_whitespace().nth(3) == Some("2"), "{table}");
    assert!(c4.contains(" ± "), "{table}");

    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .args(["compare", "no-such-run", "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`no-such-run` is neither"));
}

/// Every metrics file under `runs`, by run id, without the timing columns.
fn all_metrics(runs: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("metrics.csv").is_file())
        .map(|p| {
            let rows = std::fs::read_to_string(p.join("metrics.csv"))
                .unwrap()
                .lines()
                .map(without_timings)
                .collect();
            (p.file_name().unwrap().to_string_lossy().into_owned(), rows)
        })
        .collect()
}

/// `--jobs 2` trains two cells side by side, each on one thread, and gets bit-identical
/// metrics to the cells trained one after another on one thread; the report is written
/// once, at the end, with every cell.
#[test]
fn cells_trained_side_by_side_match_cells_trained_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let config = tmp.path().join("grid.yaml");
    std::fs::write(
        &config,
        format!(
            "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: 1\n  batch_size: 64\n  lr: 0.1\nsweep:\n  cardinality: {{values: [1, 4]}}\nseeds: [0]\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let ablate = |runs: &str, extra: &[&str], threads: &str| {
        Command::cargo_bin("cardinal")
            .unwrap()
            .env("RAYON_NUM_THREADS", threads)
            .arg("ablate")
            .arg(&config)
            .args(["--runs-dir", tmp.path().join(runs).to_str().unwrap()])
            .args([
                "--reports-dir",
                tmp.path().join(format!("reports-{runs}")).to_str().unwrap(),
            ])
            .args(extra)
            .assert()
            .success();
    };
    ablate("in-turn", &[], "1");
    ablate(
        "side-by-side",
        &["--jobs", "2", "--threads-per-job", "1"],
        "2",
    );
    let in_turn = all_metrics(&tmp.path().join("in-turn/grid"));
    let side_by_side = all_metrics(&tmp.path().join("side-by-side/grid"));
    assert_eq!(in_turn.len(), 2);
    assert_eq!(in_turn, side_by_side);
    let readme =
        std::fs::read_to_string(tmp.path().join("reports-side-by-side/grid/README.md")).unwrap();
    assert!(readme.contains("2 of 2 runs finished"), "{readme}");
    // Each job records its own thread count.
    for run in std::fs::read_dir(tmp.path().join("side-by-side/grid")).unwrap() {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(run.unwrap().path().join("meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["threads"], 1);
    }
    // --jobs with the Slurm launcher is refused with what to use instead.
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .args([
            "ablate",
            config.to_str().unwrap(),
            "--jobs",
            "2",
            "--launcher",
            "slurm",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-parallel"));
}

/// A cell that another experiment already trained (same spec, data, recipe and seed, on
/// this machine's path and thread count) is copied under the new experiment's names, not
/// trained again; the experiment's other cells train as usual.
#[test]
fn a_cell_finished_by_another_experiment_is_copied_not_retrained() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(&tmp.path().join("mnist"));
    let experiment = |name: &str, values: &str| {
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: 1\n  batch_size: 32\n  lr: 0.1\n  warmup_epochs: 0.5\nsweep:\n  cardinality: {{values: [{values}]}}\nseeds: [0]\n",
                tmp.path().display()
            ),
        )
        .unwrap();
        path
    };
    let (first, second) = (experiment("first", "1"), experiment("second", "1, 4"));
    let runs = tmp.path().join("runs");
    let ablate = |path: &Path| {
        let out = Command::cargo_bin("cardinal")
            .unwrap()
            .arg("ablate")
            .arg(path)
            .arg("--runs-dir")
            .arg(&runs)
            .arg("--reports-dir")
            .arg(tmp.path().join("reports"))
            .env("RAYON_NUM_THREADS", "2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    ablate(&first);
    let stderr = ablate(&second);
    let shared = std::fs::read_dir(runs.join("first"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    assert!(stderr.contains("copied from"), "{stderr}");
    let copy = runs.join("second").join(&shared);
    let log = std::fs::read_to_string(copy.join("log.txt")).unwrap();
    assert!(log.contains("copied from"), "{log}");
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "finished");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["experiment"], "second");
    // The same metrics, timings included (they are the first run's), under the new name.
    let original =
        std::fs::read_to_string(runs.join("first").join(&shared).join("metrics.csv")).unwrap();
    let copied = std::fs::read_to_string(copy.join("metrics.csv")).unwrap();
    assert_eq!(copied, original.replace("\nfirst,", "\nsecond,"));
    // The other cell trained here, from its own start.
    let trained: Vec<_> = std::fs::read_dir(runs.join("second"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name() != Some(shared.as_os_str()))
        .collect();
    assert_eq!(trained.len(), 1);
    let log = std::fs::read_to_string(trained[0].join("log.txt")).unwrap();
    assert!(
        log.contains("started run") && !log.contains("copied"),
        "{log}"
    );
    assert!(tmp.path().join("reports/second/README.md").is_file());
}
