//! The ceilings the roofline compares each op with: the card's datasheet peaks (found
//! by its CUDA device name) and the device-to-device copy bandwidth measured at start
//! (the practical memory ceiling); on the CPU, the memcpy bandwidth and the f32 GEMM
//! rate measured at start on the threads the bench runs with.

use std::time::Instant;

use rayon::prelude::*;

use crate::error::Result;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// A card's datasheet peaks (dense: the sparsity figures halved).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CardPeaks {
    /// fp16 tensor-core FLOP/s with f32 accumulation, in TFLOP/s.
    pub fp16_tensor_tflops: f64,
    /// fp32 FLOP/s on the CUDA cores (no TF32), in TFLOP/s.
    pub fp32_tflops: f64,
    /// Memory bandwidth in GB/s (10⁹ bytes).
    pub mem_gbps: f64,
}

const fn card(fp16_tensor_tflops: f64, fp32_tflops: f64, mem_gbps: f64) -> CardPeaks {
    CardPeaks {
        fp16_tensor_tflops,
        fp32_tflops,
        mem_gbps,
    }
}

/// Known cards, matched on a whole word of the device name. Sources, NVIDIA's datasheets:
/// T4: "NVIDIA T4 Tensor Core GPU" (65 TFLOPS mixed fp16, 8.1 fp32, 320 GB/s GDDR6);
/// A100: "NVIDIA A100 Tensor Core GPU" (2021; 312 fp16 tensor, 19.5 fp32; 1,555 GB/s
/// for 40GB, 1,935 GB/s for 80GB PCIe, 2,039 GB/s for 80GB SXM);
/// H100: "NVIDIA H100 Tensor Core GPU" (SXM: 1,979 fp16 tensor with sparsity, so 989
/// dense, 67 fp32, 3.35 TB/s); H200: "NVIDIA H200 Tensor Core GPU" (SXM: 989 dense fp16,
/// 67 fp32, 4.8 TB/s); A10 (125 dense fp16, 31.2 fp32, 600 GB/s); L4 (121 dense fp16,
/// 30.3 fp32, 300 GB/s); V100 SXM2 (125 tensor, 15.7 fp32, 900 GB/s). The H100/H200
/// figures are the SXM parts': PCIe and NVL variants peak lower, so they get none rather
/// than a wrong one; so does any card not listed (an L40S is not an L4).
const CARDS: [(&str, CardPeaks); 7] = [
    ("T4", card(65.0, 8.1, 320.0)),
    ("A100", card(312.0, 19.5, 1555.0)),
    ("H100", card(989.0, 67.0, 3350.0)),
    ("H200", card(989.0, 67.0, 4800.0)),
    ("A10", card(125.0, 31.2, 600.0)),
    ("L4", card(121.0, 30.3, 300.0)),
    ("V100", card(125.0, 15.7, 900.0)),
];

/// The datasheet peaks of a CUDA device name ("Tesla T4", "NVIDIA A100-SXM4-80GB",
/// "NVIDIA H100 80GB HBM3", "NVIDIA H200"), `None` for a card not known.
pub fn card_peaks(name: &str) -> Option<CardPeaks> {
    let n = name.to_ascii_uppercase();
    let words: Vec<&str> = n.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let has = |w: &str| words.contains(&w);
    let hopper_variant = has("PCIE") || has("NVL");
    let (key, mut peaks) = CARDS
        .iter()
        .find(|(k, _)| has(k) && !(k.starts_with('H') && hopper_variant))
        .copied()?;
    if key == "A100" && has("80GB") {
        peaks.mem_gbps = if has("PCIE") { 1935.0 } else { 2039.0 };
    }
    Some(peaks)
}

/// The ceilings of this run, in FLOP/s and bytes/s.
#[derive(Clone, Debug)]
pub struct Peaks {
    /// Where the FLOP/s and bandwidth peaks come from ("datasheet (Tesla T4)", "measured").
    pub source: String,
    /// The FLOP/s of GEMMs and attention in fp16 (the tensor cores).
    pub tensor_flops: Option<f64>,
    /// The FLOP/s of everything else (and of every op in fp32).
    pub fp32_flops: Option<f64>,
    /// Memory bandwidth.
    pub mem_bw: f64,
    /// Copy bandwidth measured at start (read + write bytes per second).
    pub measured_copy_bw: f64,
    /// f32 GEMM FLOP/s measured at start (the CPU).
    pub measured_gemm_flops: Option<f64>,
}

impl Peaks {
    /// The JSON `peaks` object (TFLOP/s and GB/s).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source,
            "tensor_tflops": self.tensor_flops.map(|f| f / 1e12),
            "fp32_tflops": self.fp32_flops.map(|f| f / 1e12),
            "mem_gb_per_s": self.mem_bw / 1e9,
            "measured_copy_gb_per_s": self.measured_copy_bw / 1e9,
            "measured_gemm_tflops": self.measured_gemm_flops.map(|f| f / 1e12),
        })
    }
}

/// The best of `reps` timings of `f` (seconds), after one untimed run.
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Measure (and look up) the ceilings of `device` whose name is `name`.
pub fn measure(device: Device, name: &str) -> Result<Peaks> {
    if device.is_cuda() {
        // 256 MiB each way: far past any cache.
        let n = 64 << 20;
        let src = Tensor::zeros([n], DType::F32, device)?;
        let dst = Tensor::zeros([n], DType::F32, device)?;
        let secs = best_of(5, || {
            dst.storage_mut().copy_from_(&src.storage())?;
            crate::backend::cuda::synchronize(device)
        })?;
        let copy = 2.0 * (n * 4) as f64 / secs;
        let card = card_peaks(name);
        return Ok(Peaks {
            source: match card {
                Some(_) => format!("datasheet ({name})"),
                None => "measured copy bandwidth (no datasheet for this card)".into(),
            },
            tensor_flops: card.map(|c| c.fp16_tensor_tflops * 1e12),
            fp32_flops: card.map(|c| c.fp32_tflops * 1e12),
            mem_bw: card.map_or(copy, |c| c.mem_gbps * 1e9),
            measured_copy_bw: copy,
            measured_gemm_flops: None,
        });
    }
    // memcpy of 64 MiB over the rayon pool, in 1 MiB pieces.
    let n = 16 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let secs = best_of(5, || {
        dst.par_chunks_mut(1 << 18)
            .zip(src.par_chunks(1 << 18))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    })?;
    let copy = 2.0 * (n * 4) as f64 / secs;
    // f32 GEMM 1024³ through the backend's matmul (the gemm crate), as the ops run it.
    let k = 1024;
    let a = Tensor::full([k, k], DType::F32, device, 0.5)?;
    let _g = crate::autograd::no_grad();
    let secs = best_of(3, || a.matmul(&a).map(drop))?;
    let gemm = 2.0 * (k * k * k) as f64 / secs;
    Ok(Peaks {
        source: "measured (memcpy bandwidth, f32 GEMM 1024³)".into(),
        tensor_flops: Some(gemm),
        fp32_flops: Some(gemm),
        mem_bw: copy,
        measured_copy_bw: copy,
        measured_gemm_flops: Some(gemm),
    })
}

#[cfg(test)]
mod tests {
    use super::card_peaks;

    #[test]
    fn card_peaks_by_name() {
        for (name, want) in [
            ("NVIDIA H200", Some((989.0, 67.0, 4800.0))),
            ("NVIDIA H100 80GB HBM3", Some((989.0, 67.0, 3350.0))),
            ("NVIDIA H100 PCIe", None),
            ("NVIDIA H100 NVL", None),
            ("Tesla T4", Some((65.0, 8.1, 320.0))),
            ("NVIDIA A100-SXM4-80GB", Some((312.0, 19.5, 2039.0))),
            ("NVIDIA A100 80GB PCIe", Some((312.0, 19.5, 1935.0))),
            ("NVIDIA A100-SXM4-40GB", Some((312.0, 19.5, 1555.0))),
            ("NVIDIA A10", Some((125.0, 31.2, 600.0))),
            ("NVIDIA L4", Some((121.0, 30.3, 300.0))),
            ("NVIDIA L40S", None),
            ("cpu (2 threads)", None),
        ] {
            let got = card_peaks(name).map(|c| (c.fp16_tensor_tflops, c.fp32_tflops, c.mem_gbps));
            assert_eq!(got, want, "{name}");
        }
    }
}
