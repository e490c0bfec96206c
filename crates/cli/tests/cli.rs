//! The command-line contract, run as a user runs it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn cardinal() -> Command {
    Command::cargo_bin("cardinal").unwrap()
}

fn zoo_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../zoo/tests/fixtures")
        .join(name)
}

fn json(args: &[&str]) -> Value {
    let out = cardinal()
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn complexity_json_matches_torchvision_for_every_published_model() {
    let expected = [
        ("resnet18", 11_689_512u64, 1_814_073_344u64),
        ("resnet34", 21_797_672, 3_663_761_408),
        ("resnet50", 25_557_032, 4_089_184_256),
        ("resnet101", 44_549_160, 7_801_405_440),
        ("resnet152", 60_192_808, 11_513_626_624),
        ("resnext50_32x4d", 25_028_904, 4_230_479_872),
        ("resnext101_32x8d", 88_791_336, 16_414_015_488),
        ("resnext101_64x4d", 83_455_272, 15_460_270_080),
        ("wide_resnet50_2", 68_883_240, 11_398_021_120),
        ("wide_resnet101_2", 126_886_696, 22_753_050_624),
    ];
    let mut args = vec!["complexity", "--format", "json"];
    args.extend(expected.iter().map(|e| e.0));
    let rows = json(&args);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), expected.len());
    for (row, (model, params, macs)) in rows.iter().zip(expected) {
        assert_eq!(row["model"], model);
        assert_eq!(row["params"].as_u64(), Some(params), "{model}");
        assert_eq!(row["macs"].as_u64(), Some(macs), "{model}");
        assert_eq!(row["input_size"].as_u64(), Some(224));
    }
}

#[test]
fn complexity_table_prints_table_1_side_by_side() {
    let out = cardinal()
        .args(["complexity", "resnet50", "resnext50_32x4d"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for needle in [
        "conv2",
        "[1x1, 128; 3x3, 128, C=32; 1x1, 256] x3",
        "25,557,032",
        "25,028,904",
        "4,230,479,872",
        "paper (Table 1)",
        "4.1×10⁹",
        "4.2×10⁹",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn complexity_at_another_input_size() {
    let rows = json(&[
        "complexity",
        "cpu_resnet20",
        "--input-size",
        "32",
        "--format",
        "json",
    ]);
    assert_eq!(rows[0]["input_size"].as_u64(), Some(32));
    let rows28 = json(&["complexity", "cpu_resnet20", "--format", "json"]);
    assert!(rows[0]["macs"].as_u64() > rows28[0]["macs"].as_u64());
}

#[test]
fn preserve_prints_paper_table_2() {
    let rows = json(&[
        "complexity",
        "--preserve",
        "resnet50",
        "--cardinality",
        "1,2,4,8,32",
        "--format",
        "json",
    ]);
    let got: Vec<(u64, u64, u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cardinality"].as_u64().unwrap(),
                r["bottleneck_width"].as_u64().unwrap(),
                r["group_width"].as_u64().unwrap(),
                r["block_params"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 64, 64, 69_632),
            (2, 40, 80, 69_760),
            (4, 24, 96, 69_888),
            (8, 14, 112, 71_456),
            (32, 4, 128, 70_144)
        ]
    );
    let out = cardinal()
        .args(["complexity", "--preserve", "resnet50"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("69,632") && text.contains("71,456"), "{text}");
}

#[test]
fn equivalence_json_reports_every_check() {
    let out = cardinal()
        .args([
            "equivalence",
            "cpu_resnext11_4x12d",
            "--input-size",
            "28",
            "--format",
            "json",
        ])
        .assert()
        .success();
    let checks: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let checks = checks.as_array().unwrap();
    assert_eq!(checks.len(), 16);
    for c in checks {
        assert_eq!(c["passed"], true, "{c}");
        assert!(c["max_abs_diff"].as_f64().unwrap() <= c["tolerance"].as_f64().unwrap());
    }
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for needle in [
        "form A vs C: input gradient",
        "form B vs C: weight gradients",
        "depth-2 aggregated 4x12d vs wide 48: logits (train)",
    ] {
        assert!(names.contains(&needle), "{names:?}");
    }
}

#[test]
fn infer_reproduces_torchvision_logits() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("logits.safetensors");
    cardinal()
        .args(["infer", "--model"])
        .arg(zoo_fixture("resnext_tiny.yaml"))
        .arg("--weights")
        .arg(zoo_fixture("resnext_tiny_bf16.safetensors"))
        .arg("--input")
        .arg(zoo_fixture("io.safetensors"))
        .arg("--output")
        .arg(&output)
        .assert()
        .success();
    let device = candle_core::Device::Cpu;
    let ours = candle_core::safetensors::load(&output, &device).unwrap();
    let reference = candle_core::safetensors::load(zoo_fixture("io.safetensors"), &device).unwrap();
    let diff = (&ours["logits"] - &reference["logits_bf16"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() <= 1e-4);
}

#[test]
fn infer_with_a_grayscale_input_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gray.safetensors");
    let x = candle_core::Tensor::zeros(
        (1, 1, 32, 32),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&[("input".to_string(), x)].into_iter().collect(), &input)
        .unwrap();
    let out = cardinal()
        .args(["infer", "--model"])
        .arg(zoo_fixture("resnext_tiny.yaml"))
        .arg("--weights")
        .arg(zoo_fixture("resnext_tiny_f16.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("1 channels but the model expects 3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn infer_with_weights_for_another_model_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = cardinal()
        .args(["infer", "--model", "resnext50_32x4d", "--weights"])
        .arg(zoo_fixture("resnext_tiny_f16.safetensors"))
        .arg("--input")
        .arg(zoo_fixture("io.safetensors"))
        .arg("--output")
        .arg(dir.path().join("out.safetensors"))
        .assert()
        .code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("layer1.0.conv1.weight")
            && err.contains("[128, 64, 1, 1]")
            && err.contains("[16, 64, 1, 1]"),
        "{err}"
    );
}

#[test]
fn unknown_model_suggests_close_names() {
    let out = cardinal().args(["complexity", "resnet5"]).assert().code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("unknown model 'resnet5'") && err.contains("'resnet50'"),
        "{err}"
    );
}

#[test]
fn a_spec_file_with_an_impossible_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(zoo_fixture("resnext_tiny.yaml"))
        .unwrap()
        .replace("cardinality: 4", "cardinality: 0");
    std::fs::write(&path, text).unwrap();
    let out = cardinal().arg("complexity").arg(&path).assert().code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("bad.yaml") && err.contains("`cardinality`"),
        "{err}"
    );
}

#[test]
fn models_lists_every_required_preset() {
    let rows = json(&["models", "--format", "json"]);
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    for name in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet200",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
        "resnext50_2x40d",
        "resnext50_4x24d",
        "resnext50_8x14d",
        "resnext101_2x40d",
        "resnext101_4x24d",
        "resnext101_8x14d",
        "resnext101_2x64d",
        "resnet101_1x100d",
        "resnext29_8x64d",
        "resnext29_16x64d",
        "cpu_resnet20",
    ] {
        assert!(names.contains(&name), "{name} missing");
    }
}

#[test]
fn per_layer_csv_adds_up_to_the_total() {
    let out = cardinal()
        .args([
            "complexity",
            "resnext50_32x4d",
            "--layers",
            "--format",
            "csv",
        ])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("model,input_size,layer,output_size,params,macs")
    );
    let (mut params, mut macs) = (0u64, 0u64);
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        params += cells[4].parse::<u64>().unwrap();
        macs += cells[5].parse::<u64>().unwrap();
    }
    assert_eq!((params, macs), (25_028_904, 4_230_479_872));
    assert!(
        text.contains("resnext50_32x4d,224,layer1.0.conv2,56,4608,14450688"),
        "grouped conv: 128*4*9 weights"
    );
}

/// `bench train --profile`: the time of every op, then sums by kind per step, whose
/// forward products' multiply-adds add up to the model's exact complexity; it refuses
/// candle's ops, which it does not time.
#[test]
fn bench_train_profile_sums_the_products_multiply_adds_by_kind() {
    let out = cardinal()
        .args([
            "bench",
            "train",
            "--model",
            "cpu_resnext11_4x12d",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--profile",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let case: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let macs_per_image = case["macs"].as_f64().unwrap();
    let (ops, kinds) = stderr
        .split_once("by kind, median of 1 step")
        .unwrap_or_else(|| panic!("no summary by kind in\n{stderr}"));
    assert!(ops.contains("conv forward 2x28x28x1->32 k3 s2 g1"), "{ops}");
    assert!(ops.contains("batch norm"), "{ops}");
    let forward_mmacs: f64 = kinds
        .lines()
        .filter(|l| l.starts_with("conv forward"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(kinds.contains("conv forward 3x3 grouped"), "{kinds}");
    // The classifier's multiply-adds are in the complexity but are not a convolution.
    let expected = 2.0 * macs_per_image / 1e6;
    assert!(
        (forward_mmacs - expected).abs() < 0.005 * expected,
        "forward {forward_mmacs} MMAC against {expected} in\n{kinds}"
    );

    let out = cardinal()
        .args([
            "bench",
            "train",
            "--kernels",
            "candle",
            "--profile",
            "--steps",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile times cardinal's CPU kernels"));
}

/// The JSON contract of `cardinal bench train`: one case is one object, the kernel choice
/// `both` gives two cases (cardinal's kernels, then candle's ops) with the spec attached.
#[test]
fn bench_train_reports_images_per_second_and_memory_as_json() {
    let out = cardinal()
        .args([
            "bench",
            "train",
            "--model",
            "cpu_resnext11_4x12d",
            "--batch-size",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let case: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(case["model"], "cpu_resnext11_4x12d");
    assert_eq!(case["batch_size"], 4);
    assert_eq!(case["input_size"], 28);
    assert!(case["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(case["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(case["spec"]["cardinality"], 4);

    let out = cardinal()
        .args([
            "bench",
            "train",
            "--model",
            "cpu_resnet11",
            "--batch-size",
            "2",
            "--input-size",
            "20",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--kernels",
            "both",
            "--form",
            "A",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kernels: Vec<&str> = cases
        .iter()
        .map(|c| c["kernels"].as_str().unwrap())
        .collect();
    assert_eq!(kernels, ["cardinal", "candle"]);
    assert!(cases
        .iter()
        .all(|c| c["input_size"] == 20 && c["spec"]["form"] == "A"));

    let out = cardinal()
        .args(["bench", "train", "--model", "cpu_resnet11", "--form", "D"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected A, B or C"));

    // Rounds: every case timed in each, its img/s the median; every later model against
    // the first by the median of the rounds' own ratios.
    // The dense and the grouped 11-layer models, batch 2, one step a round, as JSON.
    let two_models = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = cardinal()
            .args(["bench", "train", "--model", "cpu_resnet11"])
            .args(["--model", "cpu_resnext11_4x12d", "--batch-size", "2"])
            .args(["--steps", "1", "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let cases = two_models(&["--warmup", "0", "--rounds", "3"]);
    let rounds = |c: &serde_json::Value| -> Vec<f64> {
        c["round_images_per_sec"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (dense, grouped) = (rounds(&cases[0]), rounds(&cases[1]));
    assert!(cases.iter().all(|c| c["rounds"] == 3));
    assert_eq!((dense.len(), grouped.len()), (3, 3));
    let mut sorted = grouped.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(cases[1]["images_per_sec"].as_f64().unwrap(), sorted[1]);
    assert!(cases[0].get("against_first").is_none());
    let mut ratios: Vec<f64> = grouped.iter().zip(&dense).map(|(g, d)| g / d).collect();
    ratios.sort_by(f64::total_cmp);
    let against = &cases[1]["against_first"];
    assert_eq!(against["median"].as_f64().unwrap(), ratios[1]);
    assert_eq!(
        (
            against["min"].as_f64().unwrap(),
            against["max"].as_f64().unwrap()
        ),
        (ratios[0], ratios[2])
    );
    let quartiles = against["quartiles"].as_array().unwrap();
    assert_eq!(
        (
            quartiles[0].as_f64().unwrap(),
            quartiles[1].as_f64().unwrap()
        ),
        (ratios[0], ratios[2])
    );

    // Interleaved rounds: every model held, the cases' steps in turn; the same record, the
    // quartiles a quarter of the way in from each end of five sorted ratios.
    let cases = two_models(&["--warmup", "1", "--rounds", "5", "--interleave"]);
    assert!(cases
        .iter()
        .all(|c| c["rounds"] == 5 && c["interleaved"] == true && c["peak_rss_bytes"].is_null()));
    let (dense, grouped) = (rounds(&cases[0]), rounds(&cases[1]));
    assert_eq!((dense.len(), grouped.len()), (5, 5));
    let mut ratios: Vec<f64> = grouped.iter().zip(&dense).map(|(g, d)| g / d).collect();
    ratios.sort_by(f64::total_cmp);
    let against = &cases[1]["against_first"];
    let quartiles = against["quartiles"].as_array().unwrap();
    assert_eq!(
        (
            against["median"].as_f64().unwrap(),
            quartiles[0].as_f64().unwrap(),
            quartiles[1].as_f64().unwrap()
        ),
        (ratios[2], ratios[1], ratios[3])
    );

    // It needs rounds to compare, and cannot profile one case's steps among others'.
    for (extra, message) in [
        (&["--rounds", "1"][..], "--rounds 2 or more"),
        (&["--rounds", "2", "--profile"][..], "without --interleave"),
    ] {
        let out = cardinal()
            .args(["bench", "train", "--model", "cpu_resnet11", "--interleave"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }

    // A zero count names its flag.
    for flag in ["--batch-size", "--steps", "--input-size", "--rounds"] {
        let out = cardinal()
            .args(["bench", "train", "--model", "cpu_resnet11", flag, "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("must be at least 1"),
            "{flag}: {stderr}"
        );
    }

    // The test build has no CUDA backend: the error says how to get one.
    let out = cardinal()
        .args([
            "bench",
            "train",
            "--model",
            "cpu_resnet11",
            "--device",
            "cuda:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
}
