//! Host side of kernels/adafactor.cu: one Adafactor step over every parameter in a
//! constant number of launches per table of up to `AF_MAX` tensors, the global-norm
//! clip and the inf/NaN skip decided on the device by AdamW's norm pass (adamw_multi.rs
//! `decide`), and one read at the end.
//!
//! Why it is built this way: see the kernel file. The table (`AfTable`, laid out exactly
//! as `fb_af_table`; the size is asserted on both sides) travels by value; every chunk of
//! every tensor gets its partial sums at a fixed place in one scratch buffer, sized for
//! the largest table and reused table after table (one stream orders them). The
//! per-tensor entry (`adafactor_`, the optimizer's fallback) runs the same four kernels
//! on a one-tensor table with the decision words uploaded from the host.

use super::adamw_multi::{
    check_f32, decide, grad_and_working, launch_table, norm_partials, outcome,
};
use super::context::Arg;
use super::launch_table::{device_table, fill, i32_of, Filled, MAX_GRID};
use super::CudaStorage;
use crate::backend::{AdafactorMultiStep, AdafactorOutcome, AdafactorState, AdafactorStep};
use crate::backend::{AdafactorMultiTensor, AdamWMultiOutcome, BackendStorage, CpuStorage};
use crate::error::{Error, Result};
use crate::shape::DType;

/// Tensors per launch; must match FB_AF_MAX.
const AF_MAX: usize = 32;
/// Elements per chunk of a 1-D tensor, and the rows a factored chunk aims at; must match
/// FB_AF_CHUNK.
const AF_CHUNK: usize = 16384;
/// Fewest rows per chunk of a factored tensor: the column partials stay under 1/32 of
/// the tensor.
const AF_MIN_ROWS: usize = 32;
/// Decision words: fb_mt_finalize's four, then the reported step size.
const DECISION: usize = 8;

device_table! {
    /// `fb_af_table`.
    AfTable[AF_MAX] {
        p: u64, g: u64, w: u64, m: u64, r: u64, c: u64, n: i64, col_base: i64,
        rows: i32, cols: i32, rpc: i32, rm_base: i32, kind: i32, wd: f32,
    }
    then { report, off_u, off_stat }
}

// The kernel's static_assert checks the same number.
const _: () = assert!(std::mem::size_of::<AfTable>() == 2968);

/// One non-empty tensor as the kernels see it.
#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    p: u64,
    g: u64,
    w: u64,
    m: u64,
    r: u64,
    c: u64,
    n: usize,
    rows_cols: Option<(usize, usize)>,
    wd: f32,
    kind: i32,
}

/// A table with its grid (chunks, capped) and the scratch floats it uses.
struct Launch {
    tab: AfTable,
    grid: usize,
    scratch: usize,
}

fn rows_per_chunk(r: usize, c: usize) -> usize {
    AF_CHUNK.div_ceil(c).max(AF_MIN_ROWS).min(r)
}

/// Tables of up to AF_MAX tensors; `report` (an index into `descs`) marks the tensor
/// whose step size is written to the decision.
fn build(descs: &[Desc], report: Option<usize>) -> Result<Vec<Launch>> {
    let i32_of = |x| i32_of(x, "adafactor");
    let filled = fill(descs, "adafactor", |tab: &mut AfTable, k, d| {
        tab.p[k] = d.p;
        tab.g[k] = d.g;
        tab.w[k] = d.w;
        tab.m[k] = d.m;
        tab.r[k] = d.r;
        tab.c[k] = d.c;
        tab.n[k] = d.n as i64;
        tab.kind[k] = d.kind;
        tab.wd[k] = d.wd;
        Ok(match d.rows_cols {
            Some((r, c)) => {
                let rpc = rows_per_chunk(r, c);
                tab.rows[k] = i32_of(r)?;
                tab.cols[k] = i32_of(c)?;
                tab.rpc[k] = i32_of(rpc)?;
                (d.n / (r * c)) * r.div_ceil(rpc)
            }
            None => d.n.div_ceil(AF_CHUNK),
        })
    })?;
    let mut out = Vec::with_capacity(filled.len());
    for (
        gi,
        (
            Filled {
                mut tab,
                per,
                chunks,
            },
            group,
        ),
    ) in filled.into_iter().zip(descs.chunks(AF_MAX)).enumerate()
    {
        tab.report = -1;
        // Scratch: parameter partials, update partials, (lr, -wd·lr) per tensor, the
        // row means of each matrix, the column partials of each chunk.
        tab.off_u = i32_of(chunks)?;
        tab.off_stat = i32_of(2 * chunks)?;
        let mut at = 2 * chunks + 2 * group.len();
        for (k, d) in group.iter().enumerate() {
            if let Some((r, c)) = d.rows_cols {
                tab.rm_base[k] = i32_of(at)?;
                at += d.n / (r * c);
            }
        }
        for (k, d) in group.iter().enumerate() {
            if let Some((_, c)) = d.rows_cols {
                tab.col_base[k] = at as i64;
                at += per[k] * c;
            }
        }
        if let Some(r) = report.filter(|r| r / AF_MAX == gi) {
            tab.report = (r % AF_MAX) as i32;
        }
        out.push(Launch {
            tab,
            grid: chunks.clamp(1, MAX_GRID),
            scratch: at,
        });
    }
    Ok(out)
}

/// What a step over tensors of these (length, factored dims) allocates, as the meta
/// device replays it: the decision words, held through the step; then, one after the
/// other, the norm pass's partials (multi-tensor only) and the Adafactor scratch. `None`
/// when every tensor is empty (nothing is allocated).
pub(crate) fn scratch(
    shapes: &[(usize, Option<(usize, usize)>)],
    multi: bool,
) -> Result<Option<(usize, Vec<usize>)>> {
    let descs: Vec<Desc> = shapes
        .iter()
        .filter(|s| s.0 > 0)
        .map(|&(n, rows_cols)| Desc {
            n,
            rows_cols,
            ..Desc::default()
        })
        .collect();
    if descs.is_empty() {
        return Ok(None);
    }
    let mut phases = Vec::new();
    if multi {
        phases.push(norm_partials(
            &shapes.iter().map(|s| s.0).collect::<Vec<_>>(),
        )?);
    }
    phases.push(scratch_len(&build(&descs, None)?));
    Ok(Some((DECISION, phases)))
}

fn scratch_len(launches: &[Launch]) -> usize {
    launches.iter().map(|l| l.scratch).max().unwrap_or(0)
}

/// Check one tensor's buffers (f32 master and state of the right lengths, an f32 or
/// f16 gradient, one device) and describe it.
fn describe(
    p: &CudaStorage,
    grad: &CudaStorage,
    st: &AdafactorState<'_, CudaStorage>,
    hp: &AdafactorStep,
    op: &'static str,
) -> Result<Desc> {
    let n = p.len();
    check_f32(p, n, op, "f32 master weights on CUDA")?;
    let (kind, w) = grad_and_working(grad, st.working.as_deref(), n, op)?;
    let (row_len, c) = match (st.rows_cols, st.col.as_deref()) {
        (Some((r, c)), Some(col)) => {
            if r == 0 || c == 0 || !n.is_multiple_of(r * c) {
                return Err(Error::msg(format!(
                    "{op}: {n} elements are not matrices of {r} x {c}"
                )));
            }
            check_f32(col, n / r, op, "f32 state")?;
            (n / c, col.ptr())
        }
        (None, None) => (n, 0),
        _ => {
            return Err(Error::msg(format!(
                "{op}: col is kept exactly when factored"
            )))
        }
    };
    check_f32(st.row, row_len, op, "f32 state")?;
    let m = match (st.exp_avg.as_deref(), hp.beta1) {
        (Some(m), Some(_)) => {
            check_f32(m, n, op, "f32 state")?;
            m.ptr()
        }
        (None, None) => 0,
        _ => {
            return Err(Error::msg(format!(
                "{op}: exp_avg is kept exactly when beta1 is set"
            )))
        }
    };
    let mut bufs: Vec<&CudaStorage> = vec![grad, &*st.row];
    bufs.extend(st.col.as_deref());
    bufs.extend(st.exp_avg.as_deref());
    bufs.extend(st.working.as_deref());
    for b in bufs {
        p.check_device(b, op)?;
    }
    Ok(Desc {
        p: p.ptr(),
        g: grad.ptr(),
        w,
        m,
        r: st.row.ptr(),
        c,
        n,
        rows_cols: st.rows_cols,
        wd: st.weight_decay as f32,
        kind,
    })
}

/// The four Adafactor kernels of a table in launch order, with the arguments after the
/// table (decision words `dp`, scratch `sp`) and whether the grid is one block per
/// tensor (else one per chunk, capped).
fn kernels(hp: &AdafactorStep, dp: Arg, sp: Arg) -> [(&'static str, Vec<Arg>, bool); 4] {
    let f = |x: f64| Arg::F32(x as f32);
    let (b2, ob2) = (f(hp.beta2t), f(1.0 - hp.beta2t));
    let beta1 = hp.beta1.unwrap_or(0.0);
    let finish = vec![
        dp,
        sp,
        b2,
        ob2,
        Arg::F64(hp.rel_step),
        Arg::F64(hp.eps2),
        Arg::I32(i32::from(hp.scale_parameter)),
    ];
    [
        ("fb_af_reduce", vec![dp, sp, f(hp.eps1), b2, ob2], false),
        ("fb_af_finish", finish, true),
        ("fb_af_usq", vec![dp, sp], false),
        (
            "fb_af_update",
            vec![dp, sp, f(hp.clip_threshold), f(beta1), f(1.0 - beta1)],
            false,
        ),
    ]
}

/// Queue the four Adafactor kernels of every table, reading `decision` (skip, gradient
/// multiplier) and writing the reported step size into it.
fn queue(decision: &CudaStorage, launches: &[Launch], hp: &AdafactorStep) -> Result<()> {
    let scratch = CudaStorage::alloc(decision.dev(), scratch_len(launches), DType::F32)?;
    let ks = kernels(hp, Arg::Ptr(decision.ptr()), Arg::Ptr(scratch.ptr()));
    for l in launches {
        for (name, args, per_tensor) in &ks {
            let grid = if *per_tensor {
                l.tab.count as usize
            } else {
                l.grid
            };
            launch_table(decision, name, grid, &l.tab, args)?;
        }
    }
    Ok(())
}

/// One Adafactor step on one parameter, its gradient already checked and its multiplier
/// (`hp.grad_scale`) final.
pub fn adafactor_(
    p: &mut CudaStorage,
    grad: &CudaStorage,
    st: AdafactorState<'_, CudaStorage>,
    hp: &AdafactorStep,
) -> Result<Option<f64>> {
    let op = "adafactor_";
    let d = describe(p, grad, &st, hp, op)?;
    if d.n == 0 {
        return Ok(hp.report_lr.then_some(0.0));
    }
    // The decision fb_mt_finalize would write for a clean step: not skipped, clip 1.
    let mut words = vec![0f32; DECISION];
    words[2] = 1.0;
    words[3] = hp.grad_scale as f32;
    let decision = CudaStorage::from_cpu(&CpuStorage::from_f32(words), p.dev().ordinal)?;
    queue(&decision, &build(&[d], Some(0))?, hp)?;
    if !hp.report_lr {
        return Ok(None);
    }
    Ok(decision.to_vec_f32()?.get(4).map(|&x| x as f64))
}

type Tensor<'a> = AdafactorMultiTensor<'a, CudaStorage>;

/// One Adafactor step over `tensors` (all on one device), clipped by their global norm
/// and skipped (nothing touched) when some gradient holds inf/NaN. Costs
/// ⌈tensors/64⌉ + 1 norm launches, 4·⌈tensors/32⌉ Adafactor launches and one read.
pub fn adafactor_multi(
    tensors: &mut [Tensor<'_>],
    hs: &AdafactorMultiStep,
) -> Result<AdafactorOutcome> {
    let op = "adafactor_multi";
    let hp = &hs.hp;
    let mut descs = Vec::with_capacity(tensors.len());
    let mut report = None;
    for (i, t) in tensors.iter().enumerate() {
        let d = describe(t.param, t.grad, &t.st, hp, op)?;
        tensors[0].param.check_device(t.param, op)?;
        if d.n > 0 {
            if hs.report == Some(i) {
                report = Some(descs.len());
            }
            descs.push(d);
        }
    }
    let first = match tensors.first() {
        Some(t) if !descs.is_empty() => t,
        _ => {
            return Ok(AdafactorOutcome {
                multi: AdamWMultiOutcome {
                    skipped: false,
                    sum_sq: 0.0,
                },
                lr: None,
            })
        }
    };
    let decision = CudaStorage::alloc(first.param.dev(), DECISION, DType::F32)?;
    let grads: Vec<(u64, usize, bool)> =
        descs.iter().map(|d| (d.g, d.n, d.kind & 1 == 1)).collect();
    decide(&decision, &grads, hp.grad_scale, hs.max_grad_norm)?;
    queue(&decision, &build(&descs, report)?, hp)?;
    let words = decision.to_vec_f32()?;
    let multi = outcome(&words)?;
    let lr = report
        .filter(|_| !multi.skipped)
        .and_then(|_| words.get(4))
        .map(|&x| x as f64);
    Ok(AdafactorOutcome { multi, lr })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch table goes to the kernels by value: its size must be the C struct's,
    /// and the arguments after it the kernels' parameter list.
    #[test]
    fn table_struct_and_arguments_match_the_compiled_kernels() {
        let bytes = format!("bytes{}", std::mem::size_of::<AfTable>());
        let hp = AdafactorStep {
            rel_step: 1e-3,
            scale_parameter: true,
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            beta2t: 0.5,
            beta1: Some(0.9),
            grad_scale: 1.0,
            report_lr: false,
        };
        for (k, args, _) in kernels(&hp, Arg::Ptr(1), Arg::Ptr(2)) {
            match crate::backend::cuda::context::kernel_signature(k) {
                Some(sig) => {
                    assert_eq!(sig.split(' ').next(), Some(bytes.as_str()), "{k}: {sig}");
                    let size = std::mem::size_of::<AfTable>();
                    if let Err(e) = super::super::context::check_launch_args(k, &args, &[size]) {
                        panic!("{k}: {e}");
                    }
                }
                None => eprintln!("SKIP {k}: no signature table (built without nvcc)"),
            }
        }
    }

    #[test]
    fn tables_place_chunks_and_partials_without_overlap() {
        // 70 tensors: factored (one and several matrices, one row, wide rows) and 1-D.
        let shapes: Vec<(usize, Option<(usize, usize)>)> = (0..70)
            .map(|i| match i % 5 {
                0 => (300 * 512, Some((300, 512))),
                1 => (3 * 7 * 5, Some((7, 5))),
                2 => (40_000, None),
                3 => (20_000, Some((1, 20_000))),
                _ => (1 + i, None),
            })
            .collect();
        let descs: Vec<Desc> = shapes
            .iter()
            .map(|&(n, rows_cols)| Desc {
                n,
                rows_cols,
                ..Desc::default()
            })
            .collect();
        let ls = build(&descs, Some(40)).expect("tables");
        assert_eq!(ls.len(), 3);
        assert_eq!(ls[1].tab.report, 8);
        assert_eq!(ls[0].tab.report, -1);
        let mut seen = 0;
        for l in &ls {
            let t = &l.tab;
            let count = t.count as usize;
            let chunks = t.chunk_start[count] as usize;
            assert_eq!(
                (t.off_u as usize, t.off_stat as usize),
                (chunks, 2 * chunks)
            );
            // Every region (row means, column partials) lies past the stats, in order,
            // and the last ends at the table's scratch length.
            let mut at = 2 * chunks + 2 * count;
            for k in 0..count {
                let d = &descs[seen + k];
                let ch = (t.chunk_start[k + 1] - t.chunk_start[k]) as usize;
                match d.rows_cols {
                    Some((r, c)) => {
                        let rpc = t.rpc[k] as usize;
                        assert!(rpc >= 1 && rpc <= r);
                        assert_eq!(ch, d.n / (r * c) * r.div_ceil(rpc));
                        assert_eq!(t.rm_base[k] as usize, at);
                        at += d.n / (r * c);
                    }
                    None => assert_eq!(ch, d.n.div_ceil(AF_CHUNK)),
                }
            }
            for k in 0..count {
                if let Some((_, c)) = descs[seen + k].rows_cols {
                    assert_eq!(t.col_base[k] as usize, at);
                    at += (t.chunk_start[k + 1] - t.chunk_start[k]) as usize * c;
                }
            }
            assert_eq!(at, l.scratch);
            assert_eq!(l.grid, chunks.clamp(1, MAX_GRID));
            seen += count;
        }
        assert_eq!(seen, 70);
    }
}
