//! The formulas on shapes worked out by hand.

use super::*;

const F16: DType = DType::F16;
const F32: DType = DType::F32;

#[test]
fn linear_on_a_bert_ffn_shape() {
    // x [512, 768] · W [3072, 768]ᵀ + b, f16, every input tracking.
    let c = linear([512, 3072, 768], true, F16, F16, [true; 3]);
    let gemm = 2.0 * 512.0 * 3072.0 * 768.0;
    assert_eq!(c.fwd.flops, gemm + 512.0 * 3072.0);
    // x, W, b read; y written; 2 bytes each.
    let (x, wt, y) = (512.0 * 768.0, 3072.0 * 768.0, 512.0 * 3072.0);
    assert_eq!(c.fwd.bytes, 2.0 * (x + wt + 3072.0 + y));
    assert_eq!(c.bwd.flops, 2.0 * gemm + y);
    // dy, W, x read; dx, dW, db written.
    assert_eq!(c.bwd.bytes, 2.0 * (y + wt + x + x + wt + 3072.0));
    // Only dW wanted (the first layer's x from a frozen embedding): one GEMM, no dx.
    let c = linear([512, 3072, 768], false, F16, F16, [false, true, false]);
    assert_eq!(c.bwd.flops, gemm);
    assert_eq!(c.bwd.bytes, 2.0 * (y + x + wt));
    // linear_into: f16 operands, f32 output and incoming gradient.
    let c = linear([4, 8, 16], false, F16, F32, [true, true, false]);
    assert_eq!(c.fwd.bytes, 2.0 * (64.0 + 128.0) + 4.0 * 32.0);
}

#[test]
fn act_linear_counts_the_recomputed_activation() {
    let plain = linear([10, 20, 30], false, F32, F32, [true, true, false]);
    let c = act_linear(UnaryOp::Gelu, [10, 20, 30], false, F32, [true, true, false]);
    let n = 300.0;
    assert_eq!(c.fwd.flops, plain.fwd.flops + 5.0 * n);
    assert_eq!(c.fwd.bytes, plain.fwd.bytes);
    // Backward: GELU again (5/elem) and its derivative (10/elem) besides both GEMMs.
    assert_eq!(c.bwd.flops, plain.bwd.flops + 15.0 * n);
    assert_eq!(c.bwd.bytes, plain.bwd.bytes);
}

#[test]
fn matmul_with_a_broadcast_operand() {
    let c = matmul([3, 4, 5, 6], true, F32, [true, true]);
    let gemm = 2.0 * 3.0 * 4.0 * 5.0 * 6.0;
    assert_eq!(c.fwd.flops, gemm);
    // A [3,4,6], B [6,5] once, C [3,4,5].
    assert_eq!(c.fwd.bytes, 4.0 * (72.0 + 30.0 + 60.0));
    assert_eq!(c.bwd.flops, 2.0 * gemm);
}

#[test]
fn attention_counts_the_pairs_the_masks_leave() {
    let s = AttnShape {
        b: 2,
        h: 3,
        lq: 4,
        lk: 4,
        d: 8,
        causal: false,
        key_mask: false,
        bias: false,
    };
    let full = attention(s, F16, [true, true, true, false]);
    // Two GEMMs of 2·lq·lk·d per (batch, head) forward, five backward.
    assert_eq!(full.fwd.flops, 2.0 * 2.0 * (2 * 3 * 16 * 8) as f64);
    assert_eq!(full.bwd.flops, 2.5 * full.fwd.flops);
    // q, k, v read and o written (2 bytes), lse written (f32).
    let t = (2 * 4 * 3 * 8) as f64;
    assert_eq!(full.fwd.bytes, 2.0 * 4.0 * t + 4.0 * (2 * 3 * 4) as f64);
    // Causal over 4 positions: 1 + 2 + 3 + 4 = 10 of 16 pairs.
    let causal = attention(
        AttnShape { causal: true, ..s },
        F16,
        [true, true, true, false],
    );
    assert_eq!(causal.fwd.flops, full.fwd.flops * 10.0 / 16.0);
    // A 2-query causal step over 4 keys sees 3 then 4 keys.
    let step = attention(
        AttnShape {
            causal: true,
            lq: 2,
            ..s
        },
        F16,
        [true; 4],
    );
    assert_eq!(step.fwd.flops, 2.0 * 2.0 * (2 * 3 * 7 * 8) as f64);
    // The bias [h, lq, lk] is read forward and its gradient written backward.
    let biased = attention(AttnShape { bias: true, ..s }, F16, [true; 4]);
    assert_eq!(biased.fwd.bytes - full.fwd.bytes, 2.0 * 48.0);
    assert_eq!(biased.bwd.bytes - full.bwd.bytes, 2.0 * 2.0 * 48.0);
    // Nothing tracks: no backward.
    assert_eq!(attention(s, F16, [false; 4]).bwd, Work::default());
}

#[test]
fn norms_and_pointwise_ops() {
    // LayerNorm [2, 8] f32: x read, y written, gamma and beta read, mean and rstd written.
    let c = norm(NormKind::Layer, 2, 8, F32, true);
    assert_eq!(c.fwd.bytes, 4.0 * (16.0 + 16.0 + 16.0 + 4.0));
    assert_eq!(c.fwd.flops, 8.0 * 16.0);
    let r = norm(NormKind::Rms, 2, 8, F32, true);
    assert_eq!(r.fwd.bytes, 4.0 * (16.0 + 16.0 + 8.0 + 2.0));
    let d = norm(
        NormKind::DropoutAddLayer { dropout: false },
        2,
        8,
        F32,
        true,
    );
    assert_eq!(d.fwd.bytes - c.fwd.bytes, 4.0 * 32.0);
    assert_eq!(
        binary(BinaryOp::Add, 10, F16, [true, true]).bwd,
        Work::default()
    );
    assert_eq!(
        binary(BinaryOp::Mul, 10, F32, [true, true]).bwd.bytes,
        4.0 * 50.0
    );
    assert_eq!(dropout(10, 0.0, F32), OpCost::default());
    assert_eq!(dropout(10, 0.1, F16).fwd.bytes, 40.0);
    assert_eq!(cast(10, F16, F16), OpCost::default());
    assert_eq!(cast(10, F16, F32).fwd.bytes, 60.0);
    // A gather reads the rows it picks; its backward writes the whole table gradient.
    let g = gather(6, 100, 4, F32);
    assert_eq!(g.fwd.bytes, 4.0 * (24.0 + 6.0 + 24.0));
    assert_eq!(g.bwd.bytes, 4.0 * (24.0 + 6.0 + 400.0));
    // Cross-entropy over [3, 5] f32 logits.
    let x = cross_entropy(3, 5, F32);
    assert_eq!(x.fwd.bytes, 4.0 * (15.0 + 3.0 + 3.0 + 1.0));
}

#[test]
fn adamw_with_fp32_masters() {
    // f16 weights and gradients: g 2, m 4+4, v 4+4, master 4+4, weight 2 bytes.
    let c = adamw(1000, F16, F16, true);
    assert_eq!(c.fwd.bytes, 1000.0 * 28.0);
    assert_eq!(c.fwd.flops, 16.0 * 1000.0);
    // f32 without masters: g 4, moments 16, weight read and written 8.
    assert_eq!(adamw(1000, F32, F32, false).fwd.bytes, 1000.0 * 28.0);
}

#[test]
fn adafactor_counts_its_state() {
    // A [10, 100] f32 weight, factored: 110 state elements read and written, the
    // gradient read, the weight read and written.
    let c = adafactor(1000, 110, F32, F32, false, false);
    assert_eq!(c.fwd.bytes, 4.0 * (1000.0 + 2.0 * 110.0 + 2.0 * 1000.0));
    assert_eq!(c.fwd.flops, 21.0 * 1000.0);
    // fp16 with a master and a first moment (1000 more state elements).
    let m = adafactor(1000, 1110, F16, F16, true, true);
    assert_eq!(m.fwd.bytes, 2000.0 + 8.0 * 1110.0 + 8000.0 + 2000.0);
    assert_eq!(m.fwd.flops, 24.0 * 1000.0);
    assert_eq!(m.bwd, Work::default());
}

#[test]
fn categories_cover_backward_and_recompute_rows() {
    assert_eq!(category("linear"), Some(Category::Gemm));
    assert_eq!(category("linear.bwd"), Some(Category::Gemm));
    assert_eq!(category("attention.recompute"), Some(Category::Attention));
    assert_eq!(category("adamw"), Some(Category::Optimizer));
    assert_eq!(category("adafactor"), Some(Category::Optimizer));
    assert_eq!(category("no_such_op"), None);
    let names: std::collections::BTreeSet<_> = CATEGORIES.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), CATEGORIES.len(), "an op listed twice");
    for c in Category::ALL {
        assert!(CATEGORIES.iter().any(|(_, k)| *k == c), "{c:?} is empty");
    }
}
