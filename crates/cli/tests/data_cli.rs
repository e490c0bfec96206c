//! `cardinal data` and `cardinal bench data` as a user runs them, on datasets the tests
//! write.

use std::path::Path;

use assert_cmd::Command;
use cardinal_data::idx;
use serde_json::Value;

fn cardinal() -> Command {
    let mut cmd = Command::cargo_bin("cardinal").unwrap();
    // The tests name their data explicitly; a user's setting must not leak in.
    cmd.env_remove("CARDINAL_DATA");
    cmd
}

/// A small MNIST-layout dataset: 40 train and 20 test images of 28x28, labels i % 10.
fn write_mnist(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", 40usize), ("t10k", 20)] {
        let images: Vec<u8> = (0..n * 784).map(|k| (k % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx::encode(&[n, 28, 28], &images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx::encode(&[n], &labels),
        )
        .unwrap();
    }
}

/// Runs a command that must fail with exit code 2 (an error, not failed checks) and returns
/// its stderr.
fn error_text(cmd: &mut Command) -> String {
    let out = cmd.assert().code(2).get_output().stderr.clone();
    String::from_utf8(out).unwrap()
}

/// Runs `cardinal ARGS --data-dir DIR` and parses its JSON output.
fn json_with_data(args: &[&str], dir: &Path) -> Value {
    let out = cardinal()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn data_stats_json_has_the_contract_fields() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(&tmp.path().join("mnist"));
    let v = json_with_data(&["data", "stats", "mnist", "--format", "json"], tmp.path());
    assert_eq!(v["dataset"], "mnist");
    assert_eq!(v["train"], 40);
    assert_eq!(v["test"], 20);
    assert_eq!(v["classes"], 10);
    let mean = v["mean"][0].as_f64().unwrap();
    let std = v["std"][0].as_f64().unwrap();
    // Pixel values cycle through 0..=255 uniformly (784 = 3 * 256 + 16, so nearly).
    assert!((mean - 0.5).abs() < 0.02, "{mean}");
    assert!((std - 0.2887).abs() < 0.01, "{std}");
    assert_eq!(v["train_class_counts"], serde_json::json!(vec![4; 10]));
}

#[test]
fn data_show_writes_a_png_grid() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(&tmp.path().join("mnist"));
    let out = tmp.path().join("figs/grid.png");
    cardinal()
        .args([
            "data",
            "show",
            "mnist",
            "--augmented",
            "--count",
            "12",
            "--columns",
            "4",
            "--out",
        ])
        .arg(&out)
        .arg("--data-dir")
        .arg(tmp.path())
        .assert()
        .success();
    let image = image::open(&out).unwrap();
    // 4 columns x 3 rows of 84 px tiles (28 px enlarged 3x) with labels and gaps.
    assert!(
        image.width() >= 4 * 84 && image.width() < 4 * 120,
        "{}",
        image.width()
    );
    assert!(
        image.height() >= 3 * 100 && image.height() < 3 * 130,
        "{}",
        image.height()
    );
}

#[test]
fn a_truncated_file_exits_2_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_mnist(&dir);
    let file = dir.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..16 + 784 * 7 + 100]).unwrap();
    let text = error_text(
        cardinal()
            .args(["data", "stats", "mnist", "--data-dir"])
            .arg(tmp.path()),
    );
    assert!(
        text.contains("train-images-idx3-ubyte") && text.contains("record 7"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn missing_data_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let text = error_text(
        cardinal()
            .current_dir(tmp.path())
            .args(["data", "stats", "cifar10"]),
    );
    assert!(text.contains("data/cifar10"), "{text}");
    assert!(text.contains("cifar-10-binary.tar.gz"), "{text}");
}

#[test]
fn bench_data_reports_throughput_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(&tmp.path().join("mnist"));
    let args = [
        "bench",
        "data",
        "mnist",
        "--batch-size",
        "8",
        "--repeats",
        "1",
        "--format",
        "json",
    ];
    let v = json_with_data(&args, tmp.path());
    assert_eq!(v["dataset"], "mnist");
    assert_eq!(v["images_per_pass"], 40);
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["prefetch_images_per_sec"].as_f64().unwrap() > 0.0);
}
