//! The library's typed error. Binaries wrap it in `anyhow`.

use crate::shape::{DType, Device, Shape};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        expected: String,
        got: Shape,
    },
    #[error("{op}: dtype {got} not supported here (expected {expected})")]
    DType {
        op: &'static str,
        expected: &'static str,
        got: DType,
    },
    #[error("{op}: tensors on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: Device,
        b: Device,
    },
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A device allocation refused by the memory cap (`--vram-budget` / `--gpu` on
    /// CUDA): the request, the budget, the plan and the biggest holders.
    #[error("out of the memory budget: {0}")]
    OverBudget(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: safetensors: {msg}")]
    Safetensors { path: String, msg: String },
    #[error("{0}")]
    Msg(String),
    /// Training stopped early with its work saved (a signal, a time limit); the binaries
    /// exit with `code`.
    #[error("{message}")]
    Stopped { code: i32, message: String },
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Error {
        Error::Msg(s.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl From<crate::shape::ParseDeviceError> for Error {
    fn from(e: crate::shape::ParseDeviceError) -> Error {
        Error::Msg(e.to_string())
    }
}

impl From<crate::shape::DimError> for Error {
    fn from(e: crate::shape::DimError) -> Error {
        Error::Msg(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `bail!`-style early return with a formatted [`Error::Msg`].
#[macro_export]
macro_rules! fb_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Msg(format!($($arg)*)))
    };
}
