//! `cardinal train` and `cardinal ablate` as a user runs them, including a real training
//! process killed with SIGKILL and resumed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    write_dataset(&tmp.join("mnist"));
    let path = tmp.join("tiny.yaml");
    std::fs::write(
        &path,
        format!(
            "question: q\ndataset:\n  name: mnist\n  dir: {}\nmodel:\n  preset: cpu_resnet11\n  input_size: 16\ntrain:\n  epochs: {epochs}\n  batch_size: 32\n  lr: 0.1\n  warmup_epochs: 0.5\n",
            tmp.display()
        ),
    )
    .unwrap();
    path
}

/// Metrics rows without the timing columns (images_per_sec, wall_seconds).
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
        .map(|l| l.split(',').take(15).collect::<Vec<_>>().join(","))
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

/// Starts `cardinal train`, waits until `until` holds (or the deadline), then SIGKILLs it.
fn kill_when(config: &Path, runs: &Path, until: impl Fn() -> bool, extra: Duration) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cardinal"))
        .arg("train")
        .arg(config)
        .arg("--runs-dir")
        .arg(runs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !until() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(extra);
    // Child::kill sends SIGKILL on Unix: no handler, no cleanup.
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn a_run_killed_at_any_point_resumes_to_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_experiment(tmp.path(), 3);
    let straight = tmp.path().join("straight");
    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("train")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&straight)
        .assert()
        .success();

    let killed = tmp.path().join("killed");
    // Killed while starting (before any checkpoint), then in the middle of epoch 2, then
    // right after epoch 2's checkpoint.
    kill_when(&config, &killed, || true, Duration::from_millis(300));
    let first = epochs_done(&killed);
    kill_when(
        &config,
        &killed,
        || epochs_done(&killed) >= 1,
        Duration::from_millis(150),
    );
    let second = epochs_done(&killed);
    kill_when(
        &config,
        &killed,
        || epochs_done(&killed) >= 3,
        Duration::ZERO,
    );
    let third = epochs_done(&killed);
    assert!(
        third < 4,
        "the kills came too late: {first}, {second}, {third} epochs done"
    );
    Command::cargo_bin("cardinal")
        .unwrap()
        .arg("train")
        .arg(&config)
        .arg("--runs-dir")
        .arg(&killed)
        .assert()
        .success();
    assert_eq!(metrics(&straight), metrics(&killed));
    assert_eq!(metrics(&straight).len(), 1 + 2 * 3);
}

#[test]
fn ablate_dry_run_lists_the_cardinality_grid() {
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .current_dir(workspace())
        .args(["ablate", "cardinality", "--dry-run", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let cells: Vec<Value> = serde_json::from_slice(&out).unwrap();
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

#[test]
fn bad_cells_and_files_are_named() {
    let out = Command::cargo_bin("cardinal")
        .unwrap()
        .current_dir(workspace())
        .args(["ablate", "cardinality", "--cell", "7", "--dry-run"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("cell 7") && text.contains("0..=4"), "{text}");
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
    // Two seeds per cell: the conclusion weighs the difference against their spread.
    assert!(readme.contains("2 seeds per configuration"), "{readme}");
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
