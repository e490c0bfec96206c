//! `cardinal data ...`: find, verify, describe and look at datasets.

use std::path::PathBuf;

use anyhow::Result;
use cardinal_data::grid::{self, GridOptions};
use cardinal_data::{DataConfig, Dataset, Locator, Transform, KNOWN};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::table::{thousands, Table};
use crate::{print_json, Format};

#[derive(Subcommand)]
pub enum DataCommand {
    /// The datasets cardinal knows and where each was found.
    List(ListArgs),
    /// Size, classes and per-channel mean/std (measured on the training images) of a
    /// dataset.
    Stats(StatsArgs),
    /// Write a labelled grid of samples as PNG (with --augmented: what the network sees in
    /// training).
    Show(ShowArgs),
    /// Check the dataset's files against their published SHA-256 (Fashion-MNIST) and parse
    /// every record. Exits with 2 and names the file at fault if anything is wrong.
    Verify(DatasetArgs),
}

#[derive(Args, Clone)]
pub struct DatasetArgs {
    /// fashion-mnist, mnist, cifar10, cifar100, or an image folder (name or path).
    pub name: String,
    /// Look here first (a dataset directory, or a directory holding <NAME>/); then
    /// $CARDINAL_DATA, data/<NAME>, /usr/share/datasets/<NAME>.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Image folders: side of the images fed to the network.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Hold out this many training images as a validation split.
    #[arg(long, default_value_t = 0)]
    pub validation: usize,
}

impl DatasetArgs {
    pub fn open(&self) -> Result<Dataset> {
        let mut config = DataConfig::named(&self.name);
        config.dir = self.data_dir.clone();
        config.image_size = self.image_size;
        config.validation = self.validation;
        Ok(Dataset::open(&config)?)
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Apply the training augmentation (random crop, flip) before showing.
    #[arg(long)]
    augmented: bool,
    /// train, validation or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// Number of samples.
    #[arg(long, default_value_t = 40)]
    count: usize,
    #[arg(long, default_value_t = 10)]
    columns: usize,
    /// Seeds which samples are drawn and their augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epoch whose augmentation is shown.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::List(args) => list(args),
        DataCommand::Stats(args) => stats(args),
        DataCommand::Show(args) => show(args),
        DataCommand::Verify(args) => verify(args),
    }
}

#[derive(Serialize)]
struct ListRow {
    dataset: String,
    format: String,
    found: Option<PathBuf>,
    install: String,
}

fn list(args: ListArgs) -> Result<()> {
    let locator = Locator::new(args.data_dir);
    let rows: Vec<ListRow> = KNOWN
        .iter()
        .map(|k| {
            let found = Dataset::open_with(&DataConfig::named(k.name), &locator)
                .ok()
                .map(|d| d.root);
            ListRow {
                dataset: k.name.to_string(),
                format: serde_json::to_value(k.format)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                found,
                install: k.install_hint.to_string(),
            }
        })
        .collect();
    match args.format {
        Format::Json => print_json(&rows),
        _ => {
            let mut t = Table::new(["dataset", "format", "found in"]);
            for r in &rows {
                t.row([
                    r.dataset.clone(),
                    r.format.clone(),
                    r.found
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "not found".into()),
                ]);
            }
            print!("{}", t.render());
            for r in rows.iter().filter(|r| r.found.is_none()) {
                println!("{}: {}", r.dataset, r.install);
            }
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct Stats {
    dataset: String,
    format: cardinal_data::Format,
    root: PathBuf,
    train: usize,
    validation: usize,
    test: usize,
    classes: usize,
    class_names: Vec<String>,
    image: cardinal_data::ImageShape,
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Training images the mean and std were measured on.
    stats_images: usize,
    train_class_counts: Vec<usize>,
    test_class_counts: Vec<usize>,
    augmentation: Augmentation,
    files: Vec<cardinal_data::SourceFile>,
}

#[derive(Serialize)]
struct Augmentation {
    padding: usize,
    hflip: bool,
}

fn stats(args: StatsArgs) -> Result<()> {
    let d = args.dataset.open()?;
    let classes = d.classes.len();
    let stats = Stats {
        dataset: d.name.clone(),
        format: d.format,
        root: d.root.clone(),
        train: d.train.len(),
        validation: d.validation.as_ref().map_or(0, |v| v.len()),
        test: d.test.len(),
        classes,
        class_names: d.classes.clone(),
        image: d.shape,
        mean: d.stats.mean.clone(),
        std: d.stats.std.clone(),
        stats_images: d.stats.images,
        train_class_counts: d.train.class_counts(classes),
        test_class_counts: d.test.class_counts(classes),
        augmentation: Augmentation {
            padding: d.default_padding,
            hflip: d.default_hflip,
        },
        files: d.files.clone(),
    };
    match args.format {
        Format::Json => print_json(&stats),
        Format::Csv => {
            println!("dataset,train,validation,test,classes,channel,mean,std");
            for c in 0..stats.mean.len() {
                println!(
                    "{},{},{},{},{},{},{:.6},{:.6}",
                    stats.dataset,
                    stats.train,
                    stats.validation,
                    stats.test,
                    stats.classes,
                    c,
                    stats.mean[c],
                    stats.std[c]
                );
            }
            Ok(())
        }
        Format::Table => {
            let fmt = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("dataset     {} ({:?})", stats.dataset, stats.format);
            println!("found in    {}", stats.root.display());
            println!(
                "images      {} train, {} validation, {} test; {} each",
                thousands(stats.train as u64),
                thousands(stats.validation as u64),
                thousands(stats.test as u64),
                stats.image
            );
            println!(
                "mean        {}   (per channel, pixels in [0, 1], measured on {} training images)",
                fmt(&stats.mean),
                thousands(stats.stats_images as u64)
            );
            println!("std         {}", fmt(&stats.std));
            println!(
                "augment     random crop with {} px zero padding, horizontal flip {}",
                stats.augmentation.padding,
                if stats.augmentation.hflip {
                    "on"
                } else {
                    "off"
                }
            );
            let verified = stats.files.iter().filter(|f| f.verified).count();
            if !stats.files.is_empty() {
                println!(
                    "checksums   {verified} of {} files match the published SHA-256",
                    stats.files.len()
                );
            }
            println!();
            let mut t = Table::new(["label", "class", "train", "test"]);
            for c in 0..classes {
                t.row([
                    c.to_string(),
                    stats.class_names[c].clone(),
                    thousands(stats.train_class_counts[c] as u64),
                    thousands(stats.test_class_counts[c] as u64),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}

fn show(args: ShowArgs) -> Result<()> {
    let d = args.dataset.open()?;
    let split = d.split(&args.split)?;
    let transform = if args.augmented {
        Transform::train(&d, &Default::default())
    } else {
        Transform::eval(&d)
    };
    let image = grid::render(
        &d,
        split,
        &transform,
        &GridOptions {
            count: args.count,
            columns: args.columns,
            seed: args.seed,
            epoch: args.epoch,
        },
    )?;
    grid::save_png(&image, &args.out)?;
    eprintln!(
        "wrote {} ({}x{} px): {} {} samples of {}{}",
        args.out.display(),
        image.width(),
        image.height(),
        args.count.min(split.len()),
        args.split,
        d.name,
        if args.augmented {
            format!(", augmented as in epoch {}", args.epoch)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn verify(args: DatasetArgs) -> Result<()> {
    // Opening parses every record and checks every published checksum.
    let d = args.open()?;
    for f in &d.files {
        match &f.sha256 {
            Some(sum) => println!("ok        {}  sha256 {sum}", f.path.display()),
            None => println!("parsed    {}  (no published checksum)", f.path.display()),
        }
    }
    println!(
        "{}: {} train + {} test images, {} classes, all records valid",
        d.name,
        thousands(d.train.len() as u64),
        thousands(d.test.len() as u64),
        d.classes.len()
    );
    Ok(())
}
