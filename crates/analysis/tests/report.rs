//! Reports from a results store the test writes: values in the Markdown tables, figures
//! that decode at the expected size, and conclusions that follow the numbers.

use std::path::{Path, PathBuf};

use cardinal_analysis::figure::SIZE;
use cardinal_analysis::{compare, write_report, ReportInput, Run};

use cardinal_results::MetricRow;

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
            r#"{"host":"testhost","threads":2,"cardinal_version":"0.1.0","candle_version":"0.11.1",
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
            for (split, err) in [("train", train), ("test", test)] {
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
                    progress: epoch as f64,
                    precision: "f32".into(),
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
    assert!(md.contains("host testhost, 2 threads"));
    // 3 seeds x (900 s + 1050 s).
    assert!(
        md.contains("| Wall time | 1 h 37 min for the 6 finished runs"),
        "{md}"
    );
    assert!(md.contains("abcdef0123"));

    // 2 points apart with a standard error of 0.08: a real difference, and said so.
    assert!(md.contains("2.00 points lower"), "{md}");
    assert!(md.contains("larger than the seed-to-seed spread"), "{md}");
    assert!(!md.contains("no significant difference"), "{md}");

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
    // Means 10.0 and 9.8, std 1.0 each: 0.2 points against a standard error of 0.82.
    let mut dirs = write_cell(&runs, &resnet(&[0.09, 0.10, 0.11]), true);
    dirs.extend(write_cell(&runs, &resnext(&[0.088, 0.098, 0.108]), true));
    let out = tmp.path().join("report");
    write_report(&input(dirs), &out).unwrap();
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("0.20 points lower"), "{md}");
    assert!(md.contains("no significant difference"), "{md}");
    assert!(!md.contains("spread (more than twice"), "{md}");
    assert!(
        md.contains(
            "None of the 1 measured differences from 1x32d is larger than the seed-to-seed spread"
        ),
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
    assert!(md.contains("seed-to-seed spread is not measured"), "{md}");
    assert!(!md.contains("spread (more than twice"), "{md}");
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
    dirs.extend(write_cell(&runs, &resnext(&[0.088, 0.098, 0.108]), true));
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
    assert!(md.contains("None of the 1 measured differences"), "{md}");
    assert!(
        md.contains("Not weighed against the spread (one seed, or identical seeds): 4x12d."),
        "{md}"
    );
    assert!(
        md.contains("without a measured spread for every cell they do not rank"),
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
