//! Every format loads what was written, and every kind of bad input is an error that names
//! the file (and the record where there is one).

mod common;

use std::path::{Path, PathBuf};

use cardinal_data::{
    cifar, idx, DataConfig, DataError, Dataset, Loader, LoaderConfig, Locator, Transform,
};
use common::*;

fn open_in(dir: &Path, name: &str) -> Result<Dataset, DataError> {
    let mut config = DataConfig::named(name);
    config.dir = Some(dir.to_path_buf());
    Dataset::open(&config)
}

/// All images of a split in file order, normalized back to bytes, and the labels.
fn read_back(dataset: &Dataset, split: &cardinal_data::Split) -> (Vec<u8>, Vec<u32>) {
    let transform = Transform::eval(dataset);
    let mut config = LoaderConfig::new(7);
    config.shuffle = false;
    config.prefetch = 0;
    let loader = Loader::new(split.clone(), transform.clone(), config).unwrap();
    let mut bytes = Vec::new();
    let mut labels = Vec::new();
    let plane = dataset.shape.height * dataset.shape.width;
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let values: Vec<f32> = batch.images.flatten_all().unwrap().to_vec1().unwrap();
        for (k, v) in values.iter().enumerate() {
            let channel = (k / plane) % dataset.shape.channels;
            bytes.push(transform.denormalize(channel, *v));
        }
        labels.extend(batch.labels.to_vec1::<u32>().unwrap());
    }
    (bytes, labels)
}

#[test]
fn idx_gzip_and_raw_files_load_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("mnist"), 30, 12, 5);
    let d = open_in(tmp.path(), "mnist").unwrap();
    assert_eq!((d.train.len(), d.test.len()), (30, 12));
    assert_eq!(d.classes.len(), 10);
    assert_eq!((d.shape.channels, d.shape.height, d.shape.width), (1, 5, 5));
    let (bytes, labels) = read_back(&d, &d.train);
    let expected: Vec<u8> = (0..30)
        .flat_map(|i| (0..25).map(move |k| pixel(i, k)))
        .collect();
    assert_eq!(bytes, expected);
    assert_eq!(labels, (0..30).map(|i| i % 10).collect::<Vec<u32>>());
    let (test_bytes, _) = read_back(&d, &d.test);
    assert_eq!(&test_bytes[..25], &expected[..25]);
    // MNIST digits are not flipped by default; the fixture has no published checksum.
    assert!(!d.default_hflip);
    assert!(d.files.iter().all(|f| !f.verified && f.sha256.is_none()));
}

#[test]
fn channel_stats_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("mnist"), 20, 4, 4);
    let d = open_in(tmp.path(), "mnist").unwrap();
    let values: Vec<f64> = (0..20)
        .flat_map(|i| (0..16).map(move |k| pixel(i, k) as f64 / 255.0))
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    assert!((d.stats.mean[0] - mean).abs() < 1e-12);
    assert!((d.stats.std[0] - var.sqrt()).abs() < 1e-12);
    assert_eq!(d.stats.images, 20);
}

fn expect_err(result: Result<Dataset, DataError>) -> (DataError, String) {
    let err = result.expect_err("expected an error");
    let text = err.to_string();
    (err, text)
}

#[test]
fn truncated_idx_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 3);
    let file = dir.join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&file).unwrap();
    // Header (16 bytes) + two whole images (9 bytes each) + 4 bytes of the third.
    std::fs::write(&file, &bytes[..16 + 18 + 4]).unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(
        matches!(err, DataError::Truncated { record: 2, .. }),
        "{text}"
    );
    assert!(text.contains("t10k-images-idx3-ubyte"), "{text}");
    assert!(text.contains("record 2"), "{text}");
}

#[test]
fn wrong_magic_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 3);
    let file = dir.join("t10k-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] = 0x42;
    std::fs::write(&file, &bytes).unwrap();
    let (_, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(
        text.contains("t10k-labels-idx1-ubyte") && text.contains("magic"),
        "{text}"
    );
    // A float IDX file is named by its type.
    bytes[0] = 0;
    bytes[2] = 0x0D;
    std::fs::write(&file, &bytes).unwrap();
    let (_, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(text.contains("f32"), "{text}");
}

#[test]
fn image_label_count_mismatch_names_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 3);
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        idx::encode(&[3], &[1, 2, 3]),
    )
    .unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 4,
                labels: 3,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("t10k-images") && text.contains("t10k-labels"),
        "{text}"
    );
}

#[test]
fn label_out_of_range_names_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 3);
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        idx::encode(&[4], &[1, 2, 10, 3]),
    )
    .unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 2,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{text}"
    );
}

#[test]
fn damaged_gzip_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 50, 4, 6);
    let file = dir.join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(matches!(err, DataError::Gzip { .. }), "{text}");
    assert!(text.contains("train-images-idx3-ubyte.gz"), "{text}");
}

#[test]
fn fashion_mnist_checksum_mismatch_is_refused() {
    // Well-formed IDX files that are not the Fashion-MNIST release.
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("fashion-mnist"), 10, 4, 28);
    let (err, text) = expect_err(open_in(tmp.path(), "fashion-mnist"));
    assert!(matches!(err, DataError::Checksum { .. }), "{text}");
    assert!(text.contains("train-images-idx3-ubyte.gz"), "{text}");
    assert!(text.contains("just data"), "{text}");
}

#[test]
fn missing_dataset_lists_places_and_the_install_command() {
    let tmp = tempfile::tempdir().unwrap();
    let locator = Locator {
        data_dir: Some(tmp.path().join("mine")),
        env_dir: None,
        project_dir: tmp.path().join("data"),
        system_dir: tmp.path().join("system"),
    };
    let err = Dataset::open_with(&DataConfig::named("fashion-mnist"), &locator).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("just data"), "{text}");
    assert!(text.contains(
        &tmp.path()
            .join("system/fashion-mnist")
            .display()
            .to_string()
    ));
    assert!(text.contains(&tmp.path().join("mine").display().to_string()));
    let err = Dataset::open_with(&DataConfig::named("cifar10"), &locator).unwrap_err();
    assert!(err.to_string().contains("cifar-10-binary.tar.gz"));
    // A near miss of a known name is pointed at it.
    let err = Dataset::open_with(&DataConfig::named("fashion-mnst"), &locator).unwrap_err();
    assert!(
        err.to_string().contains("did you mean 'fashion-mnist'"),
        "{err}"
    );
    // Also when --data-dir is a directory of datasets, which looks like an image folder
    // (one sub-folder per "class"): the typo is named, not read as a folder.
    let datasets = tmp.path().join("datasets");
    write_idx(&datasets.join("fashion-mnist"), 10, 2, 3);
    write_idx(&datasets.join("mnist"), 10, 2, 3);
    let locator = Locator {
        data_dir: Some(datasets.clone()),
        ..locator
    };
    let err = Dataset::open_with(&DataConfig::named("fashion-mnst"), &locator).unwrap_err();
    assert!(
        err.to_string().contains("did you mean 'fashion-mnist'"),
        "{err}"
    );
}

#[test]
fn search_order_prefers_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("first/mnist"), 10, 2, 3);
    write_idx(&tmp.path().join("second/mnist"), 20, 2, 3);
    let locator = Locator {
        data_dir: Some(tmp.path().join("first")),
        env_dir: Some(tmp.path().join("second")),
        project_dir: tmp.path().join("data"),
        system_dir: tmp.path().join("system"),
    };
    let d = Dataset::open_with(&DataConfig::named("mnist"), &locator).unwrap();
    assert_eq!(d.train.len(), 10);
    // --data-dir may also be the dataset directory itself.
    let locator = Locator {
        data_dir: Some(tmp.path().join("second/mnist")),
        ..locator
    };
    let d = Dataset::open_with(&DataConfig::named("mnist"), &locator).unwrap();
    assert_eq!(d.train.len(), 20);
}

#[test]
fn cifar10_loads_and_bad_records_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar10");
    write_cifar10(&root, 6);
    let d = open_in(tmp.path(), "cifar10").unwrap();
    assert_eq!((d.train.len(), d.test.len()), (30, 6));
    assert_eq!(d.classes[9], "truck");
    assert_eq!((d.shape.channels, d.shape.height), (3, 32));
    assert!(d.default_hflip);
    assert_eq!(d.default_padding, 4);
    let (bytes, labels) = read_back(&d, &d.train);
    let expected: Vec<u8> = (0..30)
        .flat_map(|i| (0..cifar::PIXELS).map(move |k| pixel(i, k)))
        .collect();
    assert_eq!(bytes, expected);
    assert_eq!(labels[13], 3);

    let batch3 = root.join("cifar-10-batches-bin/data_batch_3.bin");
    let bytes = std::fs::read(&batch3).unwrap();
    std::fs::write(&batch3, &bytes[..bytes.len() - 100]).unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "cifar10"));
    assert!(
        matches!(err, DataError::Truncated { record: 5, .. }),
        "{text}"
    );
    assert!(text.contains("data_batch_3.bin"), "{text}");

    let mut bytes = bytes;
    bytes[4 * 3073] = 12;
    std::fs::write(&batch3, &bytes).unwrap();
    let (err, text) = expect_err(open_in(tmp.path(), "cifar10"));
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 4,
                label: 12,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("data_batch_3.bin"), "{text}");
}

#[test]
fn cifar100_reads_fine_labels_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar100");
    std::fs::create_dir_all(&root).unwrap();
    let labels: Vec<u32> = (0..8).map(|i| i * 12).collect();
    let pixels = vec![9u8; 8 * cifar::PIXELS];
    let bytes = cifar::encode(cifar::Variant::Cifar100, &labels, &pixels);
    std::fs::write(root.join("train.bin"), &bytes).unwrap();
    std::fs::write(root.join("test.bin"), &bytes).unwrap();
    let names: String = (0..100).map(|i| format!("thing{i}\n")).collect();
    std::fs::write(root.join("fine_label_names.txt"), names).unwrap();
    let d = open_in(tmp.path(), "cifar-100").unwrap();
    assert_eq!(d.name, "cifar100");
    assert_eq!(d.classes.len(), 100);
    assert_eq!(d.classes[84], "thing84");
    assert_eq!(d.train.label(7), 84);
}

#[test]
fn image_folder_carves_a_stratified_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("flowers");
    write_folder(&root, &["daisy", "rose", "tulip"], 10, 20, 16);
    std::fs::write(root.join("LICENSE.txt"), "not a class").unwrap();
    let mut config = DataConfig::named("flowers");
    config.dir = Some(tmp.path().to_path_buf());
    config.image_size = Some(12);
    let d = Dataset::open(&config).unwrap();
    assert_eq!(d.classes, vec!["daisy", "rose", "tulip"]);
    assert_eq!((d.train.len(), d.test.len()), (27, 3));
    assert_eq!(d.test.class_counts(3), vec![1, 1, 1]);
    assert_eq!(
        (d.shape.channels, d.shape.height, d.shape.width),
        (3, 12, 12)
    );
    // The red channel encodes the class: 0, 40, 80 in the fixture.
    assert!(
        d.stats.mean[0] > 0.1 && d.stats.mean[0] < 0.2,
        "{:?}",
        d.stats
    );
    let (bytes, labels) = read_back(&d, &d.test);
    for (image, label) in bytes.chunks(3 * 144).zip(&labels) {
        let red = image[..144].iter().map(|&v| v as f64).sum::<f64>() / 144.0;
        assert!(
            (red - 40.0 * *label as f64).abs() < 1.5,
            "red {red} for class {label}"
        );
    }
    // Augmented batches have the configured size too.
    let loader = Loader::new(
        d.train.clone(),
        Transform::train(&d, &Default::default()),
        LoaderConfig::new(8),
    )
    .unwrap();
    let batch = loader.batch(0, 0).unwrap();
    assert_eq!(batch.images.dims(), &[8, 3, 12, 12]);
}

#[test]
fn image_folder_with_train_and_test_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pets");
    write_folder(&root.join("train"), &["cat", "dog"], 4, 10, 10);
    write_folder(&root.join("val"), &["cat", "dog"], 2, 10, 10);
    let mut config = DataConfig::named(root.display().to_string());
    config.image_size = Some(8);
    let d = Dataset::open(&config).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (8, 4));
    write_folder(&root.join("val"), &["cow"], 1, 10, 10);
    let err = Dataset::open(&config).unwrap_err();
    assert!(matches!(err, DataError::ClassesDiffer { .. }), "{err}");
}

#[test]
fn empty_class_folder_and_unreadable_image_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shapes");
    write_folder(&root, &["circle", "square"], 3, 8, 8);
    std::fs::create_dir_all(root.join("triangle")).unwrap();
    let config = DataConfig::named(root.display().to_string());
    let err = Dataset::open(&config).unwrap_err();
    assert!(matches!(err, DataError::EmptyClassFolder { .. }), "{err}");
    assert!(err.to_string().contains("triangle"), "{err}");

    std::fs::remove_dir(root.join("triangle")).unwrap();
    let bad: PathBuf = root.join("square/img_001.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let err = Dataset::open(&config).unwrap_err();
    assert!(matches!(err, DataError::UnreadableImage { .. }), "{err}");
    assert!(err.to_string().contains("img_001.png"), "{err}");
}

#[test]
fn validation_split_is_carved_with_its_own_seed() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(&tmp.path().join("mnist"), 100, 10, 3);
    let mut config = DataConfig::named("mnist");
    config.dir = Some(tmp.path().to_path_buf());
    config.validation = 20;
    config.validation_seed = 3;
    let d = Dataset::open(&config).unwrap();
    let val = d.validation.as_ref().unwrap();
    assert_eq!((d.train.len(), val.len()), (80, 20));
    let mut all: Vec<u32> = (0..80)
        .map(|p| d.train.sample_index(p))
        .chain((0..20).map(|p| val.sample_index(p)))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<u32>>());
    let again = Dataset::open(&config).unwrap();
    let ids = |d: &Dataset| {
        let v = d.validation.as_ref().unwrap();
        (0..v.len()).map(|p| v.sample_index(p)).collect::<Vec<_>>()
    };
    assert_eq!(ids(&d), ids(&again));
    config.validation_seed = 4;
    assert_ne!(ids(&d), ids(&Dataset::open(&config).unwrap()));
    config.validation = 100;
    let err = Dataset::open(&config).unwrap_err();
    assert!(err.to_string().contains("`validation`"), "{err}");
}

#[test]
fn config_has_defaults_and_refuses_unknown_keys() {
    let config: DataConfig = serde_json::from_str(r#"{"name": "fashion-mnist"}"#).unwrap();
    assert_eq!(config, DataConfig::named("fashion-mnist"));
    let err = serde_json::from_str::<DataConfig>(r#"{"name": "x", "augmnt": {}}"#).unwrap_err();
    assert!(err.to_string().contains("augmnt"), "{err}");
}

#[test]
fn an_image_file_without_pixels_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 3);
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        idx::encode(&[4, 3, 0], &[]),
    )
    .unwrap();
    let (_, text) = expect_err(open_in(tmp.path(), "mnist"));
    assert!(
        text.contains("t10k-images-idx3-ubyte") && text.contains("no image data"),
        "{text}"
    );
}
