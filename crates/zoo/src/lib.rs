//! cardinal-zoo: ResNet and ResNeXt as data.
//!
//! A model is a [`NetSpec`] (plain, serialisable data) plus its instantiation
//! ([`ResNet::new`]). Complexity ([`Complexity::of`]), the preserve-complexity solver
//! ([`preserve_complexity`]), initialisation, the block-form converter and weight loading
//! all derive from the spec, so they cannot disagree with the model that runs.

pub mod complexity;
pub mod convert;
pub mod equivalence;
pub mod error;
pub mod init;
pub mod layout;
pub mod model;
pub mod presets;
pub mod solver;
pub mod spec;
pub mod weights;

/// Named tensors, ordered by name so that iteration (and thus any file written) is stable.
pub type StateDict = std::collections::BTreeMap<String, candle_core::Tensor>;

pub use complexity::Complexity;
pub use error::{Result, ZooError};
pub use init::init_weights;
pub use model::{Kernels, Params, Precision, ResNet};
pub use presets::{preset, preset_named_for, presets, Preset};
pub use solver::{preserve_complexity, PreservedWidth};
pub use spec::{BlockForm, BlockKind, NetSpec, StageSpec, Stem};
pub use weights::{load_safetensors, save_safetensors};
