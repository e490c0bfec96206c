//! Augmentation is a function of (seed, epoch, sample index); the loader visits each sample
//! once per epoch in a seeded order, with or without its prefetch thread.

mod common;

use std::collections::BTreeSet;

use cardinal_data::{AugmentConfig, DataConfig, Dataset, Loader, LoaderConfig, Transform};
use common::*;

fn mnist(train: usize, side: usize) -> (tempfile::TempDir, Dataset) {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("mnist"), train, 5, side);
    let mut config = DataConfig::named("mnist");
    config.dir = Some(tmp.path().to_path_buf());
    let d = Dataset::open(&config).unwrap();
    (tmp, d)
}

fn augment(padding: usize, hflip: bool) -> AugmentConfig {
    AugmentConfig {
        padding: Some(padding),
        hflip: Some(hflip),
        ..Default::default()
    }
}

/// The image as bytes after the transform.
fn transformed(d: &Dataset, t: &Transform, position: usize, seed: u64, epoch: u64) -> Vec<u8> {
    let mut out = vec![0f32; d.shape.len()];
    t.apply(&d.train, position, seed, epoch, &mut out).unwrap();
    out.iter().map(|&v| t.denormalize(0, v)).collect()
}

/// Reference: pad with zeros, crop at (top, left), then optionally flip, written naively.
fn pad_crop_flip(
    image: &[u8],
    side: usize,
    pad: usize,
    top: usize,
    left: usize,
    flip: bool,
) -> Vec<u8> {
    let padded_side = side + 2 * pad;
    let mut padded = vec![0u8; padded_side * padded_side];
    for y in 0..side {
        for x in 0..side {
            padded[(y + pad) * padded_side + x + pad] = image[y * side + x];
        }
    }
    let mut out = vec![0u8; side * side];
    for y in 0..side {
        for x in 0..side {
            let cx = if flip { side - 1 - x } else { x };
            out[y * side + x] = padded[(y + top) * padded_side + cx + left];
        }
    }
    out
}

#[test]
fn random_crop_and_flip_match_a_padded_reference() {
    let side = 6;
    let (_tmp, d) = mnist(40, side);
    let pad = 2;
    let t = Transform::train(&d, &augment(pad, true));
    let mut seen = BTreeSet::new();
    for position in 0..40 {
        for epoch in 0..3 {
            let got = transformed(&d, &t, position, 9, epoch);
            let source: Vec<u8> = (0..side * side).map(|k| pixel(position, k)).collect();
            let mut matched = None;
            for top in 0..=2 * pad {
                for left in 0..=2 * pad {
                    for flip in [false, true] {
                        if pad_crop_flip(&source, side, pad, top, left, flip) == got {
                            matched = Some((top, left, flip));
                        }
                    }
                }
            }
            let m = matched.unwrap_or_else(|| {
                panic!("sample {position} epoch {epoch}: not a pad-crop-flip of its source")
            });
            seen.insert(m);
        }
    }
    // 120 draws over 50 outcomes: most offsets and both flips must appear.
    assert!(seen.len() > 30, "only {} distinct crops", seen.len());
    assert!(seen.iter().any(|m| m.2) && seen.iter().any(|m| !m.2));
}

#[test]
fn augmentation_depends_only_on_seed_epoch_and_index() {
    let (_tmp, d) = mnist(30, 8);
    let t = Transform::train(&d, &augment(2, true));
    let a = transformed(&d, &t, 5, 1, 2);
    assert_eq!(a, transformed(&d, &t, 5, 1, 2));
    let differs = |seed, epoch| {
        (0..30).any(|p| transformed(&d, &t, p, seed, epoch) != transformed(&d, &t, p, 1, 2))
    };
    assert!(differs(1, 3), "epochs must draw new augmentations");
    assert!(differs(2, 2), "seeds must draw new augmentations");
    // Turning augmentation off gives the evaluation transform.
    let off = Transform::train(
        &d,
        &AugmentConfig {
            enabled: false,
            ..Default::default()
        },
    );
    let eval = Transform::eval(&d);
    for p in 0..30 {
        assert_eq!(
            transformed(&d, &off, p, 1, 2),
            transformed(&d, &eval, p, 0, 0)
        );
    }
}

fn epoch_indices(loader: &Loader, epoch: u64) -> Vec<u32> {
    loader
        .epoch(epoch)
        .flat_map(|b| b.unwrap().indices)
        .collect()
}

#[test]
fn each_epoch_visits_every_sample_once_in_a_seeded_order() {
    let (_tmp, d) = mnist(103, 4);
    let t = Transform::train(&d, &Default::default());
    let mut config = LoaderConfig::new(10);
    config.seed = 5;
    let loader = Loader::new(d.train.clone(), t.clone(), config.clone()).unwrap();
    assert_eq!(loader.batches_per_epoch(), 11);
    let e0 = epoch_indices(&loader, 0);
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..103).collect::<Vec<u32>>());
    assert_ne!(e0, (0..103).collect::<Vec<u32>>(), "shuffled");
    assert_ne!(e0, epoch_indices(&loader, 1), "reshuffled each epoch");
    // Epoch 1's order does not depend on epoch 0 having run.
    let fresh = Loader::new(d.train.clone(), t.clone(), config.clone()).unwrap();
    assert_eq!(epoch_indices(&fresh, 1), epoch_indices(&loader, 1));
    config.seed = 6;
    let other = Loader::new(d.train.clone(), t.clone(), config.clone()).unwrap();
    assert_ne!(epoch_indices(&other, 0), e0);

    config.drop_last = true;
    let dropping = Loader::new(d.train.clone(), t, config).unwrap();
    assert_eq!(dropping.batches_per_epoch(), 10);
    assert_eq!(dropping.images_per_epoch(), 100);
    let batches: Vec<_> = dropping.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.len() == 10));
}

#[test]
fn prefetched_batches_equal_synchronous_ones() {
    let (_tmp, d) = mnist(57, 5);
    let t = Transform::train(&d, &Default::default());
    let mut config = LoaderConfig::new(8);
    config.prefetch = 2;
    config.seed = 11;
    let prefetching = Loader::new(d.train.clone(), t.clone(), config.clone()).unwrap();
    config.prefetch = 0;
    let sync = Loader::new(d.train.clone(), t, config).unwrap();
    let flat = |b: &cardinal_data::Batch| -> (Vec<f32>, Vec<u32>) {
        (
            b.images.flatten_all().unwrap().to_vec1().unwrap(),
            b.labels.to_vec1().unwrap(),
        )
    };
    let a: Vec<_> = prefetching.epoch(3).map(|b| flat(&b.unwrap())).collect();
    let b: Vec<_> = sync.epoch(3).map(|b| flat(&b.unwrap())).collect();
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
    // The last batch is partial and kept.
    assert_eq!(a[7].1.len(), 1);
    // Resuming inside an epoch yields the tail of the same epoch.
    let tail: Vec<_> = prefetching
        .epoch_from(3, 5)
        .map(|b| flat(&b.unwrap()))
        .collect();
    assert_eq!(tail, a[5..].to_vec());
    // Labels and indices agree with the split.
    let batch = sync.batch(3, 2).unwrap();
    let labels: Vec<u32> = batch.labels.to_vec1().unwrap();
    for (label, index) in labels.iter().zip(&batch.indices) {
        assert_eq!(*label, index % 10);
    }
}

/// A hang is a failure within a time limit, not a test run that never ends: the work runs
/// on its own thread and the test waits for it with a deadline.
#[test]
fn dropping_a_prefetching_epoch_early_does_not_hang() {
    let (tmp, d) = mnist(200, 4);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _tmp = tmp;
        let t = Transform::train(&d, &Default::default());
        let mut config = LoaderConfig::new(2);
        config.prefetch = 1;
        let loader = Loader::new(d.train.clone(), t, config).unwrap();
        for _ in 0..20 {
            let mut batches = loader.epoch(0);
            assert!(batches.next().unwrap().is_ok());
            drop(batches);
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("dropping prefetching epochs early hung (or panicked)");
}

#[test]
fn bad_loader_configs_are_refused() {
    let (_tmp, d) = mnist(10, 4);
    let t = Transform::eval(&d);
    let err = Loader::new(d.train.clone(), t, LoaderConfig::new(0))
        .err()
        .unwrap();
    assert!(err.to_string().contains("batch_size"), "{err}");
}

/// Runs on the real Fashion-MNIST wherever it is installed (`just data`); CI installs it and
/// sets CARDINAL_REQUIRE_DATA=1 so that this test cannot pass by skipping.
#[test]
fn real_fashion_mnist() {
    let d = match Dataset::open(&DataConfig::named("fashion-mnist")) {
        Ok(d) => d,
        Err(e) if std::env::var("CARDINAL_REQUIRE_DATA").as_deref() != Ok("1") => {
            eprintln!("skipping: Fashion-MNIST is not installed ({e})");
            return;
        }
        Err(e) => panic!("CARDINAL_REQUIRE_DATA=1 but Fashion-MNIST does not open: {e}"),
    };
    assert_eq!((d.train.len(), d.test.len()), (60_000, 10_000));
    assert_eq!(d.files.len(), 4);
    assert!(d.files.iter().all(|f| f.verified));
    assert_eq!(d.train.class_counts(10), vec![6_000; 10]);
    assert_eq!(d.test.class_counts(10), vec![1_000; 10]);
    // The values every Fashion-MNIST recipe normalizes with.
    assert!((d.stats.mean[0] - 0.2860).abs() < 1e-4, "{:?}", d.stats);
    assert!((d.stats.std[0] - 0.3530).abs() < 1e-4, "{:?}", d.stats);
    assert_eq!(d.classes[9], "Ankle boot");
    let loader = Loader::new(
        d.train.clone(),
        Transform::train(&d, &Default::default()),
        LoaderConfig::new(256),
    )
    .unwrap();
    let mut images = 0;
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        assert_eq!(batch.images.dims()[1..], [1, 28, 28]);
        images += batch.len();
    }
    assert_eq!(images, 60_000);
    // Normalized training pixels have mean ~0 and std ~1 before augmentation.
    let eval = Loader::new(
        d.train.clone(),
        Transform::eval(&d),
        LoaderConfig::new(60_000),
    )
    .unwrap();
    let all = eval.batch(0, 0).unwrap().images;
    let mean: f32 = all.mean_all().unwrap().to_scalar().unwrap();
    let var: f32 = all.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap();
    assert!(
        mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-3,
        "mean {mean} var {var}"
    );
}
