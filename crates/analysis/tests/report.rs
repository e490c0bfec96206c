//! Reports from a results store the test writes: values in the Markdown tables, figures
//! that decode at the expected size, and conclusions that follow the numbers.

use std::path::{Path, PathBuf};

use cardinal_analysis::figure::SIZE;
use cardinal_analysis::{compare, write_report, ReportInput, Run};

use cardinal_results::{MetricRow, INTERIM};

struct Cell<'a> {
    cardinality: usize,
    width: usize,
    form: &'a str,
    params: u64,
    macs: u64,
    /// Final test top-1 error (fraction) per seed; earlier epochs are higher.
    finals: &'a [f64],
    images_per_sec: f64,
    seconds_per_epoch: f64,
    /// Also write a test evaluation half-way through each epoch (`test-interim`), at an
    /// error below every end-of-epoch one, so a table that took it as final would show.
    interim: bool,
    precision: &'a str,
}

/// Writes one run directory per seed of `cell`; returns them.
fn write_cell(runs: &Path, cell: &Cell, finished: bool) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for (seed, &final_err) in cell.finals.iter().enumerate() {
        let form_part = if cell.form == "C" {
            String::new()
        } else {
            format!("-form{}", cell.form)
        };
        let run_id = format!(
            "c{}x{}d{form_part}-s{seed}-0123456789",
            cell.cardinality, cell.width
        );
        let dir = runs.join(&run_id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut labels = format!(
            "labels:\n  bottleneck_width: \"{}\"\n  cardinality: \"{}\"\n",
            cell.width, cell.cardinality
        );
        if cell.form != "C" || cell.finals.is_empty() {
            labels.push_str(&format!("  model.form: {}\n", cell.form));
        }
        std::fs::write(
            dir.join("config.yaml"),
            format!(
                "experiment: toy\nmodel: toy@{}x{}d\ntrain:\n  epochs: 3\n  train_images: null\nseed: {seed}\n{labels}",
                cell.cardinality, cell.width
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("meta.json"),
            r#"{"host":"testhost","threads":2,"isa":"avx2","cardinal_version":"0.1.0","candle_version":"0.11.1",
               "sessions":[{"git_commit":"abcdef0123456789","git_dirty":false,
                            "start":"2026-11-28T01:00:00Z","end":"2026-11-28T01:10:00Z"}]}"#,
        )
        .unwrap();
        let epochs = if finished { 3 } else { 2 };
        let state = if finished { "finished" } else { "running" };
        std::fs::write(
            dir.join("status.json"),
            format!(r#"{{"state":"{state}","epochs_done":{epochs},"epochs":3,"message":null}}"#),
        )
        .unwrap();
        let mut rows = Vec::new();
        for epoch in 1..=epochs {
            // Errors fall towards the final value: +4, +2, +0 points.
            let test = final_err + 0.02 * (3 - epoch) as f64;
            let train = test + 0.01;
            let wall = cell.seconds_per_epoch * epoch as f64;
            let mut splits = vec![("train", train, epoch as f64), ("test", test, epoch as f64)];
            if cell.interim {
                splits.insert(0, (INTERIM, 0.001, epoch as f64 - 0.5));
            }
            for (split, err, progress) in splits {
                rows.push(MetricRow {
                    experiment: "toy".into(),
                    run_id: run_id.clone(),
                    model: format!("toy@{}x{}d", cell.cardinality, cell.width),
                    cardinality: cell.cardinality,
                    bottleneck_width: cell.width,
                    form: cell.form.to_string(),
                    params: cell.params,
                    macs: cell.macs,
                    seed: seed as u64,
                    epoch,
                    split: split.into(),
                    loss: err * 3.0,
                    top1_err: err,
                    top5_err: err / 10.0,
                    lr: 0.1,
                    images_per_sec: cell.images_per_sec,
                    wall_seconds: wall,
                    progress,
                    precision: cell.precision.into(),
                });
            }
        }
        cardinal_results::write_metrics(&dir.join("metrics.csv"), &rows).unwrap();
        dirs.push(dir);
    }
    dirs
}

fn input(runs: Vec<PathBuf>) -> ReportInput {
    ReportInput {
        experiment: "toy".into(),
        question: "Does cardinality help?".into(),
        preset: Some("default".into()),
        setup: vec![("Dataset".into(), "fashion-mnist".into())],
        runs,
        reproduce: "just ablate toy".into(),
        commit: Some("0123456789".into()),
        generated: "2026-11-28".into(),
        ..Default::default()
    }
}

fn resnet(finals: &[f64]) -> Cell<'_> {
    Cell {
        cardinality: 1,
        width: 32,
        form: "C",
        params: 517_226,
        macs: 20_017_280,
        finals,
        images_per_sec: 210.0,
        seconds_per_epoch: 300.0,
        interim: false,
        precision: "f32",
    }
}

fn resnext(finals: &[f64]) -> Cell<'_> {
    Cell {
        cardinality: 32,
        width: 2,
        form: "C",
        params: 498_698,
        macs: 20_970_240,
        finals,
        images_per_sec: 180.0,
        seconds_per_epoch: 350.0,
        interim: false,
        precision: "f32",
    }
}

fn check_png(path: &Path) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((image.width(), image.height()), SIZE, "{}", path.display());
    // Not blank: a white canvas with a plot on it has many distinct colours.
    let rgb = image.to_rgb8();
    let mut colours: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 20,
        "{}: only {} colours",
        path.display(),
        colours.len()
    );
}

fn check_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("<svg"), "{}", path.display());
    assert!(
        text.contains(&format!("width=\"{}\"", SIZE.0)),
        "{}",
        path.display()
    );
    assert!(text.contains("epoch") || text.contains("MACs") || text.contains("cardinality"));
}

#[test]
fn a_clear_difference_is_reported_with_tables_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut dirs = write_cell(&runs, &resnet(&[0.099, 0.100, 0.101]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.079, 0.080, 0.081]), true));
    let out = tmp.path().join("reports/toy");
    let written = write_report(&input(dirs.clone()), &out).unwrap();
    assert_eq!((written.finished, written.total), (6, 6));
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    // The title names the preset (and any overrides) that chose the runs.
    assert!(md.starts_with("# toy, preset default\n"), "{md}");
    // No target half-width, no seeds column; the spread of the differences is always there.
    assert!(!md.contains("seeds for ±"), "{md}");
    assert!(md.contains("| std of the differences (points) |"), "{md}");
    let mut custom = input(dirs.clone());
    custom.overrides = vec!["train.epochs=3".into()];
    let other = tmp.path().join("reports/toy-custom");
    write_report(&custom, &other).unwrap();
    let title = std::fs::read_to_string(other.join("README.md")).unwrap();
    assert!(
        title.starts_with("# toy, preset default, train.epochs=3\n"),
        "{title}"
    );
    // Nothing half-written is left beside the report.
    for entry in std::fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!cardinal_results::is_temp_name(&name), "{name} left behind");
        assert!(entry.metadata().unwrap().len() > 0, "{name} is empty");
    }

    // Complexity beside Table 2, errors (mean ± std over 3 seeds) beside Table 3.
    assert!(
        md.contains("| 1x32d | 1 | 32 | 32 | 517,226 | 20,017,280 | +0.0% | +0.0% | 64, 64 |"),
        "{md}"
    );
    assert!(
        md.contains("| 32x2d | 32 | 2 | 64 | 498,698 | 20,970,240 | -3.6% | +4.8% | 4, 128 |"),
        "{md}"
    );
    assert!(
        md.contains("| 1x32d | 3 | 3 | 10.00 ± 0.10 | 10.00 ± 0.10 | 1.00 ± 0.01 | 11.00 ± 0.10 | 210 ± 0 | 300 | 23.9 (1x64d) |"),
        "{md}"
    );
    assert!(md.contains("| 32x2d | 3 | 3 | **8.00 ± 0.10** |"), "{md}");
    assert!(md.contains("22.2 (32x4d) |"));
    assert!(md.contains("a different dataset and scale"));
    assert!(md.contains("host testhost, 2 threads a run"));
    assert!(md.contains(", products on avx2"), "{md}");
    assert!(
        md.contains("the runs are deterministic, so it gives these metrics bit for bit on a machine with the same instruction-set path, thread count and precision"),
        "{md}"
    );
    // 3 seeds x (900 s + 1050 s).
    assert!(
        md.contains("| Wall time | 1 h 37 min summed over the 6 finished runs"),
        "{md}"
    );
    assert!(md.contains("abcdef0123"));

    assert!(md.contains("| Precision | f32 |"), "{md}");
    assert!(md.contains("| 15 min 0 s | f32 | abcdef0123 |"), "{md}");
    // Every seed 2 points lower: a paired difference with no spread, and said so, with
    // the paper's Table 3 difference (22.2 - 23.9) beside it.
    assert!(
        md.contains("| 32x2d | 1x32d | 3 | -2.00 | -2.00 to -2.00 | < 0.001 | < 0.001 | lower | 0.00 | -1.7 (32x4d vs 1x64d) |"),
        "{md}"
    );
    assert!(
        md.contains("paired difference -2.00 points (95% CI -2.00 to -2.00, 3 seeds): **lower**"),
        "{md}"
    );
    assert!(!md.contains("| no difference detected"), "{md}");
    // Two cardinalities are a comparison, not a trend.
    assert!(!md.contains("## Trend"), "{md}");

    for stem in ["curves", "error-vs-cardinality", "error-vs-complexity"] {
        assert!(md.contains(&format!("]({stem}.svg)")), "{stem}");
        check_png(&out.join(format!("{stem}.png")));
        check_svg(&out.join(format!("{stem}.svg")));
    }
    assert!(!out.join("epoch-time.png").exists());
}

#[test]
fn overlapping_spreads_are_not_called_a_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    // Seeds 0, 1, 2: 9, 10, 11% against 10.8, 8.8, 9.8%. Paired differences +1.8, -1.2,
    // -1.2: mean -0.2, sd sqrt(6 / 2) = 1.732, se 1.0, so the 95% interval is
    // -0.2 ± 4.303 = -4.50 to +4.10: nothing detected, and how much could hide in it.
    let mut dirs = write_cell(&runs, &resnet(&[0.09, 0.10, 0.11]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.108, 0.088, 0.098]), true));
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        md.contains("paired difference -0.20 points (95% CI -4.50 to +4.10, 3 seeds): **no difference detected (±4.30)**"),
        "{md}"
    );
    assert!(
        md.contains("| 32x2d | 1x32d | 3 | -0.20 | -4.50 to +4.10 |"),
        "{md}"
    );
    assert!(md.contains("| no difference detected (±4.30) |"), "{md}");
    assert!(
        !md.contains("| lower |") && !md.contains("**lower**"),
        "{md}"
    );
}

#[test]
fn one_seed_makes_no_claim_and_unfinished_runs_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut dirs = write_cell(&runs, &resnet(&[0.10]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.05]), true));
    dirs.extend(write_cell(
        &runs,
        &Cell {
            cardinality: 4,
            width: 12,
            ..resnet(&[0.2])
        },
        false,
    ));
    dirs.push(runs.join("never-started"));
    let out = tmp.path().join("report");
    let written = write_report(&input(dirs), &out).unwrap();
    assert_eq!((written.finished, written.total), (2, 4));
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("2 of 4 runs finished"), "{md}");
    // Single runs: no winner in bold, no line through the points' noise.
    assert!(!md.contains("**5.00**"), "{md}");
    assert!(md.contains("Not in the tables, figures or comparisons (no finished run yet): 4x12d, never-started."), "{md}");
    assert!(md.contains("cannot be told apart from noise"), "{md}");
    assert!(
        md.contains("With 1 seed per configuration no confidence interval can be computed"),
        "{md}"
    );
    assert!(
        md.contains("| 32x2d | 1x32d | 1 | -5.00 | cannot be computed (one seed) | – | – | – |"),
        "{md}"
    );
    assert!(md.contains("| running (2/3 epochs) |"), "{md}");
    assert!(
        md.contains("| `never-started` | never-started | – | not started |"),
        "{md}"
    );
    // The unfinished cell is not in the tables.
    assert!(!md.contains("| 4x12d | 4 |"), "{md}");
}

#[test]
fn block_forms_get_time_and_gap_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let form = |form, finals, seconds| Cell {
        cardinality: 4,
        width: 12,
        form,
        params: 849_258,
        macs: 28_347_520,
        finals,
        images_per_sec: 180.0,
        seconds_per_epoch: seconds,
        interim: false,
        precision: "f32",
    };
    let mut dirs = write_cell(&runs, &form("A", &[0.100], 600.0), true);
    dirs.extend(write_cell(&runs, &form("B", &[0.101], 450.0), true));
    dirs.extend(write_cell(&runs, &form("C", &[0.102], 300.0), true));
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("Time per epoch (training and evaluation): 4x12d is fastest at 300 s; 4x12d, form A 2.00x (600 s), 4x12d, form B 1.50x (450 s)."), "{md}");
    assert!(md.contains("at most 0.20 points apart"), "{md}");
    assert!(!md.contains("bit-identical"), "{md}");
    for stem in ["curves", "epoch-time", "form-difference"] {
        check_png(&out.join(format!("{stem}.png")));
        check_svg(&out.join(format!("{stem}.svg")));
    }
    assert!(!out.join("error-vs-cardinality.png").exists());
}

#[test]
fn timings_from_a_shared_machine_are_flagged_not_compared() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let form = |form, finals| Cell {
        cardinality: 4,
        width: 12,
        form,
        params: 849_258,
        macs: 28_347_520,
        finals,
        images_per_sec: 180.0,
        seconds_per_epoch: 300.0,
        interim: false,
        precision: "f32",
    };
    let mut dirs = write_cell(&runs, &form("A", &[0.100]), true);
    dirs.extend(write_cell(&runs, &form("C", &[0.100]), true));
    // Form A's second epoch ran at a third of the speed: something else used the CPU.
    let metrics = dirs[0].join("metrics.csv");
    let mut rows = cardinal_results::read_metrics(&metrics).unwrap();
    for row in rows
        .iter_mut()
        .filter(|r| r.epoch == 2 && r.split == "train")
    {
        row.images_per_sec = 60.0;
    }
    cardinal_results::write_metrics(&metrics, &rows).unwrap();
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| 140 † | 300 † |"), "{md}");
    assert!(
        md.contains("(fastest / slowest epoch: 4x12d, form A (3.0x))"),
        "{md}"
    );
    assert!(md.contains("Time per epoch is not compared"), "{md}");
    assert!(!md.contains("is fastest at"), "{md}");
    // The same errors and losses at every epoch: said, since the lines overlap.
    assert!(
        md.contains("**4x12d, form A** and **4x12d** give bit-identical losses"),
        "{md}"
    );
}

#[test]
fn no_finished_run_is_an_error_that_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = vec![tmp.path().join("runs/toy/a"), tmp.path().join("runs/toy/b")];
    let err = write_report(&input(dirs), &tmp.path().join("report")).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("no finished run of toy"), "{message}");
    assert!(message.contains("cardinal ablate toy"), "{message}");
    assert!(!tmp.path().join("report/README.md").exists());
}

#[test]
fn a_mix_of_measured_and_single_seed_cells_claims_only_the_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut dirs = write_cell(&runs, &resnet(&[0.09, 0.10, 0.11]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.108, 0.088, 0.098]), true));
    dirs.extend(write_cell(
        &runs,
        &Cell {
            cardinality: 4,
            width: 12,
            ..resnet(&[0.02])
        },
        true,
    ));
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        md.contains("Of the 1 comparison against 1x32d with a confidence interval (1 to 3 seeds per configuration), 0 are lower, 0 higher and 1 shows no difference detected"),
        "{md}"
    );
    assert!(
        md.contains("No confidence interval for: 4x12d (one seed)."),
        "{md}"
    );
    // The trend needs every cardinality at a seed: only seed 0 has them all.
    assert!(
        md.contains("comes from one seed: its interval cannot be computed"),
        "{md}"
    );
    assert!(
        md.contains("Left out: seeds 1, 2 (not every cardinality has them exactly once)."),
        "{md}"
    );
}

#[test]
fn columns_in_another_order_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dirs = write_cell(&runs, &resnet(&[0.1]), true);
    let metrics = dirs[0].join("metrics.csv");
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(
        &metrics,
        text.replacen("top1_err,top5_err", "top5_err,top1_err", 1),
    )
    .unwrap();
    let err = write_report(&input(dirs), &tmp.path().join("report"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics.csv") && err.contains("header column 13 is \"top5_err\""),
        "{err}"
    );
}

#[test]
fn a_malformed_metrics_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dirs = write_cell(&runs, &resnet(&[0.1]), true);
    let metrics = dirs[0].join("metrics.csv");
    let header = cardinal_results::to_csv(&[]);
    std::fs::write(
        &metrics,
        format!("{header}toy,x,m,one,32,C,1,1,0,1,test,0.1,0.1,0.1,0.1,1,1\n"),
    )
    .unwrap();
    let err = write_report(&input(dirs), &tmp.path().join("report")).unwrap_err();
    assert!(err.to_string().contains("metrics.csv"), "{err}");
}

/// A finished run whose metrics lost rows is an error naming the file and the epochs,
/// not a report that takes the last complete epoch as final.
#[test]
fn a_finished_run_with_lost_rows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dirs = write_cell(&runs, &resnet(&[0.1]), true);
    let metrics = dirs[0].join("metrics.csv");
    let rows = cardinal_results::read_metrics(&metrics).unwrap();
    let kept: Vec<MetricRow> = rows.into_iter().filter(|r| r.epoch != 3).collect();
    cardinal_results::write_metrics(&metrics, &kept).unwrap();
    let err = write_report(&input(dirs), &tmp.path().join("report"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics.csv") && err.contains("finished 3 epochs") && err.contains("epoch 3"),
        "{err}"
    );
}

#[test]
fn compare_aggregates_seeds_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut dirs = write_cell(&runs, &resnet(&[0.099, 0.101]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.08]), false));
    let opened: Vec<Run> = dirs.iter().map(|d| Run::open(d).unwrap()).collect();
    let table = compare(opened).unwrap();
    let text = table.text();
    let row = text.lines().find(|l| l.starts_with("1x32d")).expect(&text);
    assert!(
        row.contains("517,226") && row.contains("10.00 ± 0.14"),
        "{text}"
    );
    // An unfinished run shows where it is (epoch 2, 2 points above its final value), apart
    // from finished seeds.
    let row = text.lines().find(|l| l.starts_with("32x2d")).expect(&text);
    assert!(row.starts_with("32x2d [running (2/3 epochs)]"), "{text}");
    assert!(row.contains("10.00") && row.contains(" 2 "), "{text}");

    // Naming a run twice counts it once.
    let twice: Vec<Run> = [&dirs[0], &dirs[0], &dirs[1]]
        .iter()
        .map(|d| Run::open(d).unwrap())
        .collect();
    let text = compare(twice).unwrap().text();
    let row = text.lines().find(|l| l.starts_with("1x32d")).expect(&text);
    assert!(
        row.contains("10.00 ± 0.14") && row.contains(" 300"),
        "{text}"
    );
}

/// A cell of a sweep at the paper's widths: C, d from Table 2, MACs within a few percent.
fn sweep_cell(cardinality: usize, finals: &[f64]) -> Cell<'_> {
    let width = match cardinality {
        1 => 64,
        2 => 40,
        4 => 24,
        8 => 14,
        _ => 4,
    };
    Cell {
        cardinality,
        width,
        macs: 20_000_000 + 100_000 * cardinality as u64,
        interim: true,
        ..resnet(finals)
    }
}

/// Percent values as the fractions the store holds.
fn fractions(percent: &[f64]) -> Vec<f64> {
    percent.iter().map(|p| p / 100.0).collect()
}

#[test]
fn a_cardinality_sweep_reports_paired_intervals_holm_verdicts_and_the_trend() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    // Four seeds (t_{0.975, 3} = 3.182). The reference C = 1: 10.0, 10.4, 9.8, 10.2%.
    // Paired differences from it, by seed:
    //   C = 2: +0.1, -0.1, +0.2, -0.2: mean 0, sd sqrt(0.1 / 3) = 0.1826, se 0.0913,
    //          half-width 0.29: no difference detected (±0.29);
    //   C = 4: -0.9, -1.1, -1.0, -1.0: mean -1.0, sd sqrt(0.02 / 3) = 0.0816, se 0.0408,
    //          half-width 0.13: -1.13 to -0.87, lower;
    //   C = 8: -2.1, -1.9, -2.0, -2.0: -2.13 to -1.87, lower.
    // Slopes against log2 C = 0, 1, 2, 3 (Sxx = 5; slope = (-0.5 d2 + 0.5 d4 + 1.5 d8) / 5):
    //   seeds 0..3: -0.73, -0.67, -0.72, -0.68; mean -0.70, sd sqrt(0.0026 / 3) = 0.02944,
    //   se 0.01472, half-width 0.0468: -0.747 to -0.653, so error falls with C.
    let reference = [10.0, 10.4, 9.8, 10.2];
    let shifted = |d: [f64; 4]| -> Vec<f64> {
        fractions(
            &reference
                .iter()
                .zip(d)
                .map(|(r, d)| r + d)
                .collect::<Vec<_>>(),
        )
    };
    let cells = [
        (1, fractions(&reference)),
        (2, shifted([0.1, -0.1, 0.2, -0.2])),
        (4, shifted([-0.9, -1.1, -1.0, -1.0])),
        (8, shifted([-2.1, -1.9, -2.0, -2.0])),
    ];
    let mut dirs = Vec::new();
    for (c, finals) in &cells {
        dirs.extend(write_cell(&runs, &sweep_cell(*c, finals), true));
    }
    let out = tmp.path().join("report");
    let input = ReportInput {
        target_half_width: Some(0.2),
        ..input(dirs)
    };
    write_report(&input, &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();

    // The spread of the differences, and the seeds that ±0.2 would take at it: sd 0.1826
    // needs 6 (t(4) 2.776 x 0.1826 / sqrt 5 = 0.227, t(5) 2.571 x 0.1826 / sqrt 6 = 0.192);
    // sd 0.0816 needs 4 (3 seeds: 4.303 x 0.0816 / sqrt 3 = 0.203).
    assert!(md.contains("| seeds for ±0.2 |"), "{md}");
    assert!(
        md.contains("| no difference detected (±0.29) | 0.18 | 6 |"),
        "{md}"
    );
    assert_eq!(md.matches("| lower | 0.08 | 4 |").count(), 2, "{md}");

    // Final and best errors are the end-of-epoch ones, not the lower interim evaluations.
    assert!(
        md.contains("| 4x24d | 4 | 3 | 9.10 ± 0.22 | 9.10 ± 0.22 |"),
        "{md}"
    );
    assert!(md.contains("## Comparisons"), "{md}");
    assert!(md.contains("| 2x40d | 1x64d | 4 |"), "{md}");
    assert!(
        md.contains("| 4x24d | 1x64d | 4 | -1.00 | -1.13 to -0.87 |"),
        "{md}"
    );
    assert!(
        md.contains("| 8x14d | 1x64d | 4 | -2.00 | -2.13 to -1.87 |"),
        "{md}"
    );
    let verdicts: Vec<&str> = md
        .lines()
        .filter(|l| l.contains(" | 1x64d | 4 | "))
        .map(|l| l.split(" | ").nth(7).unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["no difference detected (±0.29)", "lower", "lower"],
        "{md}"
    );
    // The paper's differences beside ours: 23.0 - 23.9, 22.6 - 23.9, 22.3 - 23.9.
    assert!(md.contains("| -0.9 (2x40d vs 1x64d) |"), "{md}");
    assert!(md.contains("| -1.6 (8x14d vs 1x64d) |"), "{md}");

    assert!(md.contains("## Trend"), "{md}");
    let trend = "At preserved complexity, error falls with C: slope -0.700 points per doubling of C (95% CI -0.747 to -0.653, 4 seeds).";
    // In the Trend section and in the conclusion.
    assert_eq!(md.matches(trend).count(), 2, "{md}");
    assert!(
        md.contains("| 0 | -0.730 |") && md.contains("| 3 | -0.680 |"),
        "{md}"
    );
    assert!(
        md.contains("a least-squares slope of -0.318 points per doubling of C"),
        "{md}"
    );
    assert!(
        md.contains("Of the 3 comparisons against 1x64d with a confidence interval (4 seeds per configuration), 2 are lower, 0 higher and 1 shows no difference detected"),
        "{md}"
    );
    // Curves through the evaluations within epochs, with the band named.
    assert!(md.contains("evaluated several times per epoch"), "{md}");
    assert!(md.contains("95% confidence interval of the mean"), "{md}");
    for stem in ["curves", "error-vs-cardinality", "error-vs-complexity"] {
        check_png(&out.join(format!("{stem}.png")));
    }
    assert!(!out.join("error-vs-macs-by-family.png").exists());
}

#[test]
fn resnet_and_resnext_across_complexity_get_a_line_each() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    // Three complexity levels (5, 20 and 80 M MACs), a ResNet and a ResNeXt at each, three
    // seeds; the ResNeXt is 0.5 points lower at every seed of every level, with a spread.
    let level = |cardinality, width, macs, finals| Cell {
        cardinality,
        width,
        macs,
        ..resnet(finals)
    };
    let resnets = [
        fractions(&[12.0, 12.5, 11.8]),
        fractions(&[10.0, 10.4, 9.9]),
        fractions(&[9.0, 9.3, 8.8]),
    ];
    let resnexts: Vec<Vec<f64>> = resnets
        .iter()
        .map(|r| {
            r.iter()
                .zip([-0.004, -0.006, -0.005])
                .map(|(v, d)| v + d)
                .collect()
        })
        .collect();
    let mut dirs = Vec::new();
    for (i, (width, macs)) in [(16, 5_000_000), (32, 20_000_000), (64, 80_000_000)]
        .into_iter()
        .enumerate()
    {
        dirs.extend(write_cell(&runs, &level(1, width, macs, &resnets[i]), true));
        let resnext = level(32, width / 16, macs + macs / 25, &resnexts[i]);
        dirs.extend(write_cell(&runs, &resnext, true));
    }
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    // Each ResNeXt against the ResNet of its own level; differences -0.4, -0.6, -0.5:
    // mean -0.5, sd 0.1, se 0.0577, half-width 4.303 x 0.0577 = 0.248.
    for (resnext, resnet) in [("32x1d", "1x16d"), ("32x2d", "1x32d"), ("32x4d", "1x64d")] {
        let row = format!("| {resnext} | {resnet} | 3 | -0.50 | -0.75 to -0.25 |");
        assert!(md.contains(&row), "{row}\n{md}");
    }
    assert!(
        md.contains("At equal multiply-adds, is ResNeXt better than ResNet? Of 3 comparisons with an interval (one per ResNeXt and complexity level, 3 levels), ResNeXt is lower in 3, higher in 0, and no difference is detected in 0"),
        "{md}"
    );
    // The family sentence is the summary: not said twice.
    assert!(!md.contains("Of the 3 comparisons against"), "{md}");
    assert!(md.contains("](error-vs-macs-by-family.svg)"), "{md}");
    check_png(&out.join("error-vs-macs-by-family.png"));
    check_svg(&out.join("error-vs-macs-by-family.svg"));
    let svg = std::fs::read_to_string(out.join("error-vs-macs-by-family.svg")).unwrap();
    assert!(svg.contains("ResNet (C = 1)") && svg.contains("ResNeXt (C = 32)"));
    assert!(!out.join("error-vs-cardinality.png").exists());
    assert!(!md.contains("## Trend"), "{md}");
}

#[test]
fn precisions_are_shown_per_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut dirs = write_cell(&runs, &resnet(&[0.1]), true);
    let bf16 = Cell {
        precision: "bf16-mixed",
        ..resnext(&[0.1])
    };
    dirs.extend(write_cell(&runs, &bf16, true));
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        md.contains("| Precision | f32 (1x32d); bf16-mixed (32x2d) |"),
        "{md}"
    );
    assert!(md.contains("| 17 min 30 s | bf16-mixed |"), "{md}");
}

/// Rows the store does not define, or that fit no place on a curve, are errors naming the
/// file and line, not rows left out of the figures.
#[test]
fn rows_that_fit_no_curve_are_refused_by_line() {
    type Spoil = fn(&mut MetricRow);
    let cases: [(&str, Spoil); 3] = [
        ("split \"valid\" is none of the store's", |r| {
            r.split = "valid".into()
        }),
        ("outside that epoch", |r| {
            r.split = INTERIM.into();
            r.progress = r.epoch as f64 + 0.5;
        }),
        ("has progress 2.5, not 2", |r| r.progress = 2.5),
    ];
    for (expected, spoil) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let dirs = write_cell(&runs, &resnet(&[0.1]), true);
        let metrics = dirs[0].join("metrics.csv");
        let mut rows = cardinal_results::read_metrics(&metrics).unwrap();
        // Line 4 of the file (after the header and epoch 1's two rows): epoch 2's train row.
        spoil(&mut rows[2]);
        cardinal_results::write_metrics(&metrics, &rows).unwrap();
        let err = write_report(&input(dirs), &tmp.path().join("report"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics.csv") && err.contains("line 4") && err.contains(expected),
            "{expected}: {err}"
        );
    }
    // A second evaluation at the same point would count as another seed.
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dirs = write_cell(&runs, &resnet(&[0.1]), true);
    let metrics = dirs[0].join("metrics.csv");
    let mut rows = cardinal_results::read_metrics(&metrics).unwrap();
    rows.push(rows[1].clone());
    cardinal_results::write_metrics(&metrics, &rows).unwrap();
    let err = write_report(&input(dirs), &tmp.path().join("report"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 8") && err.contains("a second test row at progress 1"),
        "{err}"
    );
}
