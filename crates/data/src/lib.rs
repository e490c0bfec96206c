//! cardinal-data: real datasets as batches of candle tensors.
//!
//! ```text
//! DataConfig (YAML `dataset:`) --Dataset::open--> Dataset { train, validation, test, stats }
//! Split + Transform (augment, normalize) + LoaderConfig --> Loader --epoch(k)--> Batch
//! ```
//!
//! Formats: IDX (Fashion-MNIST, MNIST; gzip or raw), CIFAR-10/100 binary, image folders
//! (JPEG/PNG). Data is looked up in `--data-dir`, `$CARDINAL_DATA`, `data/<name>`, then
//! `/usr/share/datasets/<name>`. Every random draw (shuffle, crop, flip) is a function of
//! (seed, epoch, sample index), so batches can be rebuilt exactly after a crash.

pub mod config;
pub mod dataset;
pub mod error;
pub mod formats;
pub mod grid;
pub mod loader;
pub mod locate;
pub mod open;
pub mod synthetic;
pub mod transform;

pub use config::{AugmentConfig, DataConfig, LoaderConfig};
pub use dataset::{ChannelStats, Dataset, Format, ImageShape, SourceFile, Split};
pub use error::{DataError, Result};
pub use formats::{cifar, folder, idx};
pub use loader::{Batch, Batches, Loader};
pub use locate::Locator;
pub use open::{known, Known, KNOWN};
pub use transform::Transform;
