//! Host side of kernels/elementwise.cu: argument checks, output allocation, launches.
//!
//! Each op checks dtypes and lengths before launching (a kernel cannot report a shape
//! error), allocates its output on the input's device, and queues one grid-stride
//! kernel on the device stream without synchronising. The float kernels move 8-element
//! chunks per thread (kernels/common.cuh) and launch with `cfg_chunks`; only the i32
//! casts and fill are scalar and launch with `cfg_1d`.

use std::sync::Arc;

use super::context::{cfg_1d, cfg_chunks, n64, Arg, Dev};
use super::{len_err, sfx, CudaStorage};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::DType;

pub(crate) fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

pub(crate) fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Relu => 0,
        UnaryOp::Gelu => 1,
        UnaryOp::GeluNew => 2,
        UnaryOp::Tanh => 3,
        UnaryOp::Neg => 4,
        UnaryOp::Exp => 5,
        UnaryOp::Sqr => 6,
        UnaryOp::Silu => 7,
    }
}

/// Check a same-length, same-dtype float pair and return the kernel suffix.
fn pair(a: &CudaStorage, b: &CudaStorage, op: &'static str) -> Result<&'static str> {
    a.check_pair(b, op)?;
    a.check_dtype(b, op)?;
    sfx(op, a.dtype())
}

/// `out = kernel(ins)` over the elements of `ins[0]`: a fresh buffer like it, filled by
/// the chunked kernel `fb_{kernel}_{s}` with (out, ins..., n, extra...).
fn map(kernel: &str, s: &str, ins: &[&CudaStorage], extra: &[Arg]) -> Result<CudaStorage> {
    let x = ins[0];
    let out = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    let bufs = [&[&out], ins].concat();
    launch_chunked(&format!("fb_{kernel}_{s}"), x.len(), &bufs, extra)?;
    Ok(out)
}

/// Launch the chunked kernel `name` over `n` elements with (bufs..., n, extra...) on the
/// device of `bufs[0]`; nothing to do when `n` is 0.
fn launch_chunked(name: &str, n: usize, bufs: &[&CudaStorage], extra: &[Arg]) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let scalars = [&[n64(n)], extra].concat();
    bufs[0]
        .dev()
        .launch_bufs(name, cfg_chunks(n), bufs, &scalars)
}

pub fn binary(a: &CudaStorage, b: &CudaStorage, op: BinaryOp) -> Result<CudaStorage> {
    let s = pair(a, b, "binary")?;
    map("binary", s, &[a, b], &[Arg::I32(binary_code(op))])
}

pub fn affine(x: &CudaStorage, mul: f64, add: f64) -> Result<CudaStorage> {
    let s = sfx("affine", x.dtype())?;
    map(
        "affine",
        s,
        &[x],
        &[Arg::F32(mul as f32), Arg::F32(add as f32)],
    )
}

pub fn unary(x: &CudaStorage, op: UnaryOp) -> Result<CudaStorage> {
    let s = sfx("unary", x.dtype())?;
    map("unary", s, &[x], &[Arg::I32(unary_code(op))])
}

pub fn unary_backward(x: &CudaStorage, dy: &CudaStorage, op: UnaryOp) -> Result<CudaStorage> {
    let s = pair(x, dy, "unary_backward")?;
    map("unary_bwd", s, &[x, dy], &[Arg::I32(unary_code(op))])
}

pub fn gated(gate: &CudaStorage, lin: &CudaStorage, act: UnaryOp) -> Result<CudaStorage> {
    let s = pair(gate, lin, "gated")?;
    map("gated", s, &[gate, lin], &[Arg::I32(unary_code(act))])
}

pub fn gated_backward(
    gate: &CudaStorage,
    lin: &CudaStorage,
    dy: &CudaStorage,
    act: UnaryOp,
) -> Result<(CudaStorage, CudaStorage)> {
    let s = pair(gate, lin, "gated_backward")?;
    pair(gate, dy, "gated_backward")?;
    let dg = CudaStorage::alloc(gate.dev(), gate.len(), gate.dtype())?;
    let dl = CudaStorage::alloc(gate.dev(), gate.len(), gate.dtype())?;
    let bufs = [&dg, &dl, gate, lin, dy];
    let code = Arg::I32(unary_code(act));
    launch_chunked(&format!("fb_gated_bwd_{s}"), gate.len(), &bufs, &[code])?;
    Ok((dg, dl))
}

pub fn dropout(x: &CudaStorage, p: f32, seed: u64) -> Result<CudaStorage> {
    let s = sfx("dropout", x.dtype())?;
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::msg(format!("dropout: p must be in [0, 1], got {p}")));
    }
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let key = Arg::U64(crate::backend::dropout_key_packed(seed));
    map("dropout", s, &[x], &[Arg::F32(p), Arg::F32(scale), key])
}

pub fn add_bias(x: &CudaStorage, bias: &CudaStorage, cols: usize) -> Result<CudaStorage> {
    x.check_dtype(bias, "add_bias")?;
    let s = sfx("add_bias", x.dtype())?;
    if cols == 0 || bias.len() != cols || !x.len().is_multiple_of(cols) {
        return Err(len_err("add_bias", cols, bias.len()));
    }
    map("add_bias", s, &[x, bias], &[n64(cols)])
}

/// Launch the cast kernel from `src` into the existing buffer `dst` (same length).
fn cast_into(dst: &CudaStorage, src: &CudaStorage) -> Result<()> {
    let name = match (src.dtype(), dst.dtype()) {
        (DType::F32, DType::F16) => "fb_cast_f32_f16",
        (DType::F16, DType::F32) => "fb_cast_f16_f32",
        (DType::F32, DType::F32) => "fb_cast_f32_f32",
        (DType::F16, DType::F16) => "fb_cast_f16_f16",
        (DType::I32, DType::F32) => "fb_cast_i32_f32",
        (DType::I32, DType::F16) => "fb_cast_i32_f16",
        (DType::F32, DType::I32) => "fb_cast_f32_i32",
        (DType::F16, DType::I32) => "fb_cast_f16_i32",
        (from, to) => {
            return Err(Error::DType {
                op: "cast",
                expected: "f32, f16 or i32 (f64 is CPU-only)",
                got: if from == DType::I32 { to } else { from },
            })
        }
    };
    // The float-to-float casts move 8-element chunks; the i32 ones are scalar loops.
    let chunked = src.dtype() != DType::I32 && dst.dtype() != DType::I32;
    let cfg = if chunked {
        cfg_chunks(src.len())
    } else {
        cfg_1d(src.len())
    };
    if src.len() > 0 {
        src.dev().launch(
            name,
            cfg,
            &[Arg::Ptr(dst.ptr()), Arg::Ptr(src.ptr()), n64(src.len())],
        )?;
    }
    Ok(())
}

pub fn cast(x: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    if dtype == x.dtype() {
        return x.duplicate();
    }
    let out = CudaStorage::alloc(x.dev(), x.len(), dtype)?;
    cast_into(&out, x)?;
    Ok(out)
}

pub fn full(dev: &Arc<Dev>, len: usize, dtype: DType, value: f64) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(dev, len, dtype)?;
    if len > 0 {
        // fb_fill_i32 is a scalar loop; the float fills move 8-element chunks.
        let (name, v, cfg) = match dtype {
            DType::I32 => (
                "fb_fill_i32".to_string(),
                Arg::I32(value as i32),
                cfg_1d(len),
            ),
            d => (
                format!("fb_fill_{}", sfx("full", d)?),
                Arg::F32(value as f32),
                cfg_chunks(len),
            ),
        };
        dev.launch(&name, cfg, &[Arg::Ptr(out.ptr()), n64(len), v])?;
    }
    Ok(out)
}

pub fn axpy_(y: &mut CudaStorage, x: &CudaStorage, alpha: f64) -> Result<()> {
    y.check_pair(x, "axpy_")?;
    let name = format!(
        "fb_axpy_{}_{}",
        sfx("axpy_", y.dtype())?,
        sfx("axpy_", x.dtype())?
    );
    launch_chunked(&name, y.len(), &[y, x], &[Arg::F32(alpha as f32)])
}

pub fn scale_(y: &mut CudaStorage, alpha: f64) -> Result<()> {
    let s = sfx("scale_", y.dtype())?;
    launch_chunked(
        &format!("fb_scale_{s}"),
        y.len(),
        &[y],
        &[Arg::F32(alpha as f32)],
    )
}

pub fn copy_from_(dst: &mut CudaStorage, src: &CudaStorage) -> Result<()> {
    dst.check_pair(src, "copy_from_")?;
    if dst.dtype() == src.dtype() {
        return dst.copy_bytes_from(src);
    }
    cast_into(dst, src)
}

pub fn has_non_finite(x: &CudaStorage) -> Result<bool> {
    let s = sfx("has_non_finite", x.dtype())?;
    if x.is_empty() {
        return Ok(false);
    }
    let flag = CudaStorage::zeroed(x.dev(), 1, DType::I32)?;
    let name = format!("fb_has_non_finite_{s}");
    launch_chunked(&name, x.len(), &[x], &[Arg::Ptr(flag.ptr())])?;
    flag.flag_set()
}

/// I32 values clamped to [lo, hi] (QA positions to [0, S] on the device, no host read).
pub fn clamp_i32(x: &CudaStorage, lo: i32, hi: i32) -> Result<CudaStorage> {
    if x.dtype() != DType::I32 {
        return Err(Error::DType {
            op: "clamp_i32",
            expected: "i32",
            got: x.dtype(),
        });
    }
    let out = CudaStorage::alloc(x.dev(), x.len(), DType::I32)?;
    if !x.is_empty() {
        let (n, lo, hi) = (n64(x.len()), Arg::I32(lo), Arg::I32(hi));
        let cfg = cfg_1d(x.len());
        x.dev()
            .launch_bufs("fb_clamp_i32", cfg, &[&out, x], &[n, lo, hi])?;
    }
    Ok(out)
}
