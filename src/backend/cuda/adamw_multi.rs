//! Host side of the multi-tensor AdamW in kernels/adamw.cu: one optimizer step over every
//! parameter in a constant number of launches, with the global-norm clip and the
//! inf/NaN skip decided on the device.
//!
//! Why it is built this way: the per-tensor path (adamw.rs) costs ~3 launches and some
//! host work per parameter tensor, ~300 launches for DistilBERT. Here up to `MT_MAX`
//! tensors travel by value in one kernel parameter (`MtTable`, laid out exactly as
//! `fb_mt_table`; the size is asserted on both sides), so nothing is uploaded and nothing
//! waits: sum of squares per table, one finalize launch, the update per table, then a
//! single 16-byte read of the decision. The step count and all scalar constants are
//! formed in f64 on the host exactly as the per-tensor path forms them.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::launch_table::{device_table, fill, i32_of, Filled, MAX_GRID};

use super::adamw::moment_args;
use super::context::{cfg_blocks, check_launch_args, cu, push_args, Arg};
use super::{len_err, CudaStorage};
use crate::backend::BackendStorage;
use crate::backend::{AdamWMultiOutcome as MultiOutcome, AdamWMultiStep as MultiStep};
use crate::error::{Error, Result};
use crate::shape::DType;

/// Tensors per launch; must match FB_MT_MAX.
const MT_MAX: usize = 64;
/// Elements per chunk; must match FB_MT_CHUNK.
const MT_CHUNK: usize = 16384;

device_table! {
    /// `fb_mt_table`.
    MtTable[MT_MAX] { p: u64, g: u64, m: u64, v: u64, w: u64, n: i64, decay: f32, kind: i32 }
    then { partial_base }
}

// The kernel's static_assert checks the same number.
const _: () = assert!(std::mem::size_of::<MtTable>() == 3856);

type MultiTensor<'a> = crate::backend::MultiTensor<'a, CudaStorage>;

/// `s` holds `len` f32 elements, or the error naming `op` and `what` was expected.
pub(super) fn check_f32(
    s: &CudaStorage,
    len: usize,
    op: &'static str,
    what: &'static str,
) -> Result<()> {
    if s.len() != len {
        return Err(len_err(op, len, s.len()));
    }
    if s.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: what,
            got: s.dtype(),
        });
    }
    Ok(())
}

/// Check a parameter's gradient (`n` elements, f32 or f16) and working copy: the
/// tables' `kind` (bit 0: an f16 gradient; above it the working copy's kind) and the
/// working copy's pointer (0 without one).
pub(super) fn grad_and_working(
    grad: &CudaStorage,
    working: Option<&CudaStorage>,
    n: usize,
    op: &'static str,
) -> Result<(i32, u64)> {
    if grad.len() != n {
        return Err(len_err(op, n, grad.len()));
    }
    let g16 = match grad.dtype() {
        DType::F32 => 0,
        DType::F16 => 1,
        got => {
            return Err(Error::DType {
                op,
                expected: "f32 or f16 gradients",
                got,
            })
        }
    };
    let (w, wkind) = super::adamw::working_arg(working, n, op)?;
    Ok((g16 | (wkind << 1), w))
}

/// Launch `name` with a launch table (passed by value, checked against the kernel's
/// parameter size) followed by `rest`, 256 threads per block.
pub(super) fn launch_table<T: DeviceRepr>(
    p: &CudaStorage,
    name: &str,
    grid: usize,
    table: &T,
    rest: &[Arg],
) -> Result<()> {
    check_launch_args(name, rest, &[std::mem::size_of::<T>()])?;
    let dev = p.dev();
    let f = dev.func(name)?;
    let mut b = dev.stream.launch_builder(&f);
    b.arg(table);
    push_args(&mut b, rest);
    let cfg = cfg_blocks(grid.max(1), 256);
    // SAFETY: the table holds live buffers checked by the caller (lengths, dtypes,
    // device); the argument list matches the kernel's signature.
    cu(unsafe { b.launch(cfg) }, &format!("launch {name}")).map(|_| ())
}

/// One live tensor as the kernel sees it.
#[derive(Clone, Copy, Debug)]
struct Desc {
    p: u64,
    g: u64,
    m: u64,
    v: u64,
    w: u64,
    n: usize,
    decay: f32,
    kind: i32,
}

/// Tables of up to MT_MAX tensors, with per table the grid and where its partials go
/// (`partial_base`), and the total partial count.
fn build_tables(descs: &[Desc]) -> Result<(Vec<MtTable>, Vec<usize>, usize)> {
    let filled = fill(descs, "adamw_multi", |tab: &mut MtTable, k, d| {
        tab.p[k] = d.p;
        tab.g[k] = d.g;
        tab.m[k] = d.m;
        tab.v[k] = d.v;
        tab.w[k] = d.w;
        tab.n[k] = d.n as i64;
        tab.decay[k] = d.decay;
        tab.kind[k] = d.kind;
        Ok(d.n.div_ceil(MT_CHUNK))
    })?;
    let (mut tables, mut grids, mut nparts) = (Vec::new(), Vec::new(), 0usize);
    for Filled {
        mut tab, chunks, ..
    } in filled
    {
        tab.partial_base = i32_of(nparts, "adamw_multi")?;
        let grid = chunks.clamp(1, MAX_GRID);
        nparts += grid;
        tables.push(tab);
        grids.push(grid);
    }
    Ok((tables, grids, nparts))
}

/// The step's scratch, in the order it is allocated: the decision words (the 16-byte
/// read) and one f32 partial sum of squares per block.
fn scratch_of(nparts: usize) -> [(usize, DType); 2] {
    [(DECISION, DType::F32), (nparts, DType::F32)]
}

/// Words of the decision `fb_mt_finalize` writes.
const DECISION: usize = 4;

/// The outcome in the decision words read back from the device.
pub(super) fn outcome(words: &[f32]) -> Result<MultiOutcome> {
    match words {
        [s, k, ..] => Ok(MultiOutcome {
            skipped: *k != 0.0,
            sum_sq: *s as f64,
        }),
        _ => Err(Error::msg("multi-tensor step: short decision buffer")),
    }
}

/// Descriptors of gradients alone (what the norm pass reads), one per non-empty length.
fn norm_descs(grads: &[(u64, usize, bool)]) -> Vec<Desc> {
    grads
        .iter()
        .filter(|g| g.1 > 0)
        .map(|&(g, n, g16)| Desc {
            p: 0,
            g,
            m: 0,
            v: 0,
            w: 0,
            n,
            decay: 0.0,
            kind: i32::from(g16),
        })
        .collect()
}

/// The per-block partial sums the norm pass over tensors of `lens` elements writes
/// (0 when every tensor is empty).
pub(crate) fn norm_partials(lens: &[usize]) -> Result<usize> {
    let grads: Vec<(u64, usize, bool)> = lens.iter().map(|&n| (0, n, false)).collect();
    Ok(build_tables(&norm_descs(&grads))?.2)
}

/// The scratch a step over tensors of `lens` elements allocates (what the meta device
/// plans): none when every tensor is empty.
pub(crate) fn scratch(lens: &[usize]) -> Result<Vec<(usize, DType)>> {
    let nparts = norm_partials(lens)?;
    Ok(if nparts == 0 {
        Vec::new()
    } else {
        scratch_of(nparts).to_vec()
    })
}

/// Queue the step's decision into the first four words of `decision` (f32): the sum of
/// squares of the gradients `(pointer, length, is f16)`, whether the step is skipped
/// (inf/NaN, or a device error recorded earlier), the clip coefficient and the gradient
/// multiplier `grad_scale · clip`. Allocates (and frees, stream-ordered) the per-block
/// partials. Shared with the multi-tensor Adafactor step.
pub(super) fn decide(
    decision: &CudaStorage,
    grads: &[(u64, usize, bool)],
    grad_scale: f64,
    max_grad_norm: Option<f64>,
) -> Result<()> {
    let (tables, grids, nparts) = build_tables(&norm_descs(grads))?;
    let dev = decision.dev();
    let partials = CudaStorage::alloc(dev, nparts, DType::F32)?;
    for (tab, &grid) in tables.iter().zip(&grids) {
        launch_table(
            decision,
            "fb_mt_sumsq",
            grid,
            tab,
            &[Arg::Ptr(partials.ptr())],
        )?;
    }
    let (has_clip, max_norm) = match max_grad_norm {
        Some(m) => (1, m),
        None => (0, 0.0),
    };
    let (scale, max_norm) = (Arg::F64(grad_scale), Arg::F64(max_norm));
    dev.launch_bufs(
        "fb_mt_finalize",
        cfg_blocks(1, 512),
        &[decision, &partials],
        &[
            Arg::I32(nparts as i32),
            scale,
            max_norm,
            Arg::I32(has_clip),
            Arg::Ptr(dev.err_ptr()),
        ],
    )
}

/// One AdamW step over `tensors` (all on one device). Nothing is touched when some
/// gradient holds inf/NaN; the returned outcome says whether that happened. Costs
/// 2·⌈tensors/64⌉ + 1 launches and one 16-byte read.
pub fn adamw_multi(tensors: &mut [MultiTensor<'_>], hp: &MultiStep) -> Result<MultiOutcome> {
    let op = "adamw_multi";
    if hp.step == 0 {
        return Err(Error::msg(
            "adamw_multi: step is 1-based (bias correction divides by 1 - beta^step)",
        ));
    }
    let Some(first) = tensors.first() else {
        return Ok(MultiOutcome {
            skipped: false,
            sum_sq: 0.0,
        });
    };
    let dev = first.param.dev().clone();
    // Validate everything before queueing anything.
    let mut live = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let n = t.param.len();
        check_f32(t.param, n, op, "f32 master weights on CUDA")?;
        check_f32(t.m, n, op, "f32 moments")?;
        check_f32(t.v, n, op, "f32 moments")?;
        let (kind, wptr) = grad_and_working(t.grad, t.working.as_deref(), n, op)?;
        let mut bufs = vec![&*t.param, t.grad, &*t.m, &*t.v];
        if let Some(w) = &t.working {
            bufs.push(w);
        }
        for b in bufs {
            first.param.check_device(b, op)?;
        }
        if n > 0 {
            live.push((i, kind, wptr));
        }
    }
    let descs: Vec<Desc> = live
        .iter()
        .map(|&(i, kind, w)| {
            let t = &tensors[i];
            Desc {
                p: t.param.ptr(),
                g: t.grad.ptr(),
                m: t.m.ptr(),
                v: t.v.ptr(),
                w,
                n: t.param.len(),
                decay: (1.0 - hp.lr * t.weight_decay) as f32,
                kind,
            }
        })
        .collect();
    let (tables, grids, _) = build_tables(&descs)?;
    if tables.is_empty() {
        return Ok(MultiOutcome {
            skipped: false,
            sum_sq: 0.0,
        });
    }
    let decision = CudaStorage::alloc(&dev, DECISION, DType::F32)?;
    let anchor = &*tensors[live[0].0].param;
    let grads: Vec<(u64, usize, bool)> =
        descs.iter().map(|d| (d.g, d.n, d.kind & 1 == 1)).collect();
    decide(&decision, &grads, hp.grad_scale, hp.max_grad_norm)?;
    // Every scalar formed in f64 and rounded once, as adamw.rs (and the CPU backend) do.
    let moments = moment_args(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.step);
    let args = [&[Arg::Ptr(decision.ptr())][..], &moments].concat();
    for (tab, &grid) in tables.iter().zip(&grids) {
        launch_table(anchor, "fb_mt_adamw", grid, tab, &args)?;
    }
    outcome(&decision.to_vec_f32()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(i: u64, n: usize) -> Desc {
        Desc {
            p: 1000 + i,
            g: 2000 + i,
            m: 3000 + i,
            v: 4000 + i,
            w: 0,
            n,
            decay: 1.0,
            kind: (i % 2) as i32,
        }
    }

    /// The launch table goes to the kernels by value: its size must be the C struct's.
    #[test]
    fn table_struct_matches_the_compiled_kernels() {
        super::super::launch_table::assert_table_size::<MtTable>(&["fb_mt_sumsq", "fb_mt_adamw"]);
    }

    #[test]
    fn tables_split_at_64_with_chunk_prefix_sums_and_partial_offsets() {
        // 150 tensors: sizes 1 .. several chunks, including exactly one chunk.
        let sizes: Vec<usize> = (0..150)
            .map(|i| match i {
                0 => 3 * MT_CHUNK + 5,
                1 => MT_CHUNK,
                70 => 200 * MT_CHUNK,
                _ => 1 + (i * 37) % 997,
            })
            .collect();
        let descs: Vec<Desc> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| desc(i as u64, n))
            .collect();
        let (tables, grids, nparts) = build_tables(&descs).expect("tables");
        assert_eq!(tables.len(), 3);
        assert_eq!(
            tables.iter().map(|t| t.count).collect::<Vec<_>>(),
            vec![64, 64, 22]
        );
        let mut base = 0;
        let mut seen = 0;
        for (tab, &grid) in tables.iter().zip(&grids) {
            assert_eq!(tab.partial_base as usize, base);
            let c = tab.count as usize;
            let mut total = 0;
            for k in 0..c {
                let d = &descs[seen + k];
                assert_eq!((tab.p[k], tab.g[k], tab.n[k]), (d.p, d.g, d.n as i64));
                assert_eq!(tab.chunk_start[k] as usize, total);
                total += d.n.div_ceil(MT_CHUNK);
            }
            assert_eq!(tab.chunk_start[c] as usize, total);
            assert_eq!(grid, total.clamp(1, MAX_GRID));
            base += grid;
            seen += c;
        }
        assert_eq!(nparts, base);
        // First table: 4 + 1 + 62 one-chunk tensors; the second holds the 200-chunk one.
        assert_eq!(tables[0].chunk_start[64], 4 + 1 + 62);
        assert_eq!(tables[1].chunk_start[64], 63 + 200);
    }
}
