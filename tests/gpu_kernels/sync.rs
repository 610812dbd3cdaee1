//! The sync-free step on the GPU: what removing the mid-step waits relies on.
//!
//! - `CudaStorage::from_cpu` no longer synchronises after its copy: the driver stages a
//!   pageable source before cuMemcpyHtoDAsync returns. Checked by uploading buffers of
//!   many sizes (inline-sized, around 64 KiB, several MiB) while the stream is busy with
//!   queued GEMMs, scribbling over each host buffer (or freeing it) at once, and reading
//!   the device copies back: they must hold the original bytes exactly.
//! - QA positions are clamped on the host when the batch is built, and `qa_loss` on CUDA
//!   uses them as they are: a batch with positions past the end gives the CPU's loss and
//!   no deferred device error.
//! - `train::run` keeps each micro-batch loss on the device and reads them after the
//!   optimizer step: with gradient accumulation the logged losses and gradient norms on
//!   CUDA (f32) match the CPU run step for step (1e-3: six Adam steps of drift).

use std::time::Instant;

use fusebox::backend::cuda::{self, CudaStorage};
use fusebox::backend::{BackendStorage, CpuStorage, MatmulSpec};
use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
use fusebox::models::qa::{qa_loss, QaBatch, QaModel};
use fusebox::nn::Mode;
use fusebox::train::{run, Task, TrainConfig};
use fusebox::{DType, Device, Result, Tensor};

use crate::common::*;

/// Queue `n` GEMMs of 1024³ (f32) on the device so that later uploads land behind them.
fn busy(n: usize) -> Vec<CudaStorage> {
    let k = 1024;
    let a = up(&CpuStorage::from_f32(vec![0.5; k * k]));
    (0..n)
        .map(|_| ok(a.matmul(&a, &MatmulSpec::plain(k, k, k))))
        .collect()
}

#[test]
fn uploads_need_no_sync() {
    let Some(mut rng) = setup("uploads_need_no_sync") else {
        return;
    };
    let t = Instant::now();
    let sizes = [
        1usize,
        7,
        1000,
        16_383,
        16_384,
        16_385,
        70_001,
        1 << 20,
        3 << 20,
    ];
    let mut uploads = Vec::new();
    for &n in &sizes {
        let queued = busy(16);
        let want: Vec<i32> = (0..n).map(|_| rng.next_u64() as i32).collect();
        // The source is freed as soon as the upload returns, and same-sized buffers of
        // garbage are allocated at once (the allocator hands the freed block back), so a
        // copy still reading the source would read the garbage.
        let dev = up(&CpuStorage::from_i32(want.clone()));
        let scribble: Vec<Vec<i32>> = (0..4).map(|_| vec![-7; n]).collect();
        let h: Vec<half::f16> = (0..n)
            .map(|i| half::f16::from_f32((i % 2048) as f32))
            .collect();
        let dev16 = up(&CpuStorage::from_f16(h.clone()));
        let scribble16: Vec<Vec<half::f16>> = (0..4).map(|_| vec![half::f16::NAN; n]).collect();
        uploads.push((dev, want, dev16, h));
        drop((queued, scribble, scribble16));
    }
    let mut bad = 0usize;
    for (dev, want, dev16, h) in &uploads {
        bad += (ok(dev.to_vec_i32()) != *want) as usize;
        let exp: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
        bad += (ok(dev16.to_vec_f32()) != exp) as usize;
    }
    let pass = bad == 0;
    gpucheck(
        "upload_no_sync",
        &[sizes.len()],
        DType::I32,
        bad as f64,
        pass,
        t,
    );
    assert!(pass, "{bad} uploads read back different bytes");
}

#[test]
fn qa_positions_are_clamped_before_the_device() {
    let Some(mut rng) = setup("qa_positions_are_clamped_before_the_device") else {
        return;
    };
    let t = Instant::now();
    let (b, l) = (6usize, 40usize);
    let ids: Vec<Vec<u32>> = (0..b).map(|_| vec![1; l]).collect();
    let starts = [0usize, 39, 40, 41, 500, 3];
    let ends = [40usize, 1000, 2, 39, 40, 77];
    let batch = |dev| {
        ok(QaBatch::from_rows(
            &ids,
            &ids,
            None,
            Some((&starts, &ends)),
            dev,
        ))
    };
    let (cpu, gpu) = (batch(Device::Cpu), batch(Device::Cuda(0)));
    for (c, g) in [
        (&cpu.start_positions, &gpu.start_positions),
        (&cpu.end_positions, &gpu.end_positions),
    ] {
        let (c, g) = (c.as_ref().expect("cpu"), g.as_ref().expect("gpu"));
        let cv = ok(c.to_vec_i32());
        assert!(cv.iter().all(|&p| (0..=l as i32).contains(&p)), "{cv:?}");
        assert_eq!(ok(g.to_vec_i32()), cv);
    }
    let logits = rng.normal(b * l, 2.0);
    let (ls, le) = (&logits[..], &logits[..]);
    let on = |v: &[f32], dev| ok(Tensor::from_f32(v.to_vec(), [b, l], dev));
    let loss = |x: &QaBatch, dev| -> f64 {
        let (s, e) = (
            x.start_positions.as_ref().expect("s"),
            x.end_positions.as_ref().expect("e"),
        );
        ok(ok(qa_loss(&on(ls, dev), &on(le, dev), s, e)).to_scalar())
    };
    let (want, got) = (loss(&cpu, Device::Cpu), loss(&gpu, Device::Cuda(0)));
    ok(cuda::check_errors(Device::Cuda(0)));
    let err = (got - want).abs() / want.abs().max(1e-9);
    let pass = err <= 1e-5;
    gpucheck("qa_loss_clamped", &[b, l], DType::F32, err, pass, t);
    assert!(pass, "qa_loss on CUDA {got} vs CPU {want}");
}

/// A tiny DistilBERT-QA on fixed random rows, for `train::run`.
struct TinyQa {
    model: DistilBertForQa,
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    starts: Vec<usize>,
    ends: Vec<usize>,
    device: Device,
}

impl TinyQa {
    fn new(device: Device, seed: u64) -> TinyQa {
        let cfg: DistilBertConfig = ok(serde_json::from_value(serde_json::json!({
            "model_type": "distilbert", "vocab_size": 97, "dim": 32, "n_layers": 2,
            "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 32, "dropout": 0.0,
            "attention_dropout": 0.0, "qa_dropout": 0.0
        }))
        .map_err(|e| fusebox::Error::msg(e.to_string())));
        let model = ok(DistilBertForQa::new(cfg, device, DType::F32, 5));
        let (n, l) = (12usize, 24usize);
        let mut r = fusebox::rng::Rng::new(seed);
        let ids = (0..n)
            .map(|_| (0..l).map(|_| 1 + (r.next_u64() % 96) as u32).collect())
            .collect();
        let mask = (0..n)
            .map(|_| {
                let len = l - (r.next_u64() % 6) as usize;
                (0..l).map(|j| (j < len) as u32).collect()
            })
            .collect();
        // Some positions past the window (clamped to L, ignored), as truncated answers.
        let starts: Vec<usize> = (0..n).map(|_| (r.next_u64() % 30) as usize).collect();
        let ends = starts
            .iter()
            .map(|s| s + (r.next_u64() % 4) as usize)
            .collect();
        TinyQa {
            model,
            ids,
            mask,
            starts,
            ends,
            device,
        }
    }
}

impl Task for TinyQa {
    fn train_len(&self) -> usize {
        self.ids.len()
    }
    fn loss(&mut self, idx: &[usize], seed: u64) -> Result<(Tensor, usize)> {
        let pick = |v: &[Vec<u32>]| idx.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let (s, e): (Vec<usize>, Vec<usize>) =
            idx.iter().map(|&i| (self.starts[i], self.ends[i])).unzip();
        let batch = QaBatch::from_rows(
            &pick(&self.ids),
            &pick(&self.mask),
            None,
            Some((&s, &e)),
            self.device,
        )?;
        let (st, en) = self.model.forward(&batch, Mode::train(seed))?;
        let tokens = idx.len() * self.ids[0].len();
        Ok((self.model.loss(&st, &en, &batch)?, tokens))
    }
    fn evaluate(&mut self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        m.insert("f1".into(), serde_json::json!(0.0));
        Ok(m)
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        self.model.params().trainable()
    }
    fn save(&self, _dir: &std::path::Path) -> Result<()> {
        Ok(())
    }
    fn headline_metric(&self) -> &'static str {
        "f1"
    }
    fn data_fingerprint(&self) -> String {
        fusebox::train::fingerprint(self.ids.iter().flatten().map(|&x| x as u64))
    }
}

/// (loss, grad_norm) of every logged step in `dir/metrics.jsonl`.
fn logged(dir: &std::path::Path) -> Vec<(f64, f64)> {
    let text = ok(std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map_err(|e| fusebox::Error::msg(e.to_string())));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("loss")?.as_f64()?, v.get("grad_norm")?.as_f64()?)))
        .collect()
}

#[test]
fn train_loop_reads_losses_after_the_step() {
    let Some(_gpu) = setup("train_loop_reads_losses_after_the_step") else {
        return;
    };
    let t = Instant::now();
    let mut series = Vec::new();
    for (name, dev) in [("cpu", Device::Cpu), ("cuda", Device::Cuda(0))] {
        let out = std::env::temp_dir().join(format!(
            "fusebox-gpu-sync-train-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        let mut task = TinyQa::new(dev, 11);
        let cfg = TrainConfig {
            epochs: 3,
            batch: 6,
            grad_accum: 3,
            lr: 1e-3,
            log_every: 1,
            out_dir: out.clone(),
            quiet: true,
            ..Default::default()
        };
        ok(run(&mut task, &cfg));
        series.push(logged(&out));
        let _ = std::fs::remove_dir_all(&out);
    }
    let (c, g) = (&series[0], &series[1]);
    assert_eq!(c.len(), 6, "2 steps per epoch x 3 epochs logged");
    assert_eq!(c.len(), g.len());
    let mut err = 0.0f64;
    for ((cl, cn), (gl, gn)) in c.iter().zip(g) {
        assert!(gl.is_finite() && gn.is_finite());
        err = err
            .max((cl - gl).abs() / cl.abs().max(1e-9))
            .max((cn - gn).abs() / cn.abs().max(1e-9));
    }
    let pass = err <= 1e-3;
    gpucheck(
        "train_loss_after_step",
        &[c.len()],
        DType::F32,
        err,
        pass,
        t,
    );
    assert!(
        pass,
        "logged loss / grad norm differ: CPU {c:?} vs CUDA {g:?}"
    );
}

#[test]
fn bad_token_ids_are_reported_without_a_host_check() {
    let Some(_gpu) = setup("bad_token_ids_are_reported_without_a_host_check") else {
        return;
    };
    let t = Instant::now();
    let task = TinyQa::new(Device::Cuda(0), 3);
    // vocab_size is 97: id 97 is one past the table.
    let mut ids = task.ids[..2].to_vec();
    ids[1][5] = 97;
    let batch = ok(QaBatch::from_rows(
        &ids,
        &task.mask[..2],
        None,
        None,
        Device::Cuda(0),
    ));
    // The forward queues without reading anything back; the id surfaces at the check.
    let _out = ok(task.model.forward(&batch, Mode::eval()));
    let err = err_text(cuda::check_errors(Device::Cuda(0)));
    let needles = ["97", "[0, 97)"];
    check_error(
        "deferred_error_token_id",
        &[2, 24],
        DType::I32,
        &err,
        &needles,
        t,
    );
    ok(cuda::check_errors(Device::Cuda(0)));
}
