//! Experiment files: errors name line and key, presets and overrides apply, sweeps expand.

use std::path::Path;

use cardinal_train::experiment::{self, parse_overrides};

fn repo_experiment(name: &str) -> cardinal_train::Experiment {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments")
        .join(format!("{name}.yaml"));
    experiment::load(&path).unwrap()
}

const MINIMAL: &str = "\
question: q
dataset:
  name: mnist
model:
  preset: cpu_resnet11
train:
  epochs: 2
  batch_size: 16
  lr: 0.1
";

#[test]
fn every_committed_experiment_expands() {
    for (name, cells) in [
        ("cardinality", 5),
        ("cardinality-deep", 5),
        ("resnet-vs-resnext", 6),
        ("block-forms", 3),
        ("depth2", 2),
        ("precision", 4),
    ] {
        let e = repo_experiment(name);
        for preset in [None, Some("quick"), Some("full")] {
            let (resolved, _) = e.resolve(preset, &[]).unwrap();
            let seeds = resolved.seeds.len();
            assert_eq!(
                resolved.cells(name).unwrap().len(),
                cells * seeds,
                "{name} {preset:?}"
            );
        }
    }
}

#[test]
fn cardinality_grid_preserves_complexity_within_5_percent() {
    let overrides = parse_overrides(&["seeds=[0]".to_string()]).unwrap();
    let (e, _) = repo_experiment("cardinality")
        .resolve(None, &overrides)
        .unwrap();
    let cells = e.cells("cardinality").unwrap();
    let c: Vec<usize> = cells.iter().map(|c| c.spec.cardinality).collect();
    assert_eq!(c, vec![1, 2, 4, 8, 32]);
    let d: Vec<usize> = cells.iter().map(|c| c.spec.bottleneck_width).collect();
    assert_eq!(d, vec![32, 20, 12, 7, 2]);
    let macs: Vec<f64> = cells.iter().map(|c| c.macs as f64).collect();
    let (lo, hi) = macs
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
    assert!(hi / lo <= 1.05, "MACs range {lo}..{hi}");
    // Run ids are stable and distinct.
    let ids: std::collections::BTreeSet<String> = cells.iter().map(|c| c.run_id()).collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(
        cells[0].run_id(),
        e.cells("cardinality").unwrap()[0].run_id()
    );
}

#[test]
fn cells_come_seed_by_seed() {
    // A sweep stopped part way must hold whole seeds, every configuration of each.
    let overrides = parse_overrides(&["seeds=[3, 1]".to_string()]).unwrap();
    let (e, _) = repo_experiment("cardinality")
        .resolve(None, &overrides)
        .unwrap();
    let order: Vec<(u64, usize)> = e
        .cells("cardinality")
        .unwrap()
        .iter()
        .map(|c| (c.seed, c.spec.cardinality))
        .collect();
    let expected: Vec<(u64, usize)> = [3, 1]
        .iter()
        .flat_map(|&s| [1, 2, 4, 8, 32].map(|c| (s, c)))
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn unknown_key_names_the_line() {
    let text = MINIMAL.replace("  lr: 0.1", "  lr: 0.1\n  epochz: 3");
    let err = experiment::parse(&text).unwrap_err().to_string();
    assert!(err.contains("epochz"), "{err}");
    assert!(err.contains("line 10") || err.contains("10:"), "{err}");
    let text = MINIMAL.replace("epochs: 2", "epochs: two");
    let err = experiment::parse(&text).unwrap_err().to_string();
    assert!(err.contains("line 7") || err.contains("7:"), "{err}");
}

#[test]
fn overrides_and_presets_apply_and_typos_are_caught() {
    let text = format!("{MINIMAL}presets:\n  quick:\n    train.epochs: 1\n");
    let e = experiment::parse(&text).unwrap();
    let (r, _) = e.resolve(Some("quick"), &[]).unwrap();
    assert_eq!(r.train.epochs, 1);
    let overrides = parse_overrides(&[
        "train.lr=0.05".into(),
        "seeds=[1, 2]".into(),
        "model.form=A".into(),
    ])
    .unwrap();
    let (r, _) = e.resolve(None, &overrides).unwrap();
    assert_eq!(r.train.lr, 0.05);
    assert_eq!(r.seeds, vec![1, 2]);
    assert_eq!(
        r.cells("x").unwrap()[0].spec.form,
        cardinal_zoo::BlockForm::A
    );
    let err = e
        .resolve(None, &parse_overrides(&["train.epoch=3".into()]).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.epochs"), "{err}");
    let err = e.resolve(Some("slow"), &[]).unwrap_err().to_string();
    assert!(err.contains("quick"), "{err}");
    let err = e
        .resolve(
            None,
            &parse_overrides(&["train.momentum=1.5".into()]).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.momentum"), "{err}");
}

#[test]
fn impossible_specs_are_refused() {
    // C > 1 on a basic block outside the depth-2 experiment.
    let text = MINIMAL.replace(
        "  preset: cpu_resnet11",
        "  preset: cpu_resnet11\n  block: basic\n  cardinality: 4",
    );
    let e = experiment::parse(&text).unwrap();
    let err = format!(
        "{:#}",
        e.resolve(None, &[]).unwrap().0.cells("x").unwrap_err()
    );
    assert!(err.contains("Fig. 4"), "{err}");
    let text = MINIMAL.replace(
        "  preset: cpu_resnet11",
        "  preset: cpu_resnet11\n  widht: 3",
    );
    let e = experiment::parse(&text).unwrap();
    let err = format!(
        "{:#}",
        e.resolve(None, &[]).unwrap().0.cells("x").unwrap_err()
    );
    assert!(err.contains("model.widht"), "{err}");
}

/// Every bad value is named by its key and where it was set: an override, a preset entry,
/// or the file's line.
#[test]
fn bad_values_name_their_key_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.yaml");
    let with_preset = format!("{MINIMAL}presets:\n  broken:\n    train.batch_size: -4\n");
    std::fs::write(&path, &with_preset).unwrap();
    let e = experiment::load(&path).unwrap();
    let err = |args: &[&str]| -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse_overrides(&args) {
            Err(e) => format!("{e:#}"),
            Ok(overrides) => format!("{:#}", e.resolve(None, &overrides).unwrap_err()),
        }
    };
    let text = err(&["train.epochs=-1"]);
    assert!(
        text.contains("`train.epochs`") && text.contains("override `train.epochs=-1`"),
        "{text}"
    );
    let text = err(&["train.lr=abc"]);
    assert!(
        text.contains("`train.lr`") && text.contains("abc"),
        "{text}"
    );
    let text = err(&["seeds=[-1]"]);
    assert!(
        text.contains("`seeds[0]`") && text.contains("override `seeds=[-1]`"),
        "{text}"
    );
    let text = err(&["train.lr=.nan"]);
    assert!(
        text.contains("`train.lr`") && text.contains("finite"),
        "{text}"
    );
    let text = err(&["train.epochs=0"]);
    assert!(
        text.contains("`train.epochs`: must be at least 1")
            && text.contains("override `train.epochs=0`"),
        "{text}"
    );
    let text = err(&["target_half_width=-0.2"]);
    assert!(
        text.contains("`target_half_width`") && text.contains("override `target_half_width=-0.2`"),
        "{text}"
    );
    let text = format!("{:#}", e.resolve(Some("broken"), &[]).unwrap_err());
    assert!(
        text.contains("`train.batch_size`") && text.contains("preset `broken`"),
        "{text}"
    );

    // In the file: the key and its line.
    std::fs::write(&path, MINIMAL.replace("lr: 0.1", "lr: .nan")).unwrap();
    let text = format!("{:#}", experiment::load(&path).unwrap_err());
    assert!(
        text.contains("e.yaml, line 9") && text.contains("`train.lr`"),
        "{text}"
    );
    std::fs::write(&path, MINIMAL.replace("epochs: 2", "epochs: 0")).unwrap();
    let text = format!("{:#}", experiment::load(&path).unwrap_err());
    assert!(
        text.contains("e.yaml, line 7") && text.contains("`train.epochs`"),
        "{text}"
    );
}
