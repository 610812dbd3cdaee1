//! fusebox: a GPU-kernel-first training engine. See docs/ARCHITECTURE.md for the map.
pub mod backend;
pub mod bench;
pub mod data;
pub mod error;
pub mod metrics;
pub mod plan;
pub mod shape;
pub mod text;

pub use error::{Error, Result};
pub use shape::{DType, Device, Shape};
pub mod autograd;
pub mod hub;
pub mod ops;
pub mod tensor;
pub mod train;

pub use tensor::Tensor;
pub mod models;
pub mod nn;
pub mod optim;
pub mod profile;
pub mod rng;
pub mod tasks;
pub mod tokenize;

/// Large buffers kept mapped and reused between steps (see backend/cpu/alloc.rs).
#[global_allocator]
static ALLOC: backend::cpu::alloc::ReuseLargeAlloc = backend::cpu::alloc::ReuseLargeAlloc;
