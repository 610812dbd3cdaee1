//! Leaf types every layer uses: element types, devices and shapes.
//!
//! Layout is always contiguous row-major; a `Shape` is just the dimension sizes.
//!
//! The ground floor: this file imports nothing of the crate. Its two errors
//! ([`ParseDeviceError`], [`DimError`]) convert into `crate::error::Error`, which sits
//! one floor up.

/// Element type of a tensor's storage.
///
/// `F64` exists on the CPU backend only, for gradchecks; `I32` holds token ids, labels
/// (with `-100` as the ignore index) and masks. Mixed precision on the GPU uses `F16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    F64,
    I32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::I32 => "i32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tensor lives. `Auto` resolves to the first CUDA device when a driver and a
/// GPU are present, else to the CPU (`Device::resolve`, in `backend`, which knows
/// whether there is a GPU). `Meta(target)` holds shapes and dtypes only and computes
/// nothing: it allocates, through the byte tracker, exactly what `target` would, so the
/// VRAM planner can run a real training step without data (`crate::plan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
    Meta(Target),
    Auto,
}

/// The backend a computation runs on, or (for [`Device::Meta`]) plans for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Cpu,
    Cuda,
}

impl Device {
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The backend whose allocations this device has (a meta device: its target's);
    /// None for `Auto`, which is not resolved yet.
    pub fn target(self) -> Option<Target> {
        match self {
            Device::Cpu => Some(Target::Cpu),
            Device::Cuda(_) => Some(Target::Cuda),
            Device::Meta(t) => Some(t),
            Device::Auto => None,
        }
    }

    /// Parse `cpu`, `cuda`, `cuda:N` or `auto` (the CLI's `--device`).
    pub fn parse(s: &str) -> Result<Device, ParseDeviceError> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Device::Cuda)
                .ok_or_else(|| ParseDeviceError(s.to_string())),
        }
    }
}

/// A `--device` value that is none of cpu, auto, cuda, cuda:N.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDeviceError(pub String);

impl std::fmt::Display for ParseDeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--device: expected cpu, auto, cuda or cuda:N, got {:?}",
            self.0
        )
    }
}

impl std::error::Error for ParseDeviceError {}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Meta(Target::Cpu) => write!(f, "meta(cpu)"),
            Device::Meta(Target::Cuda) => write!(f, "meta(cuda)"),
            Device::Auto => write!(f, "auto"),
        }
    }
}

/// Dimension sizes of a contiguous row-major tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: &[usize]) -> Shape {
        Shape(dims.to_vec())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        if self.0.is_empty() {
            1
        } else {
            self.0[..self.0.len() - 1].iter().product()
        }
    }
    pub fn dim(&self, i: usize) -> Result<usize, DimError> {
        self.0.get(i).copied().ok_or_else(|| DimError {
            dim: i,
            shape: self.clone(),
        })
    }
}

/// [`Shape::dim`] past the rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimError {
    pub dim: usize,
    pub shape: Shape,
}

impl std::fmt::Display for DimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dimension {} out of range for shape {}",
            self.dim, self.shape
        )
    }
}

impl std::error::Error for DimError {}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Shape {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape(d.to_vec())
    }
}
