//! fusebox: a GPU-kernel-first training engine. See DESIGN.md for the map.
pub mod backend;
pub mod error;
pub mod memory;
pub mod shape;

pub use error::{Error, Result};
pub use shape::{DType, Device, Shape};
pub mod autograd;
pub mod ops;
pub mod tensor;

pub use tensor::Tensor;
pub mod models;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod tasks;
pub mod tokenize;
