//! Helpers shared by the GPU-vs-CPU tests: skip logic, seeded random inputs, the
//! relative-error check and the `GPUCHECK` line tools/gpu_check.sh parses.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fusebox::backend::cuda::{self, CudaStorage};
use fusebox::backend::{BackendStorage, CpuStorage};
use fusebox::{DType, Result};
use half::f16;

pub const DTS: [DType; 2] = [DType::F32, DType::F16];

/// A small xorshift generator: no extra dependency, reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / 16_777_216.0
    }
    /// `n` normal samples with standard deviation `std` (Box–Muller).
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                std * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    }
}

/// One GPU test at a time in this binary (the memory tracker is process-wide and timings
/// should not overlap), plus the seeded generator.
pub struct Gpu {
    rng: Rng,
    _serial: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Gpu {
    type Target = Rng;
    fn deref(&self) -> &Rng {
        &self.rng
    }
}

impl std::ops::DerefMut for Gpu {
    fn deref_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// None (after printing why) when there is no GPU; otherwise the serialised test context
/// with a seeded generator, and allocation poisoning on.
pub fn setup(test: &str) -> Option<Gpu> {
    if !fusebox::backend::cuda_available() {
        println!(
            "SKIP {test}: no usable CUDA device ({})",
            cuda::availability_report()
        );
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    cuda::set_poison(true);
    let seed = std::env::var("FUSEBOX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!(
        "{test}: seed {seed} (FUSEBOX_TEST_SEED={seed} replays); {}",
        cuda::availability_report()
    );
    Some(Gpu {
        rng: Rng(seed),
        _serial: serial,
    })
}

/// The `(rows, cols)` shapes that [`keep`] allows, each in every dtype of [`DTS`].
pub fn cases_2d(shapes: &[(usize, usize)]) -> impl Iterator<Item = (usize, usize, DType)> + '_ {
    shapes
        .iter()
        .filter(|s| keep(s.0 * s.1))
        .flat_map(|&(rows, cols)| DTS.map(|dt| (rows, cols, dt)))
}

/// The sizes that [`keep`] allows, each in every dtype of [`DTS`].
pub fn cases_1d(sizes: &[usize]) -> impl Iterator<Item = (usize, DType)> + '_ {
    sizes
        .iter()
        .filter(|&&n| keep(n))
        .flat_map(|&n| DTS.map(|dt| (n, dt)))
}

/// Under FUSEBOX_TEST_SMALL=1 (compute-sanitizer runs, 10-100x slower) only cases of
/// at most 50k elements run.
pub fn keep(elements: usize) -> bool {
    elements <= 50_000
        || std::env::var("FUSEBOX_TEST_SMALL")
            .map(|v| v != "1")
            .unwrap_or(true)
}

pub fn ok<T>(r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("operation failed: {e}"),
    }
}

/// The message of `r`'s error, "" when it succeeded.
pub fn err_text<T>(r: Result<T>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

/// A host buffer of `dt` holding `v` (rounded to f16 for F16).
pub fn host(v: &[f32], dt: DType) -> CpuStorage {
    match dt {
        DType::F16 => CpuStorage::from_f16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        _ => CpuStorage::from_f32(v.to_vec()),
    }
}

pub fn up(c: &CpuStorage) -> CudaStorage {
    ok(CudaStorage::from_cpu(c, 0))
}

/// (CPU reference input in f32, GPU input in `dt`) holding the same values: for F16 the
/// reference gets the f16-rounded values.
pub fn pair(v: &[f32], dt: DType) -> (CpuStorage, CudaStorage) {
    let rounded: Vec<f32> = match dt {
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    };
    (CpuStorage::from_f32(rounded), up(&host(v, dt)))
}

pub fn tol_of(dt: DType) -> f32 {
    if dt == DType::F16 {
        1e-2
    } else {
        1e-5
    }
}

/// ‖got − want‖ / ‖want‖ (absolute when want is all zeros) over the finite elements;
/// an infinity must be matched exactly and stays out of the sums (in the denominator it
/// would hide every other error); NaN or a length mismatch is infinite.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if g.is_nan() || w.is_nan() {
            return f64::INFINITY;
        }
        if g.is_infinite() || w.is_infinite() {
            if g != w {
                return f64::INFINITY;
            }
            continue;
        }
        if g == w {
            den += (w as f64) * (w as f64);
            continue;
        }
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    if num == 0.0 {
        0.0
    } else if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn shape_str(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Print the machine-readable line gpu_check.sh tabulates.
pub fn gpucheck(name: &str, shape: &[usize], dt: DType, err: f64, pass: bool, t: Instant) {
    let _ = cuda::synchronize(fusebox::Device::Cuda(0));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "GPUCHECK kernel={} shape={} dtype={} err={:.3e} pass={} ms={:.3}",
        name.replace(' ', "_"),
        shape_str(shape),
        dt,
        err,
        pass,
        ms
    );
}

/// Compare two host vectors with the tolerance of `dt` (or `tol` when > 0).
pub fn check_vec(
    name: &str,
    shape: &[usize],
    dt: DType,
    got: &[f32],
    want: &[f32],
    tol: f32,
    t: Instant,
) {
    let tol = if tol > 0.0 { tol } else { tol_of(dt) };
    // A reference that is structurally zero (e.g. dq when a query sees one key, where
    // dS = P·(dP − rowsum) = 0) holds only rounding noise: a relative error means
    // nothing there, so compare the RMS of the result against the tolerance absolutely.
    let rms = |v: &[f32]| {
        (v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / v.len().max(1) as f64).sqrt()
    };
    let err = if got.len() == want.len() && rms(want) <= 1e-5 && got.iter().all(|x| x.is_finite()) {
        rms(got).max(rms(want))
    } else {
        rel_err(got, want)
    };
    let pass = err <= tol as f64;
    gpucheck(name, shape, dt, err, pass, t);
    assert!(
        pass,
        "{name} {shape:?} {dt}: relative error {err:.3e} > {tol:.0e}"
    );
}

/// Compare a device result with host values, at the tolerance of `dt`.
pub fn check_host(
    name: &str,
    shape: &[usize],
    dt: DType,
    got: &CudaStorage,
    want: &[f32],
    t: Instant,
) {
    check_vec(name, shape, dt, &ok(got.to_vec_f32()), want, 0.0, t);
}

/// Compare a device result with the CPU reference.
pub fn check(
    name: &str,
    shape: &[usize],
    dt: DType,
    got: &CudaStorage,
    want: &CpuStorage,
    t: Instant,
) {
    let _ = cuda::synchronize(fusebox::Device::Cuda(0));
    check_host(name, shape, dt, got, &ok(want.to_vec_f32()), t);
}

/// A yes/no check: its `GPUCHECK` line (err 0 when it passes, else 1), then the
/// assertion with `why` as the message.
pub fn check_that(
    name: &str,
    shape: &[usize],
    dt: DType,
    pass: bool,
    t: Instant,
    why: std::fmt::Arguments,
) {
    gpucheck(name, shape, dt, if pass { 0.0 } else { 1.0 }, pass, t);
    assert!(pass, "{name}: {why}");
}

/// A device error reported after the fact: `err` (the message read back) must hold
/// every needle (op, bad value, valid range). Its `GPUCHECK` line shows err 0.
pub fn check_error(
    name: &str,
    shape: &[usize],
    dt: DType,
    err: &str,
    needles: &[&str],
    t: Instant,
) {
    let pass = needles.iter().all(|n| err.contains(n));
    gpucheck(name, shape, dt, 0.0, pass, t);
    assert!(pass, "{name}: error {err:?}");
}

/// Like [`check`] for log-sum-exp vectors, where -inf marks a fully masked row: every
/// value must be finite or -inf (a NaN or +inf fails), the -inf positions must agree
/// exactly and the finite ones be within tolerance.
pub fn check_lse(
    name: &str,
    (shape, dt, t): (&[usize], DType, Instant),
    got: &CudaStorage,
    want: &CpuStorage,
) {
    let g = ok(got.to_vec_f32());
    let w = ok(want.to_vec_f32());
    let neg_inf = |x: &f32| x.is_infinite() && *x < 0.0;
    let same_inf = g.len() == w.len()
        && g.iter().all(|a| a.is_finite() || neg_inf(a))
        && g.iter().zip(&w).all(|(a, b)| neg_inf(a) == neg_inf(b));
    let (gf, wf): (Vec<f32>, Vec<f32>) = g
        .iter()
        .zip(&w)
        .filter(|(_, b)| b.is_finite())
        .map(|(a, b)| (*a, *b))
        .unzip();
    let err = if same_inf {
        rel_err(&gf, &wf)
    } else {
        f64::INFINITY
    };
    let pass = err <= tol_of(dt) as f64;
    gpucheck(name, shape, dt, err, pass, t);
    assert!(
        pass,
        "{name} {shape:?} {dt}: error {err:.3e} (-inf rows agree: {same_inf})"
    );
}

/// The comparison itself, on the CPU (no GPU needed).
#[test]
fn rel_err_rules() {
    assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    assert!((rel_err(&[1.0, 2.0], &[1.0, 2.5]) - 0.5 / 7.25f64.sqrt()).abs() < 1e-9);
    // A matched infinity neither hides nor causes an error (0.5 here, from the finite
    // pair); an unmatched one fails.
    assert!((rel_err(&[f32::INFINITY, 1.0], &[f32::INFINITY, 2.0]) - 0.5).abs() < 1e-9);
    assert_eq!(
        rel_err(&[f32::NEG_INFINITY, 1.0], &[f32::NEG_INFINITY, 1.0]),
        0.0
    );
    assert_eq!(rel_err(&[f32::INFINITY], &[3.0]), f64::INFINITY);
    assert_eq!(rel_err(&[f32::NAN], &[f32::NAN]), f64::INFINITY);
    assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
}
