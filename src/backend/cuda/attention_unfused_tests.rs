//! Host check of the naive attention's GEMM descriptors (no GPU needed): the exact
//! descriptors the device path launches are run through the host model of cuBLAS
//! (`blas::host`), with the softmax kernels' arithmetic done on the host in between, and
//! compared with the CPU backend's attention forward and backward. This pins down the
//! strides, leading dimensions, transposes and per-batch offsets of the [B, L, H, D]
//! layout, which the kernel emulation in dev/cuda/emu cannot see.

use super::{gemms_p, gemms_xyt, Mat};
use crate::backend::cuda::blas::host;
use crate::backend::{AttnArgs, AttnSaved, AttnSpec, BackendStorage, CpuStorage};
use crate::shape::DType;

fn m(buf: usize) -> Mat {
    Mat {
        ptr: host::ptr(buf, 0),
        esz: 4,
    }
}

fn vals(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u64 + 7) * (seed * 2 + 1) * 0x9E37_79B9) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0.0f64, |a, &w| a.max(w.abs() as f64))
        .max(1e-30);
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g == w {
                0.0
            } else if g.is_nan() || w.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w as f64).abs() / scale
            }
        })
        .fold(0.0, f64::max)
}

fn run(gs: Vec<crate::backend::cuda::blas::Gemm>, bufs: &mut [Vec<f32>]) {
    for g in &gs {
        host::gemm(g, bufs);
    }
}

#[test]
fn attention_descriptors_match_cpu() {
    // (b, h, lq, lk, d, causal, mask, bias, scale)
    let cases = [
        (
            1usize, 1usize, 1usize, 1usize, 1usize, false, false, false, 1.0f32,
        ),
        (2, 3, 5, 7, 4, false, true, true, 1.0),
        (2, 2, 6, 6, 8, true, true, false, 0.35),
        (1, 3, 4, 9, 5, true, false, true, 1.0),
    ];
    for &(b, h, lq, lk, d, causal, masked, biased, scale) in &cases {
        let sp = AttnSpec {
            b,
            h,
            lq,
            lk,
            d,
            scale,
            causal,
            dropout: 0.0,
            seed: 0,
        };
        let (q, k, v, dout) = (
            vals(b * lq * h * d, 1),
            vals(b * lk * h * d, 2),
            vals(b * lk * h * d, 3),
            vals(b * lq * h * d, 4),
        );
        let mask: Option<Vec<i32>> = masked.then(|| {
            (0..b * lk)
                .map(|i| ((i % lk) + (i / lk)) % 4 != 3)
                .map(i32::from)
                .collect()
        });
        let bias: Option<Vec<f32>> = biased.then(|| vals(h * lq * lk, 5));
        let rows = b * h * lq;
        let nan = |n: usize| vec![f32::NAN; n];
        // 0 q, 1 k, 2 v, 3 dout, 4 S, 5 P, 6 out, 7 dP, 8 dS, 9 dq, 10 dk, 11 dv
        let mut bufs = vec![
            q.clone(),
            k.clone(),
            v.clone(),
            dout.clone(),
            nan(rows * lk),
            nan(rows * lk),
            nan(q.len()),
            nan(rows * lk),
            nan(rows * lk),
            nan(q.len()),
            nan(k.len()),
            nan(v.len()),
        ];
        run(
            gemms_xyt(&sp, (lq, lk), m(0), m(1), m(4), DType::F32, DType::F32),
            &mut bufs,
        );
        let keep = |row: usize, j: usize| {
            let (i, bb) = (row % lq, row / (lq * h));
            mask.as_ref().map(|mk| mk[bb * lk + j] != 0).unwrap_or(true)
                && (!causal || j + lq <= i + lk)
        };
        let logit = |bufs: &[Vec<f32>], row: usize, j: usize| {
            let (i, hh) = (row % lq, (row / lq) % h);
            scale as f64 * bufs[4][row * lk + j] as f64
                + bias
                    .as_ref()
                    .map(|bs| bs[(hh * lq + i) * lk + j] as f64)
                    .unwrap_or(0.0)
        };
        let mut lse = vec![f32::NEG_INFINITY; rows];
        for row in 0..rows {
            let mx = (0..lk)
                .filter(|&j| keep(row, j))
                .map(|j| logit(&bufs, row, j))
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..lk)
                .filter(|&j| keep(row, j))
                .map(|j| (logit(&bufs, row, j) - mx).exp())
                .sum();
            for j in 0..lk {
                bufs[5][row * lk + j] = if keep(row, j) {
                    ((logit(&bufs, row, j) - mx).exp() / z) as f32
                } else {
                    0.0
                };
            }
            if z > 0.0 {
                lse[row] = (mx + z.ln()) as f32;
            }
        }
        run(
            gemms_p(&sp, (lq, lk), m(5), m(2), m(6), DType::F32, 1.0, false),
            &mut bufs,
        );
        let cq = CpuStorage::from_f32(q.clone());
        let (ck, cv, cdo) = (
            CpuStorage::from_f32(k.clone()),
            CpuStorage::from_f32(v.clone()),
            CpuStorage::from_f32(dout.clone()),
        );
        let cm = mask.clone().map(CpuStorage::from_i32);
        let cb = bias.clone().map(CpuStorage::from_f32);
        let args = AttnArgs::new(cm.as_ref(), cb.as_ref(), sp);
        let (wo, wl) = cq.attention(&ck, &cv, args).expect("cpu attention");
        let tag = format!("{sp:?} mask={masked} bias={biased}");
        let err = max_rel(&bufs[6], &wo.to_vec_f32().expect("out"));
        assert!(err < 1e-5, "forward out {tag}: {err}");
        let err = max_rel(&lse, &wl.to_vec_f32().expect("lse"));
        assert!(err < 1e-5, "forward lse {tag}: {err}");
        // Backward: dP = dO·vᵀ, dS = P∘(dP − Σ P∘dP), then dq, dk, dv.
        run(
            gemms_xyt(&sp, (lq, lk), m(3), m(2), m(7), DType::F32, DType::F32),
            &mut bufs,
        );
        for row in 0..rows {
            let dd: f64 = (0..lk)
                .map(|j| bufs[5][row * lk + j] as f64 * bufs[7][row * lk + j] as f64)
                .sum();
            for j in 0..lk {
                bufs[8][row * lk + j] =
                    (bufs[5][row * lk + j] as f64 * (bufs[7][row * lk + j] as f64 - dd)) as f32;
            }
        }
        run(
            gemms_p(&sp, (lq, lk), m(8), m(1), m(9), DType::F32, scale, false),
            &mut bufs,
        );
        run(
            gemms_p(&sp, (lk, lq), m(8), m(0), m(10), DType::F32, scale, true),
            &mut bufs,
        );
        run(
            gemms_p(&sp, (lk, lq), m(5), m(3), m(11), DType::F32, 1.0, true),
            &mut bufs,
        );
        let saved = AttnSaved::new(&wo, &wl, &cdo);
        let (wdq, wdk, wdv, _) = cq
            .attention_backward(&ck, &cv, saved, args)
            .expect("cpu attention_backward");
        for (name, got, want) in [("dq", 9, wdq), ("dk", 10, wdk), ("dv", 11, wdv)] {
            let err = max_rel(&bufs[got], &want.to_vec_f32().expect("grad"));
            assert!(err < 1e-5, "backward {name} {tag}: {err}");
        }
    }
}
