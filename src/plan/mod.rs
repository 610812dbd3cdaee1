//! The VRAM planner: the peak device memory of one training step, by component, for a
//! model × micro-batch × sequence lengths × precision × activation checkpointing ×
//! backend, and `fit`, which turns a memory budget into a micro-batch, a number of
//! gradient-accumulation steps and a checkpointing choice.
//!
//! How the prediction is made: by running the step. The model is built on the meta
//! device (`Device::Meta(target)`: shapes and dtypes, no data; a checkpoint's
//! safetensors header is all that is read), the optimizer takes its state, and one real
//! optimizer step — the training loop's own (`optim::accumulate_and_step`): every
//! micro-batch's forward, loss and backward, gradient accumulation, the loss scaler, the
//! optimizer update — runs under the byte tracker. Each primitive on the meta device
//! allocates exactly what the target backend's does (backend/meta), so the tape's real
//! lifetimes — saved activations, gradients as they fill, each op's transients — set
//! the peak, and a new model, optimizer or memory trick needs no planner code. On the
//! CPU target the plan equals the tracker's measurement of the same step to the byte
//! (tests/budget.rs, every model family, with and without checkpointing, fp16 included:
//! there the step holds the f32 copies of the CPU's f16 emulation, which the plan's
//! table says and CUDA does not make).
//!
//! What only CUDA adds, as documented estimates rather than measurement: the cuBLAS
//! workspace (cuBLAS allocates its own, 32 MiB on Hopper by NVIDIA's docs, less on older
//! cards), the CUDA context with its kernel images (about 450 MiB of NVML-used memory on
//! current drivers), and allocator slack: the caching allocator rounds blocks up (512 B
//! below 1 MiB, eight size classes per doubling above: at most 1/8) and keeps freed
//! blocks cached for reuse, which costs about 10 % over the tensor peak (PyTorch's
//! reserved/allocated ratio on transformer training is typically 1.05-1.2).

mod fit;
mod size;

pub use fit::{fit, plan_or_fit};
pub use size::{available_memory, budget_from_flags, gpu_memory, human, parse_size};

use crate::autograd::no_grad;
use crate::backend::tracker;
use crate::error::{Error, Result};
use crate::models::step::{BatchShape, ModelSource, StepModel};
use crate::optim::{accumulate_and_step, LossScaler, OptimConfig, Optimizer};
use crate::shape::{DType, Device, Target};

const MIB: usize = 1 << 20;
/// cuBLAS's own workspace (NVIDIA cuBLAS docs: 32 MiB on Hopper, 4 MiB before).
pub const CUBLAS_WORKSPACE: usize = 32 * MIB;
/// CUDA context, kernel images and driver reservations, as NVML counts them.
pub const CUDA_CONTEXT: usize = 450 * MIB;
/// Caching-allocator overhead as a fraction of the tensor peak.
pub const ALLOCATOR_SLACK: f64 = 0.10;

/// Bytes a CUDA run holds outside fusebox's caching allocator that the plan counts:
/// the CUDA context and the cuBLAS workspace (what `--vram-budget`'s hard cap on CUDA
/// subtracts from the budget before capping the allocator).
pub const CUDA_FIXED: usize = CUDA_CONTEXT + CUBLAS_WORKSPACE;

/// Everything a prediction depends on besides the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    /// Rows per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Tokens per row (QA window; T5 source).
    pub seq_len: usize,
    /// T5 target length (ignored for QA).
    pub tgt_len: usize,
    pub dtype: DType,
    pub checkpointing: bool,
    pub target: Target,
    /// An inference step (`bench --mode infer`): the forward under no_grad with dropout
    /// off (T5 also computes its loss), no gradients and no optimizer state.
    pub infer: bool,
    /// The optimizer, whose state and step scratch the plan holds.
    pub optim: OptimConfig,
}

impl Workload {
    fn shape(&self) -> BatchShape {
        BatchShape {
            rows: self.micro_batch,
            seq: self.seq_len,
            tgt: self.tgt_len.max(1),
        }
    }
}

/// A predicted step: the components and their sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: &'static str,
    pub work: Workload,
    /// The batch the user asked for (micro_batch × grad_accum ≥ this).
    pub requested_batch: usize,
    /// Trainable parameters.
    pub params: usize,
    /// (what, bytes) of the tensors; `tensor_peak` is their sum.
    pub components: Vec<(String, usize)>,
    /// (what, bytes) only a CUDA target adds, documented estimates rather than tracker
    /// counts: allocator slack, cuBLAS workspace, the CUDA context. Empty on the CPU.
    pub cuda_only: Vec<(String, usize)>,
    /// Predicted peak of bytes held by tensors (what `backend::tracker` measures).
    pub tensor_peak: usize,
    /// Predicted peak of device memory in use (tensor peak + CUDA-only terms).
    pub peak_bytes: usize,
    /// Does the model read a target sequence (an encoder-decoder)?
    pub has_target: bool,
    /// Bytes the first micro-batch holds when its loss exists (saved activations, the
    /// loss, what the tape keeps of the batch).
    pub saved: usize,
    pub budget: Option<usize>,
}

/// What one step of a model held, measured by the tracker on `device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// Trainable parameters.
    pub params: usize,
    /// Bytes the model's weights hold (frozen ones included).
    pub weights: usize,
    /// Bytes the optimizer's state holds (fp32 masters, moments).
    pub optimizer: usize,
    /// Peak bytes above weights and optimizer state during the step.
    pub step: usize,
    /// Bytes above them when the first micro-batch's loss exists.
    pub saved: usize,
}

/// Build the model of `source` on `device` and run one step of `work` there, measuring
/// with the tracker: the planner runs this on the meta device; tests run it on a real
/// backend and compare.
pub fn measure(source: &ModelSource, work: &Workload, device: Device) -> Result<Measured> {
    if work.micro_batch == 0 || work.seq_len == 0 || work.grad_accum == 0 {
        return Err(Error::msg(
            "memory plan: batch, accumulation steps and sequence length must be at least 1",
        ));
    }
    if !matches!(work.dtype, DType::F32 | DType::F16) {
        return Err(Error::msg(format!(
            "memory plan: training in {} is not supported",
            work.dtype
        )));
    }
    let base = tracker::live_bytes(device);
    let mut model = source.build(device, work.dtype, 0)?;
    model.set_checkpointing(work.checkpointing);
    let weights = tracker::live_bytes(device) - base;
    if work.infer {
        tracker::reset_peak(device);
        {
            let _g = no_grad();
            model.infer(work.shape(), device)?;
        }
        let step = tracker::peak_bytes(device) - base - weights;
        return Ok(Measured {
            params: 0,
            weights,
            optimizer: 0,
            step,
            saved: 0,
        });
    }
    let params = model.trainable();
    let n = params.iter().map(|(_, t)| t.elem_count()).sum();
    let mut opt = Optimizer::new(&params, work.optim)?;
    drop(params);
    let held = tracker::live_bytes(device);
    let scaler = (work.dtype == DType::F16).then(LossScaler::default);
    let shares = vec![1.0 / work.grad_accum as f64; work.grad_accum];
    let mut saved = 0;
    tracker::reset_peak(device);
    let step = {
        let model: &dyn StepModel = model.as_ref();
        accumulate_and_step(&mut opt, scaler.as_ref(), 1e-3, Some(1.0), &shares, |i| {
            let loss = model.train_loss(work.shape(), device, i as u64)?;
            if i == 0 {
                saved = tracker::live_bytes(device) - held;
            }
            Ok(loss)
        })?;
        tracker::peak_bytes(device) - held
    };
    Ok(Measured {
        params: n,
        weights,
        optimizer: held - base - weights,
        step,
        saved,
    })
}

/// Predict one optimizer step of `model` under `work`: [`measure`] on the meta device
/// of the workload's target, plus the CUDA-only terms.
pub fn predict(model: &ModelSource, work: &Workload, requested_batch: usize) -> Result<Plan> {
    let m = measure(model, work, Device::Meta(work.target))?;
    let fp16 = work.dtype == DType::F16;
    let mut c: Vec<(String, usize)> = Vec::new();
    // What the CPU target's fp16 step holds that CUDA's would not (backend/emulate.rs).
    let emulated = if fp16 && work.target == Target::Cpu {
        ", the f32 copies of the CPU's f16 emulation, which CUDA does not make"
    } else {
        ""
    };
    if work.infer {
        let what = if fp16 { "fp16" } else { "fp32" };
        c.push((format!("weights ({what})"), m.weights));
        c.push((
            format!("forward peak (inference: nothing saved, transients only{emulated})"),
            m.step,
        ));
    } else {
        let master = if fp16 { 4 * m.params } else { 0 };
        if fp16 {
            c.push(("weights (fp16 working copy)".into(), m.weights));
            c.push((
                format!("fp32 master weights ({})", work.optim.name()),
                master,
            ));
        } else {
            c.push(("weights (fp32)".into(), m.weights));
        }
        c.push((work.optim.state_label().into(), m.optimizer - master));
        let earlier = if work.grad_accum > 1 {
            ", the gradients and losses of earlier micro-batches"
        } else {
            ""
        };
        c.push((
            format!(
                "forward + backward peak (saved activations {}, gradients as they fill, \
                 transients{earlier}{emulated})",
                human(m.saved)
            ),
            m.step,
        ));
    }
    let tensor_peak: usize = c.iter().map(|x| x.1).sum();
    let mut cuda = Vec::new();
    if work.target == Target::Cuda {
        cuda.push((
            format!(
                "allocator slack ({:.0} % of tensors)",
                ALLOCATOR_SLACK * 100.0
            ),
            (tensor_peak as f64 * ALLOCATOR_SLACK) as usize,
        ));
        cuda.push(("cuBLAS workspace".into(), CUBLAS_WORKSPACE));
        cuda.push(("CUDA context and kernels".into(), CUDA_CONTEXT));
    }
    Ok(Plan {
        model: model.config.name(),
        work: *work,
        requested_batch,
        params: m.params,
        peak_bytes: tensor_peak + cuda.iter().map(|x| x.1).sum::<usize>(),
        components: c,
        cuda_only: cuda,
        has_target: model.config.has_target(),
        tensor_peak,
        saved: m.saved,
        budget: None,
    })
}

impl Plan {
    /// The plan as a table for people.
    pub fn table(&self) -> String {
        let w = &self.work;
        let mut s = format!(
            "memory plan: {} ({} parameters), {:?} {}, micro-batch {} x {} accumulation step(s) \
             (batch {} requested), length {}{}, activation checkpointing {}{}\n",
            self.model,
            self.params,
            w.target,
            w.dtype,
            w.micro_batch,
            w.grad_accum,
            self.requested_batch,
            w.seq_len,
            if self.has_target {
                format!(" -> {}", w.tgt_len)
            } else {
                String::new()
            },
            if w.checkpointing { "on" } else { "off" },
            if w.infer {
                String::new()
            } else {
                format!(", {}", w.optim.name())
            },
        );
        for (what, bytes) in &self.components {
            s += &format!("  {:>12}  {what}\n", human(*bytes));
        }
        if !self.cuda_only.is_empty() {
            s += &format!(
                "  {:>12}  tensors (what the byte tracker counts)\n  CUDA only \
                 (documented estimates, not tracker counts):\n",
                human(self.tensor_peak)
            );
            for (what, bytes) in &self.cuda_only {
                s += &format!("  {:>12}  {what}\n", human(*bytes));
            }
        }
        s += &format!("  {:>12}  predicted peak\n", human(self.peak_bytes));
        if let Some(b) = self.budget {
            s += &format!("  {:>12}  budget\n", human(b));
        }
        s
    }
}
