//! Host side of the fused flash-attention kernels (kernels/attention.cu: fb_attn_fwd_f16,
//! fb_attn_bwd_preprocess_f16, fb_attn_bwd_f16, fb_attn_dq_cast_f16, with _d32/_d128
//! variants and the 128-key fb_attn_bwd_f16_k128), and the switch between them and the
//! naive cuBLAS path.
//!
//! Why it is built this way: the fused kernels take f16 q/k/v with head dim 32, 64 or 128
//! and an fp32 bias; everything else (f32, other head dims) stays on the naive path, which
//! is also the reference they are tested against. `AttnImpl::Auto` (the default, or
//! FUSEBOX_ATTN=auto) picks the fused kernels whenever they apply and were loaded (an
//! NVRTC build without CUDA headers cannot compile attention.cu; then Auto falls back);
//! FUSEBOX_ATTN=naive|fused or [`set_attention_impl`] force one (forcing `fused` where it
//! does not apply is an error, so tests cannot silently test the wrong path). Probability
//! dropout (AttnSpec.dropout, the seed as its packed key) is passed through: the kernels draw the same mask
//! index as the CPU reference.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use cudarc::driver::LaunchConfig;

use super::context::{Arg, Dev};
use super::elementwise::cast;
use super::CudaStorage;
use crate::backend::{AttnArgs, AttnSaved, AttnSpec, BackendStorage};
use crate::error::{Error, Result};
use crate::shape::DType;

/// Which attention implementation CUDA calls use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnImpl {
    /// Fused kernels where they apply, else naive.
    Auto,
    Naive,
    Fused,
}

/// 0 = not set (read FUSEBOX_ATTN), 1 auto, 2 naive, 3 fused.
static IMPL: AtomicU8 = AtomicU8::new(0);

/// Override FUSEBOX_ATTN for this process.
pub fn set_attention_impl(i: AttnImpl) {
    IMPL.store(
        match i {
            AttnImpl::Auto => 1,
            AttnImpl::Naive => 2,
            AttnImpl::Fused => 3,
        },
        Ordering::Relaxed,
    );
}

pub fn attention_impl() -> AttnImpl {
    static ENV: OnceLock<AttnImpl> = OnceLock::new();
    match IMPL.load(Ordering::Relaxed) {
        1 => AttnImpl::Auto,
        2 => AttnImpl::Naive,
        3 => AttnImpl::Fused,
        _ => *ENV.get_or_init(|| match std::env::var("FUSEBOX_ATTN").as_deref() {
            Ok("naive") => AttnImpl::Naive,
            Ok("fused") => AttnImpl::Fused,
            Ok(other) if !other.is_empty() && other != "auto" => {
                eprintln!(
                    "fusebox: FUSEBOX_ATTN={other:?} is not auto, naive or fused; using auto"
                );
                AttnImpl::Auto
            }
            _ => AttnImpl::Auto,
        }),
    }
}

/// Key tile of the head-dim-64 fused backward. `K64` (the default): fb_attn_bwd_f16, 4
/// warps per 64 keys, measured on cards since run 1. `K128` (FUSEBOX_ATTN_BWD=k128):
/// fb_attn_bwd_f16_k128, 8 warps per 128 keys, half the dQ atomics and Q/dO tile loads per
/// FLOP at the same warps per SM; correct in the kernel emulator, its speed still to be
/// measured on a card against K64 (tools/gpu_session.sh runs both), which decides the
/// default. Head dims 32 and 128 have one backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BwdTile {
    K64,
    K128,
}

/// 0 = not set (read FUSEBOX_ATTN_BWD), 1 K64, 2 K128.
static TILE: AtomicU8 = AtomicU8::new(0);

/// Override FUSEBOX_ATTN_BWD for this process.
pub fn set_backward_tile(t: BwdTile) {
    TILE.store(
        match t {
            BwdTile::K64 => 1,
            BwdTile::K128 => 2,
        },
        Ordering::Relaxed,
    );
}

/// The backward tile in force; an unknown FUSEBOX_ATTN_BWD value is an error.
pub fn backward_tile() -> Result<BwdTile> {
    static ENV: OnceLock<std::result::Result<BwdTile, String>> = OnceLock::new();
    match TILE.load(Ordering::Relaxed) {
        1 => Ok(BwdTile::K64),
        2 => Ok(BwdTile::K128),
        _ => ENV
            .get_or_init(|| parse_tile(std::env::var("FUSEBOX_ATTN_BWD").ok().as_deref()))
            .clone()
            .map_err(Error::Cuda),
    }
}

fn parse_tile(v: Option<&str>) -> std::result::Result<BwdTile, String> {
    match v {
        None | Some("") | Some("k64") => Ok(BwdTile::K64),
        Some("k128") => Ok(BwdTile::K128),
        Some(other) => Err(format!(
            "FUSEBOX_ATTN_BWD={other:?}: expected \"k64\" or \"k128\""
        )),
    }
}

/// The fused kernels' limits besides the head dim: f16, non-empty, int32 indexing, and
/// H and B as grid y and z (at most 65535 each).
fn fused_fits(dtype: DType, sp: &AttnSpec) -> bool {
    dtype == DType::F16
        && sp.b.min(sp.h).min(sp.lq).min(sp.lk) >= 1
        && sp.b * sp.lq * sp.h * sp.d < (1 << 31)
        && sp.lq.max(sp.lk) < (1 << 31)
        && sp.b.max(sp.h) <= 65535
}

/// Kernel-name suffix of the fused variant the settings and shapes pick for this call,
/// or None for the naive path, before asking the device whether the kernel built (the
/// part of [`choose`] a plan can know without a GPU).
pub(crate) fn planned(dtype: DType, sp: &AttnSpec) -> Result<Option<&'static str>> {
    let which = attention_impl();
    if which == AttnImpl::Naive {
        return Ok(None);
    }
    let suffix = match sp.d {
        64 => Some(""),
        32 => Some("_d32"),
        128 => Some("_d128"),
        _ => None,
    };
    match (suffix, fused_fits(dtype, sp)) {
        (Some(suffix), true) => Ok(Some(suffix)),
        _ if which == AttnImpl::Fused => Err(Error::Cuda(format!(
            "FUSEBOX_ATTN=fused: the fused kernels take f16 with head dim 32/64/128, \
             B and H at most 65535 and B·Lq·H·D < 2^31, got {dtype} {sp:?}"
        ))),
        _ => Ok(None),
    }
}

/// Kernel-name suffix of the fused variant for this call, or None for the naive path.
pub(crate) fn choose(dev: &Dev, dtype: DType, sp: &AttnSpec) -> Result<Option<&'static str>> {
    let Some(suffix) = planned(dtype, sp)? else {
        return Ok(None);
    };
    match dev.func(&format!("fb_attn_fwd_f16{suffix}")) {
        Ok(_) => Ok(Some(suffix)),
        Err(e) if attention_impl() == AttnImpl::Fused => Err(e),
        Err(_) => Ok(None),
    }
}

/// The backward's f32 scratch, in the order it is allocated after the f32 copy of the
/// bias (when there is one): delta `[b, h, lq]`, the dq accumulator `[b, lq, h, d]`, and
/// the bias gradient `[h, lq, lk]` (0 without a bias). The meta device plans from this.
pub(crate) fn backward_scratch(sp: &AttnSpec, has_bias: bool) -> [usize; 3] {
    let bias = if has_bias { sp.h * sp.lq * sp.lk } else { 0 };
    [sp.b * sp.h * sp.lq, sp.b * sp.lq * sp.h * sp.d, bias]
}

/// The address of an optional operand, 0 (the kernels' "none") without one.
pub(crate) fn opt_ptr(t: Option<&CudaStorage>) -> u64 {
    t.map(|t| t.ptr()).unwrap_or(0)
}

fn dims(sp: &AttnSpec) -> [Arg; 4] {
    [
        Arg::I32(sp.b as i32),
        Arg::I32(sp.h as i32),
        Arg::I32(sp.lq as i32),
        Arg::I32(sp.lk as i32),
    ]
}

/// The scale, causal flag, dropout rate and dropout key, as every attention kernel
/// (fused, and the naive path's softmax) takes them after its shape.
pub(crate) fn tail(sp: &AttnSpec) -> [Arg; 4] {
    [
        Arg::F32(sp.scale),
        Arg::I32(sp.causal as i32),
        Arg::F32(sp.dropout),
        Arg::U64(crate::backend::dropout_key_packed(sp.seed)),
    ]
}

fn cfg(grid: (usize, usize, usize), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernels take an fp32 bias; the contract's bias has q's dtype (f16 here).
fn bias_f32(bias: Option<&CudaStorage>) -> Result<Option<CudaStorage>> {
    match bias {
        Some(b) if b.dtype() != DType::F32 => Ok(Some(cast(b, DType::F32)?)),
        Some(b) => Ok(Some(b.duplicate()?)),
        None => Ok(None),
    }
}

/// Device addresses of q, k and v (or of their gradients) and their row strides in
/// elements: three [B, L, H, D] buffers (strides H·D), or the columns of one packed
/// [B, L, 3, H, D] buffer (strides 3·H·D).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QkvPtrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub ldq: usize,
    pub ldkv: usize,
}

impl QkvPtrs {
    pub(crate) fn separate(q: u64, k: u64, v: u64, sp: &AttnSpec) -> QkvPtrs {
        let hd = sp.h * sp.d;
        QkvPtrs {
            q,
            k,
            v,
            ldq: hd,
            ldkv: hd,
        }
    }
    /// The packed layout of an f16 buffer at `base`.
    pub(crate) fn packed(base: u64, sp: &AttnSpec) -> QkvPtrs {
        let hd = sp.h * sp.d;
        let col = (hd * DType::F16.size_in_bytes()) as u64;
        QkvPtrs {
            q: base,
            k: base + col,
            v: base + 2 * col,
            ldq: 3 * hd,
            ldkv: 3 * hd,
        }
    }
    fn strides(&self) -> [Arg; 2] {
        [Arg::I32(self.ldq as i32), Arg::I32(self.ldkv as i32)]
    }
}

/// Forward into `out` and `lse` (allocated by the caller).
pub(crate) fn forward(
    suffix: &str,
    dev: &Arc<Dev>,
    qkv: &QkvPtrs,
    a: AttnArgs<'_, CudaStorage>,
    (out, lse): (&CudaStorage, &CudaStorage),
) -> Result<()> {
    let sp = &a.spec;
    let b32 = bias_f32(a.bias)?;
    let mut args = vec![
        Arg::Ptr(qkv.q),
        Arg::Ptr(qkv.k),
        Arg::Ptr(qkv.v),
        Arg::Ptr(opt_ptr(a.key_mask)),
        Arg::Ptr(opt_ptr(b32.as_ref())),
        Arg::Ptr(out.ptr()),
        Arg::Ptr(lse.ptr()),
    ];
    args.extend(dims(sp));
    args.extend(tail(sp));
    args.extend(qkv.strides());
    dev.launch(
        &format!("fb_attn_fwd_f16{suffix}"),
        cfg((sp.lq.div_ceil(64), sp.h, sp.b), 128),
        &args,
    )
}

/// Backward: writes dq, dk, dv at `grads` (allocated by the caller, in the layout of
/// `qkv`); returns dbias in q's dtype when a bias was given.
pub(crate) fn backward(
    suffix: &str,
    dev: &Arc<Dev>,
    (qkv, grads): (&QkvPtrs, &QkvPtrs),
    saved: AttnSaved<'_, CudaStorage>,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<Option<CudaStorage>> {
    let AttnSaved { out, lse, dout } = saved;
    let (sp, bias) = (&a.spec, a.bias);
    if (grads.ldq, grads.ldkv) != (qkv.ldq, qkv.ldkv) {
        return Err(Error::Cuda(format!(
            "fused attention backward: gradients with strides {:?} for inputs with {:?}",
            (grads.ldq, grads.ldkv),
            (qkv.ldq, qkv.ldkv)
        )));
    }
    // (kernel, keys per block, threads per block)
    let (kernel, keys, threads) = match (suffix, backward_tile()?) {
        ("", BwdTile::K128) => ("fb_attn_bwd_f16_k128".to_string(), 128, 256),
        _ => (format!("fb_attn_bwd_f16{suffix}"), 64, 128),
    };
    let [rows, n_q, n_bias] = backward_scratch(sp, bias.is_some());
    let b32 = bias_f32(bias)?;
    let delta = CudaStorage::alloc(dev, rows, DType::F32)?;
    let dq_acc = CudaStorage::alloc(dev, n_q, DType::F32)?;
    let dbias = match bias {
        Some(_) => Some(CudaStorage::alloc(dev, n_bias, DType::F32)?),
        None => None,
    };
    let mut args = vec![
        Arg::Ptr(out.ptr()),
        Arg::Ptr(dout.ptr()),
        Arg::Ptr(delta.ptr()),
        Arg::Ptr(dq_acc.ptr()),
        Arg::Ptr(opt_ptr(dbias.as_ref())),
    ];
    args.extend(dims(sp));
    args.push(Arg::I32(sp.d as i32));
    dev.launch(
        "fb_attn_bwd_preprocess_f16",
        cfg((rows.div_ceil(4), 1, 1), 128),
        &args,
    )?;
    let mut args = vec![
        Arg::Ptr(qkv.q),
        Arg::Ptr(qkv.k),
        Arg::Ptr(qkv.v),
        Arg::Ptr(dout.ptr()),
        Arg::Ptr(lse.ptr()),
        Arg::Ptr(delta.ptr()),
        Arg::Ptr(opt_ptr(a.key_mask)),
        Arg::Ptr(opt_ptr(b32.as_ref())),
        Arg::Ptr(grads.k),
        Arg::Ptr(grads.v),
        Arg::Ptr(dq_acc.ptr()),
        Arg::Ptr(opt_ptr(dbias.as_ref())),
    ];
    args.extend(dims(sp));
    args.extend(tail(sp));
    args.extend(qkv.strides());
    dev.launch(
        &kernel,
        cfg((sp.lk.div_ceil(keys), sp.h, sp.b), threads),
        &args,
    )?;
    dev.launch(
        "fb_attn_dq_cast_f16",
        cfg((n_q.div_ceil(256), 1, 1), 256),
        &[
            Arg::Ptr(dq_acc.ptr()),
            Arg::Ptr(grads.q),
            Arg::I32(n_q as i32),
            Arg::I32((sp.h * sp.d) as i32),
            Arg::I32(grads.ldq as i32),
        ],
    )?;
    match dbias {
        Some(d) => Ok(Some(cast(&d, DType::F16)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_tile_setting() {
        assert_eq!(parse_tile(None), Ok(BwdTile::K64));
        assert_eq!(parse_tile(Some("k64")), Ok(BwdTile::K64));
        assert_eq!(parse_tile(Some("k128")), Ok(BwdTile::K128));
        let e = parse_tile(Some("128")).unwrap_err();
        assert!(
            e.contains("FUSEBOX_ATTN_BWD=\"128\"") && e.contains("k128"),
            "{e}"
        );
    }

    #[test]
    fn fused_limits() {
        let sp = |b, h, l| AttnSpec {
            b,
            h,
            lq: l,
            lk: l,
            d: 64,
            scale: 1.0,
            causal: false,
            dropout: 0.0,
            seed: 0,
        };
        assert!(fused_fits(DType::F16, &sp(32, 12, 384)));
        assert!(!fused_fits(DType::F32, &sp(32, 12, 384)));
        assert!(!fused_fits(DType::F16, &sp(0, 12, 384)));
        assert!(fused_fits(DType::F16, &sp(65535, 1, 8)));
        // Grid z = B: 70000 would be a launch error, so the naive path takes it.
        assert!(!fused_fits(DType::F16, &sp(70000, 1, 8)));
        assert!(!fused_fits(DType::F16, &sp(1, 70000, 8)));
        // B·Lq·H·D past int32.
        assert!(!fused_fits(DType::F16, &sp(1024, 16, 2048)));
    }
}
