//! Elementwise ops, casts, bias/reduction helpers and the in-place updates the
//! optimizer and gradient accumulation use (mirrors kernels/elementwise.cu).
//!
//! Every loop is a flat map over contiguous buffers, split across rayon threads only
//! past `PAR_MIN` elements so small tensors (most of a gradcheck) pay no thread cost.
//! Full reductions (`sum_all`, `sum_sq`) accumulate in f64 whatever the dtype: they feed
//! losses and gradient norms, where f32 accumulation over millions of terms drifts.

use half::f16;
use rayon::prelude::*;

use super::{check_len, dtype_err, rows_of, simd, CpuData, CpuStorage, Real, PAR_MIN};
use crate::backend::{dropout_key, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::DType;

/// `out[i] = f(i, x[i])`, parallel for large buffers.
fn map_idx<T: Real>(x: &[T], f: impl Fn(usize, T) -> T + Sync) -> Vec<T> {
    if x.len() < PAR_MIN {
        x.iter().enumerate().map(|(i, &v)| f(i, v)).collect()
    } else {
        x.par_iter()
            .enumerate()
            .with_min_len(PAR_MIN / 4)
            .map(|(i, &v)| f(i, v))
            .collect()
    }
}

/// `f(a block, b's block, out's block)` over equal-length `a` and `b` into a new buffer,
/// the blocks spread over rayon threads (for the vectorised loops of `simd.rs`).
fn blocks<T: Real>(a: &[T], b: &[T], f: impl Fn(&[T], &[T], &mut [T]) + Sync) -> Vec<T> {
    const BLOCK: usize = 16 * 1024;
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(BLOCK)
        .zip(a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK)))
        .for_each(|(o, (a, b))| f(a, b, o));
    out
}

/// `out[i] = f(a[i], b[i])`: a plain loop over blocks (which the compiler vectorises),
/// the blocks parallel for large buffers.
fn map2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let each = |a: &[T], b: &[T], o: &mut [T]| {
        for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    if a.len() < PAR_MIN {
        let mut out = vec![T::zero(); a.len()];
        each(a, b, &mut out);
        out
    } else {
        blocks(a, b, each)
    }
}

fn map3<T: Real>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T + Sync) -> Vec<T> {
    let n = a.len();
    let g = |i: usize| f(a[i], b[i], c[i]);
    if n < PAR_MIN {
        (0..n).map(g).collect()
    } else {
        (0..n)
            .into_par_iter()
            .with_min_len(PAR_MIN / 4)
            .map(g)
            .collect()
    }
}

pub(super) fn full(len: usize, dtype: DType, value: f64) -> CpuStorage {
    CpuStorage::new(match dtype {
        DType::F32 => CpuData::F32(vec![value as f32; len]),
        DType::F64 => CpuData::F64(vec![value; len]),
        DType::F16 => CpuData::F16(vec![f16::from_f64(value); len]),
        DType::I32 => CpuData::I32(vec![value as i32; len]),
    })
}

pub(super) fn to_vec_f32(d: &CpuData) -> Vec<f32> {
    match d {
        CpuData::F32(v) => v.clone(),
        CpuData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        CpuData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        CpuData::I32(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

pub(super) fn to_vec_f64(d: &CpuData) -> Vec<f64> {
    match d {
        CpuData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        CpuData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        CpuData::F64(v) => v.clone(),
        CpuData::I32(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Any dtype to any dtype. Float to I32 truncates toward zero (torch's `.to(int)`).
pub(super) fn cast(d: &CpuData, dtype: DType) -> CpuData {
    match (d, dtype) {
        (d, t) if d.dtype() == t => d.clone(),
        (CpuData::F16(v), DType::F32) => CpuData::F32(v.iter().map(|x| x.to_f32()).collect()),
        (CpuData::F64(v), DType::F16) => {
            CpuData::F16(v.iter().map(|&x| f16::from_f64(x)).collect())
        }
        (d, DType::F32) => CpuData::F32(to_vec_f32(d)),
        (d, DType::F64) => CpuData::F64(to_vec_f64(d)),
        (d, DType::F16) => CpuData::F16(to_vec_f32(d).into_iter().map(f16::from_f32).collect()),
        (d, DType::I32) => CpuData::I32(to_vec_f64(d).into_iter().map(|x| x as i32).collect()),
    }
}

pub(super) fn has_non_finite(d: &CpuData) -> bool {
    match d {
        CpuData::F32(v) => v.par_iter().with_min_len(PAR_MIN).any(|x| !x.is_finite()),
        CpuData::F64(v) => v.par_iter().with_min_len(PAR_MIN).any(|x| !x.is_finite()),
        CpuData::F16(v) => v.par_iter().with_min_len(PAR_MIN).any(|x| !x.is_finite()),
        CpuData::I32(_) => false,
    }
}

pub(super) fn binary<T: Real>(a: &CpuStorage, b: &CpuStorage, op: BinaryOp) -> Result<CpuStorage> {
    let (x, y) = (a.floats::<T>("binary")?, b.floats::<T>("binary")?);
    check_len("binary", "rhs", x.len(), y.len())?;
    let out = match op {
        BinaryOp::Add => map2(x, y, |p, q| p + q),
        BinaryOp::Sub => map2(x, y, |p, q| p - q),
        BinaryOp::Mul => map2(x, y, |p, q| p * q),
        BinaryOp::Div => map2(x, y, |p, q| p / q),
    };
    Ok(CpuStorage::from_real(out))
}

pub(super) fn affine<T: Real>(a: &CpuStorage, mul: f64, add: f64) -> Result<CpuStorage> {
    let (m, c) = (T::of(mul), T::of(add));
    let x = a.floats::<T>("affine")?;
    Ok(CpuStorage::from_real(map_idx(x, |_, v| v * m + c)))
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const GELU_NEW_C: f64 = 0.044_715;

/// The activation itself.
#[inline(always)]
pub(super) fn act<T: Real>(op: UnaryOp, x: T) -> T {
    let half = T::of(0.5);
    match op {
        UnaryOp::Relu => x.max(T::zero()),
        UnaryOp::Gelu => half * x * (T::one() + (x * T::of(INV_SQRT_2)).erf_vec()),
        UnaryOp::GeluNew => {
            let inner = T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_NEW_C) * x * x * x);
            half * x * (T::one() + inner.tanh())
        }
        UnaryOp::Silu => x / (T::one() + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqr => x * x,
    }
}

/// Its derivative at x.
#[inline(always)]
pub(super) fn act_grad<T: Real>(op: UnaryOp, x: T) -> T {
    let half = T::of(0.5);
    match op {
        UnaryOp::Relu => {
            if x > T::zero() {
                T::one()
            } else {
                T::zero()
            }
        }
        UnaryOp::Gelu => {
            let cdf = half * (T::one() + (x * T::of(INV_SQRT_2)).erf_vec());
            cdf + x * T::of(INV_SQRT_2PI) * (-half * x * x).exp_nonpos()
        }
        UnaryOp::GeluNew => {
            let c = T::of(GELU_NEW_C);
            let t = (T::of(SQRT_2_OVER_PI) * (x + c * x * x * x)).tanh();
            let dinner = T::of(SQRT_2_OVER_PI) * (T::one() + T::of(3.0) * c * x * x);
            half * (T::one() + t) + half * x * (T::one() - t * t) * dinner
        }
        UnaryOp::Silu => {
            let s = T::one() / (T::one() + (-x).exp());
            s * (T::one() + x * (T::one() - s))
        }
        UnaryOp::Tanh => {
            let t = x.tanh();
            T::one() - t * t
        }
        UnaryOp::Neg => -T::one(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqr => T::of(2.0) * x,
    }
}

pub(super) fn unary<T: Real>(a: &CpuStorage, op: UnaryOp) -> Result<CpuStorage> {
    let x = a.floats::<T>("unary")?;
    if op == UnaryOp::Gelu {
        return Ok(CpuStorage::from_real(blocks(x, x, |x, _, o| {
            simd::gelu(x, o)
        })));
    }
    Ok(CpuStorage::from_real(map_idx(x, |_, v| act(op, v))))
}

pub(super) fn unary_backward<T: Real>(
    x: &CpuStorage,
    dy: &CpuStorage,
    op: UnaryOp,
) -> Result<CpuStorage> {
    let (x, d) = (
        x.floats::<T>("unary_backward")?,
        dy.floats::<T>("unary_backward")?,
    );
    check_len("unary_backward", "dy", x.len(), d.len())?;
    if op == UnaryOp::Gelu {
        return Ok(CpuStorage::from_real(blocks(x, d, simd::gelu_backward)));
    }
    Ok(CpuStorage::from_real(map2(x, d, |v, g| {
        g * act_grad(op, v)
    })))
}

pub(super) fn gated<T: Real>(
    gate: &CpuStorage,
    lin: &CpuStorage,
    op: UnaryOp,
) -> Result<CpuStorage> {
    let (g, l) = (gate.floats::<T>("gated")?, lin.floats::<T>("gated")?);
    check_len("gated", "lin", g.len(), l.len())?;
    Ok(CpuStorage::from_real(map2(g, l, |a, b| act(op, a) * b)))
}

pub(super) fn gated_backward<T: Real>(
    gate: &CpuStorage,
    lin: &CpuStorage,
    dy: &CpuStorage,
    op: UnaryOp,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "gated_backward";
    let (g, l, d) = (
        gate.floats::<T>(OP)?,
        lin.floats::<T>(OP)?,
        dy.floats::<T>(OP)?,
    );
    check_len(OP, "lin", g.len(), l.len())?;
    check_len(OP, "dy", g.len(), d.len())?;
    let dgate = map3(g, l, d, |a, b, dy| dy * b * act_grad(op, a));
    let dlin = map2(g, d, |a, dy| dy * act(op, a));
    Ok((CpuStorage::from_real(dgate), CpuStorage::from_real(dlin)))
}

/// Dropout's multiplier for kept elements, 1/(1 − p); p = 1 drops everything (torch
/// returns zeros rather than 0·inf). p outside [0, 1] is an error.
pub(super) fn dropout_scale<T: Real>(p: f32) -> Result<T> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::msg(format!("dropout: p must be in [0, 1], got {p}")));
    }
    Ok(if p < 1.0 {
        T::of(1.0 / (1.0 - p as f64))
    } else {
        T::zero()
    })
}

pub(super) fn dropout<T: Real>(a: &CpuStorage, p: f32, seed: u64) -> Result<CpuStorage> {
    let x = a.floats::<T>("dropout")?;
    let scale = dropout_scale::<T>(p)?;
    // Blocks of the input, each multiplied by its draws from its own offset on.
    const BLOCK: usize = 16 * 1024;
    let key = dropout_key(seed);
    let mut out = x.to_vec();
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(bi, o)| simd::dropout_row(o, key, (bi * BLOCK) as u64, p, scale));
    Ok(CpuStorage::from_real(out))
}

pub(super) fn add_bias<T: Real>(
    a: &CpuStorage,
    bias: &CpuStorage,
    cols: usize,
) -> Result<CpuStorage> {
    let (x, b) = (a.floats::<T>("add_bias")?, bias.floats::<T>("add_bias")?);
    rows_of("add_bias", x.len(), cols)?;
    check_len("add_bias", "bias", cols, b.len())?;
    let mut out = vec![T::zero(); x.len()];
    // Row by row: each row plus the bias, a loop that vectorises (no index arithmetic).
    let rows_per_task = (16 * 1024 / cols.max(1)).max(1) * cols.max(1);
    out.par_chunks_mut(rows_per_task)
        .zip(x.par_chunks(rows_per_task))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(cols.max(1)).zip(x.chunks(cols.max(1))) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                    *o = x + b;
                }
            }
        });
    Ok(CpuStorage::from_real(out))
}

pub(super) fn sum_rows<T: Real>(a: &CpuStorage, cols: usize) -> Result<CpuStorage> {
    let x = a.floats::<T>("sum_rows")?;
    let rows = rows_of("sum_rows", x.len(), cols)?;
    let sums = col_sums_with::<T>(rows, cols, |r, acc| {
        for (a, &v) in acc.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
            *a += v;
        }
    });
    Ok(CpuStorage::from_real(sums))
}

/// Column reduction: `add_row(r, acc)` adds row r's contribution into acc. Partial sums
/// over fixed blocks of 64 rows run in parallel and are added in block order, so the
/// result does not depend on how rayon schedules the work.
pub(super) fn col_sums_with<T: Real>(
    rows: usize,
    cols: usize,
    add_row: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    const BLOCK: usize = 64;
    let blocks = rows.div_ceil(BLOCK);
    let partial: Vec<Vec<T>> = (0..blocks)
        .into_par_iter()
        .map(|bk| {
            let mut acc = vec![T::zero(); cols];
            for r in bk * BLOCK..((bk + 1) * BLOCK).min(rows) {
                add_row(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut out = vec![T::zero(); cols];
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

pub(super) fn sum_all<T: Real>(a: &CpuStorage, squares: bool) -> Result<CpuStorage> {
    let x = a.floats::<T>(if squares { "sum_sq" } else { "sum_all" })?;
    // Fixed chunks summed in order: the same input always gives the same bits.
    let partial: Vec<f64> = x
        .par_chunks(4096)
        .map(|c| {
            c.iter()
                .map(|&v| {
                    let v = v.f64();
                    if squares {
                        v * v
                    } else {
                        v
                    }
                })
                .sum::<f64>()
        })
        .collect();
    let s: f64 = partial.iter().sum();
    Ok(CpuStorage::from_real(vec![T::of(s)]))
}

pub(super) fn axpy_<T: Real>(a: &mut CpuStorage, x: &CpuStorage, alpha: f64) -> Result<()> {
    let x = x.floats::<T>("axpy_")?;
    let y = a.floats_mut::<T>("axpy_")?;
    check_len("axpy_", "x", y.len(), x.len())?;
    let al = T::of(alpha);
    y.par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y += al * x);
    Ok(())
}

pub(super) fn scale_<T: Real>(a: &mut CpuStorage, alpha: f64) -> Result<()> {
    let al = T::of(alpha);
    a.floats_mut::<T>("scale_")?
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .for_each(|y| *y *= al);
    Ok(())
}

/// Overwrite `dst` with `src`, casting between float dtypes (I32 only from I32).
pub(super) fn copy_from_(dst: &mut CpuStorage, src: &CpuStorage) -> Result<()> {
    check_len("copy_from_", "src", dst.data.len(), src.data.len())?;
    let (dt, st) = (dst.data.dtype(), src.data.dtype());
    if (dt == DType::I32) != (st == DType::I32) {
        return Err(dtype_err("copy_from_", "matching float/int kinds", st));
    }
    // Same length and dtype, so the tracker's byte count is unchanged.
    dst.data = cast(&src.data, dt);
    Ok(())
}
