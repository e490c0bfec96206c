//! The file formats datasets come in: IDX (MNIST, Fashion-MNIST), CIFAR binary, and
//! image folders (one sub-folder per class).

pub mod cifar;
pub mod folder;
pub mod idx;
