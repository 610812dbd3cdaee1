//! The VRAM planner: the peak device memory of one training step, by component, for a
//! model config × micro-batch × sequence lengths × precision × activation checkpointing
//! × backend, and `fit`, which turns a memory budget into a micro-batch, a number of
//! gradient-accumulation steps and a checkpointing choice.
//!
//! How the prediction is made. Static memory is counted from the parameter count:
//! working weights (f32, or f16 with an f32 master copy in AdamW) and AdamW's m and v
//! (f32, allocated when the optimizer is built). The step itself (forward, loss,
//! backward) is replayed op by op on a byte simulator of the tape (`sim.rs`, `walk.rs`)
//! that allocates, saves and frees what the real ops do, so saved activations, the
//! gradients as they accumulate and the backward's transients all come from the code
//! paths rather than a formula; on the CPU backend in f32 the result is the tracker's
//! count (tests/budget.rs holds it to 5 %; it is exact to the byte today). The CPU's fp16
//! emulation also counts the f32 copies it widens operands into, which CUDA does not
//! make, so fp16 plans are CUDA plans. With gradient accumulation, the previous
//! micro-batches' gradients (and their one-element losses, which the loop reads only
//! after the optimizer step) stay alive through the next backward and are added. The
//! optimizer step itself allocates only norm partials and a decision word (at most 4 KiB
//! per 64 tensors on CUDA), while only the static bytes and the gradients are held:
//! never the peak, and not modelled.
//!
//! What only CUDA adds, as documented estimates rather than simulation: the cuBLAS
//! workspace (cuBLAS allocates its own, 32 MiB on Hopper by NVIDIA's docs, less on older
//! cards), the CUDA context with its kernel images (about 450 MiB of NVML-used memory on
//! current drivers), and allocator slack: the caching allocator rounds blocks up (512 B
//! below 1 MiB, eight size classes per doubling above: at most 1/8) and keeps freed
//! blocks cached for reuse, which costs about 10 % over the tensor peak (PyTorch's
//! reserved/allocated ratio on transformer training is typically 1.05-1.2).

use crate::error::{Error, Result};
use crate::shape::DType;

use super::sim::{Env, Sim};
use super::walk::{qa_step, t5_step, EncoderSpec, T5Spec};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// cuBLAS's own workspace (NVIDIA cuBLAS docs: 32 MiB on Hopper, 4 MiB before).
pub const CUBLAS_WORKSPACE: usize = 32 * MIB;
/// CUDA context, kernel images and driver reservations, as NVML counts them.
pub const CUDA_CONTEXT: usize = 450 * MIB;
/// Caching-allocator overhead as a fraction of the tensor peak.
pub const ALLOCATOR_SLACK: f64 = 0.10;

/// Which model the plan is for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelSpec {
    /// DistilBERT or BERT for extractive QA.
    Encoder(EncoderSpec),
    T5(T5Spec),
}

impl ModelSpec {
    /// From a DistilBERT config (training: dropout as configured).
    pub fn distilbert(c: &crate::models::distilbert::DistilBertConfig) -> ModelSpec {
        ModelSpec::Encoder(EncoderSpec {
            vocab: c.vocab_size,
            max_pos: c.max_position_embeddings,
            type_vocab: 0,
            hidden: c.dim,
            intermediate: c.hidden_dim,
            layers: c.n_layers,
            heads: c.n_heads,
            hidden_dropout: c.dropout > 0.0,
            attn_out_dropout: false,
            qa_dropout: c.qa_dropout > 0.0,
            frozen_positions: c.sinusoidal_pos_embds,
        })
    }

    pub fn bert(c: &crate::models::bert::BertConfig) -> ModelSpec {
        ModelSpec::Encoder(EncoderSpec {
            vocab: c.vocab_size,
            max_pos: c.max_position_embeddings,
            type_vocab: c.type_vocab_size,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            hidden_dropout: c.hidden_dropout_prob > 0.0,
            attn_out_dropout: c.hidden_dropout_prob > 0.0,
            qa_dropout: false,
            frozen_positions: false,
        })
    }

    /// From a T5 config; `tied` is whether the LM head is `shared.weight`.
    pub fn t5(c: &crate::models::t5::T5Config, tied: bool) -> ModelSpec {
        ModelSpec::T5(T5Spec {
            vocab: c.vocab_size,
            d_model: c.d_model,
            d_kv: c.d_kv,
            heads: c.num_heads,
            d_ff: c.d_ff,
            enc_layers: c.num_layers,
            dec_layers: c.decoder_layers(),
            buckets: c.relative_attention_num_buckets,
            gated: c.feed_forward_proj.starts_with("gated"),
            dropout: c.dropout_rate > 0.0,
            tied,
            scale_out: c.scales_decoder_outputs(),
            // The model's default `Fp16Safety::Fp32Residual`.
            f32_residual: true,
        })
    }

    /// Read `dir/config.json` and pick the family by its `model_type`.
    pub fn from_dir(dir: &std::path::Path) -> Result<ModelSpec> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let bad = |e: serde_json::Error| Error::msg(format!("{}: {e}", path.display()));
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("distilbert") => {
                let c: crate::models::distilbert::DistilBertConfig =
                    serde_json::from_value(v).map_err(bad)?;
                c.validate(&path)?;
                Ok(ModelSpec::distilbert(&c))
            }
            Some("bert") => {
                let c: crate::models::bert::BertConfig = serde_json::from_value(v).map_err(bad)?;
                c.validate(&path)?;
                Ok(ModelSpec::bert(&c))
            }
            Some("t5") => {
                let c =
                    crate::models::t5::T5Config::from_json_str(&text, &path.display().to_string())?;
                let tied = c.tie_word_embeddings.unwrap_or(true);
                Ok(ModelSpec::t5(&c, tied))
            }
            other => Err(Error::msg(format!(
                "{}: model_type {other:?} has no memory model (expected distilbert, bert or t5)",
                path.display()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            ModelSpec::Encoder(e) if e.type_vocab > 0 => "BERT-QA",
            ModelSpec::Encoder(_) => "DistilBERT-QA",
            ModelSpec::T5(_) => "T5",
        }
    }
}

/// The backend the step runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda,
}

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
}

/// A predicted step: the components and their sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: &'static str,
    pub work: Workload,
    /// The batch the user asked for (micro_batch × grad_accum ≥ this).
    pub requested_batch: usize,
    pub params: usize,
    /// (what, bytes); `peak_bytes` is their sum.
    pub components: Vec<(String, usize)>,
    /// Predicted peak of bytes held by tensors (what `memory::tracker` measures).
    pub tensor_peak: usize,
    /// Predicted peak of device memory in use (tensor peak + CUDA-only terms).
    pub peak_bytes: usize,
    /// Saved activations at the end of the forward, by the op that allocated them.
    pub saved_by_op: Vec<(&'static str, usize)>,
    pub budget: Option<usize>,
}

/// Predict one optimizer step of `model` under `work`.
pub fn predict(model: &ModelSpec, work: &Workload, requested_batch: usize) -> Result<Plan> {
    if work.micro_batch == 0 || work.seq_len == 0 {
        return Err(Error::msg(
            "memory plan: batch and sequence length must be at least 1",
        ));
    }
    let act = match work.dtype {
        DType::F32 => 4,
        DType::F16 => 2,
        d => {
            return Err(Error::msg(format!(
                "memory plan: training in {d} is not supported"
            )))
        }
    };
    let cuda = work.target == Target::Cuda;
    let env = Env {
        act,
        stat: if cuda { 4 } else { act },
        cuda,
    };
    let mut sim = Sim::new(env);
    sim.set_grad_enabled(!work.infer);
    let b = work.micro_batch;
    let ps = match model {
        ModelSpec::Encoder(s) => {
            let mut s = *s;
            if work.infer {
                (s.hidden_dropout, s.attn_out_dropout, s.qa_dropout) = (false, false, false);
            }
            qa_step(&mut sim, &s, b, work.seq_len, work.checkpointing)
        }
        ModelSpec::T5(s) => {
            let mut s = *s;
            s.dropout &= !work.infer;
            t5_step(
                &mut sim,
                &s,
                b,
                work.seq_len,
                work.tgt_len.max(1),
                work.checkpointing,
            )
        }
    };
    let n = ps.elems;
    let grads = n * act;
    let mut c: Vec<(String, usize)> = Vec::new();
    // Frozen parameters (a fixed position table) hold their weights and nothing else.
    let all = n + ps.frozen;
    if work.infer {
        c.push((
            format!("weights ({})", if act == 2 { "fp16" } else { "fp32" }),
            all * act,
        ));
    } else if act == 2 {
        c.push(("weights (fp16 working copy)".into(), all * 2));
        c.push(("fp32 master weights (AdamW)".into(), n * 4));
    } else {
        c.push(("weights (fp32)".into(), all * 4));
    }
    if !work.infer {
        c.push(("AdamW m and v (fp32)".into(), 2 * n * 4));
    }
    let saved = sim.saved_at_end_of_forward();
    let step = sim.peak();
    let accum = work.grad_accum.max(1);
    // Inference accumulates nothing between micro-batches.
    if accum > 1 && !work.infer {
        c.push(("gradients of earlier micro-batches".into(), grads));
        // train.rs keeps each micro-batch's loss (f32 on CUDA, the activation dtype on
        // the CPU) on the device until it reads them all after the optimizer step.
        let loss_bytes = if cuda { 4 } else { act };
        c.push((
            "losses of earlier micro-batches (read after the step)".into(),
            (accum - 1) * loss_bytes,
        ));
    }
    let what = if work.infer {
        "forward peak (inference: nothing saved, transients only)".to_string()
    } else {
        format!(
            "forward + backward peak (saved activations {}, gradients {} as they fill, transients)",
            human(saved),
            human(grads)
        )
    };
    c.push((what, step));
    let tensor_peak: usize = c.iter().map(|x| x.1).sum();
    if cuda {
        c.push((
            format!(
                "allocator slack ({:.0} % of tensors)",
                ALLOCATOR_SLACK * 100.0
            ),
            (tensor_peak as f64 * ALLOCATOR_SLACK) as usize,
        ));
        c.push(("cuBLAS workspace".into(), CUBLAS_WORKSPACE));
        c.push(("CUDA context and kernels".into(), CUDA_CONTEXT));
    }
    let peak_bytes = c.iter().map(|x| x.1).sum();
    Ok(Plan {
        model: model.name(),
        work: *work,
        requested_batch,
        params: n,
        components: c,
        tensor_peak,
        peak_bytes,
        saved_by_op: sim.saved_by_op(),
        budget: None,
    })
}

/// Pick the largest micro-batch ≤ `requested_batch` whose step fits `budget` bytes, the
/// accumulation steps that keep the requested batch (`ceil(requested / micro)`, the
/// micro-batch then evened out to `ceil(requested / steps)`), and
/// activation checkpointing only when even micro-batch 1 does not fit without it (or
/// always, when `force_checkpointing`). Refuses with the micro-batch-1 breakdown when
/// nothing fits.
pub fn fit(
    model: &ModelSpec,
    budget: usize,
    requested_batch: usize,
    base: &Workload,
    force_checkpointing: bool,
) -> Result<Plan> {
    let requested = requested_batch.max(1);
    let choices: &[bool] = if force_checkpointing {
        &[true]
    } else {
        &[false, true]
    };
    let plan_at = |micro: usize, ckpt: bool| {
        let w = Workload {
            micro_batch: micro,
            grad_accum: requested.div_ceil(micro),
            checkpointing: ckpt,
            ..*base
        };
        predict(model, &w, requested)
    };
    for &ckpt in choices {
        // The peak grows with the micro-batch: binary search the largest that fits.
        let first = plan_at(1, ckpt)?;
        if first.peak_bytes > budget {
            continue;
        }
        let (mut lo, mut hi) = (1, requested);
        let mut best = first;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let p = plan_at(mid, ckpt)?;
            if p.peak_bytes <= budget {
                lo = mid;
                best = p;
            } else {
                hi = mid - 1;
            }
        }
        // The accumulation steps the largest micro-batch needs, then the smallest
        // micro-batch that still covers the request in that many steps: the same number
        // of sequential steps, and the effective batch overshoots the request by fewer
        // than `grad_accum` rows (64 with room for 27 runs 22 x 3, not 27 x 3).
        let accum = requested.div_ceil(best.work.micro_batch);
        let micro = requested.div_ceil(accum);
        if micro != best.work.micro_batch {
            best = plan_at(micro, ckpt)?;
        }
        best.budget = Some(budget);
        return Ok(best);
    }
    let mut p = plan_at(1, true)?;
    p.budget = Some(budget);
    Err(Error::msg(format!(
        "the memory budget {} is too small: micro-batch 1 with activation checkpointing needs {}\n{}",
        human(budget),
        human(p.peak_bytes),
        p.table()
    )))
}

/// The memory flags `train` and `bench` share (flattened into each one's arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MemoryArgs {
    /// Activation checkpointing: recompute each layer's forward in backward instead of
    /// keeping its activations (less memory, about a third more compute).
    #[arg(long)]
    pub checkpointing: bool,
    /// Fit into this much device memory (15GiB, 16GB, 12000MiB or bytes): the largest
    /// micro-batch that fits, the accumulation steps that keep --batch (train), and
    /// checkpointing if even micro-batch 1 needs it; refuses with the breakdown when
    /// nothing fits.
    #[arg(long, value_name = "SIZE", conflicts_with = "gpu")]
    pub vram_budget: Option<String>,
    /// Fit into a card's memory: t4 (16 GB), a100 (40 GB), a100-80, h100 or h200.
    #[arg(long, value_name = "CARD")]
    pub gpu: Option<String>,
    /// Print the memory plan (predicted peak by component) and exit.
    #[arg(long)]
    pub plan: bool,
}

impl MemoryArgs {
    /// The budget these flags name, or None.
    pub fn budget(&self) -> Result<Option<usize>> {
        budget_from_flags(self.vram_budget.as_deref(), self.gpu.as_deref())
    }
}

/// The budget the command-line flags name: `--vram-budget SIZE` or `--gpu CARD` (the
/// binaries make them exclusive), or None.
pub fn budget_from_flags(vram_budget: Option<&str>, gpu: Option<&str>) -> Result<Option<usize>> {
    match (vram_budget, gpu) {
        (Some(s), _) => parse_size(s)
            .map(Some)
            .map_err(|e| Error::msg(format!("--vram-budget: {e}"))),
        (None, Some(g)) => gpu_memory(g).map(Some),
        (None, None) => Ok(None),
    }
}

/// [`fit`] when there is a budget, else [`predict`] of `base` as it stands.
pub fn plan_or_fit(
    model: &ModelSpec,
    budget: Option<usize>,
    requested_batch: usize,
    base: &Workload,
) -> Result<Plan> {
    match budget {
        Some(b) => fit(model, b, requested_batch, base, base.checkpointing),
        None => predict(model, base, requested_batch),
    }
}

impl Plan {
    /// The plan as a table for people.
    pub fn table(&self) -> String {
        let w = &self.work;
        let mut s = format!(
            "memory plan: {} ({} parameters), {:?} {}, micro-batch {} x {} accumulation step(s) \
             (batch {} requested), length {}{}, activation checkpointing {}\n",
            self.model,
            self.params,
            w.target,
            w.dtype,
            w.micro_batch,
            w.grad_accum,
            self.requested_batch,
            w.seq_len,
            if matches!(self.model, "T5") {
                format!(" -> {}", w.tgt_len)
            } else {
                String::new()
            },
            if w.checkpointing { "on" } else { "off" },
        );
        for (what, bytes) in &self.components {
            s += &format!("  {:>12}  {what}\n", human(*bytes));
        }
        s += &format!("  {:>12}  predicted peak\n", human(self.peak_bytes));
        if let Some(b) = self.budget {
            s += &format!("  {:>12}  budget\n", human(b));
        }
        if !self.saved_by_op.is_empty() {
            let list: Vec<String> = self
                .saved_by_op
                .iter()
                .map(|(op, b)| format!("{op} {}", human(*b)))
                .collect();
            s += &format!("  saved activations by op: {}\n", list.join(", "));
        }
        s
    }
}

/// Bytes for people: KiB / MiB / GiB with one decimal.
pub fn human(b: usize) -> String {
    let f = b as f64;
    if b >= GIB {
        format!("{:.2} GiB", f / GIB as f64)
    } else if b >= MIB {
        format!("{:.1} MiB", f / MIB as f64)
    } else if b >= 1024 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Parse a size: plain bytes ("16000000000") or a number with a unit, decimal (KB, MB,
/// GB, TB) or binary (KiB, MiB, GiB, TiB), case-insensitive, e.g. "15GiB", "16GB",
/// "12000MiB", "1.5 GiB".
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let bad = || {
        Error::msg(format!(
            "{s:?} is not a memory size: expected a number of bytes or a number with a unit \
             (KB MB GB TB = powers of 1000; KiB MiB GiB TiB = powers of 1024), e.g. 15GiB"
        ))
    };
    let x: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => MIB as f64,
        "gib" => GIB as f64,
        "tib" => GIB as f64 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = x * mult;
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as usize)
}

/// Memory of a named card as `nvidia-smi` reports its total (the CUDA context is a
/// separate component of the plan): t4 15360 MiB (16 GB card), a100 40960 MiB (40 GB),
/// a100-80 81920 MiB, h100 81559 MiB (80 GB HBM3), h200 143771 MiB (what `nvidia-smi`
/// printed on the lent H200, benches/RESULTS.md).
pub fn gpu_memory(name: &str) -> Result<usize> {
    match name.to_ascii_lowercase().as_str() {
        "t4" => Ok(15360 * MIB),
        "a100" | "a100-40" => Ok(40960 * MIB),
        "a100-80" => Ok(81920 * MIB),
        "h100" => Ok(81559 * MIB),
        "h200" => Ok(143771 * MIB),
        other => Err(Error::msg(format!(
            "--gpu {other:?}: expected t4, a100 (40 GB), a100-80, h100 or h200"
        ))),
    }
}

/// Device memory in use on `cuda:ordinal` as NVML reports it (whole device, every
/// process), or None where there is no NVML (no driver, CPU machines). The device is
/// found by its PCI address, since NVML's indices ignore CUDA_VISIBLE_DEVICES; by index
/// only where NVML sees a single GPU, so the figure can never be another card's.
pub fn nvml_used_bytes(ordinal: usize) -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let by_address = crate::backend::cuda::pci_bus_id(ordinal)
        .ok()
        .and_then(|id| nvml.device_by_pci_bus_id(id).ok());
    let dev = match by_address {
        Some(d) => d,
        None if nvml.device_count().ok()? == 1 => nvml.device_by_index(0).ok()?,
        None => return None,
    };
    dev.memory_info().ok().map(|m| m.used)
}
