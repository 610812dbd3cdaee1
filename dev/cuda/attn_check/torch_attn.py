#!/usr/bin/env python3
"""PyTorch baselines for the shapes attn_check.cu times, on the same GPU.

Why: fusebox's fused attention is meant to beat what a PyTorch user would run. For each
shape this times forward and forward+backward of
  - sdpa_efficient: F.scaled_dot_product_attention restricted to the memory-efficient
    backend (what SDPA runs on a T4), bias + padding mask + causal folded into one additive
    float16 attn_mask [B, H, Lq, Lk] that requires grad when there is a bias (T5);
  - sdpa_flash: the flash backend, only where it applies (no bias; no padding mask since
    flash takes none, so it is timed without one; is_causal for the decoder);
  - sdpa_auto: SDPA with whatever backend PyTorch picks for the sdpa_efficient inputs;
  - eager_t5: HF T5-style eager attention: matmul, + bias/mask, softmax in fp32,
    (dropout,) matmul.
Cases named *_dropout0.1 apply dropout 0.1 to the probabilities in every impl.
Inputs are fp16 [B, H, L, D] (the transposes HF does are not timed). Each impl runs in its
own try/except so one failure does not stop the rest. Prints one line per (case, impl):
  TORCHATTN case=.. impl=.. fwd_ms=.. fwdbwd_ms=.. peak_mb=..
peak_mb is the peak allocated memory of one forward+backward above what was allocated
before it (inputs excluded).
"""
import sys
import traceback

import torch
import torch.nn.functional as F

CASES = [
    dict(name="distilbert_b32_384", B=32, H=12, Lq=384, Lk=384, D=64, scale=0.125,
         causal=False, bias=False, mask=True),
    dict(name="t5_enc_b16_512_bias", B=16, H=8, Lq=512, Lk=512, D=64, scale=1.0,
         causal=False, bias=True, mask=True),
    dict(name="t5_dec_b16_128_causal_bias", B=16, H=8, Lq=128, Lk=128, D=64, scale=1.0,
         causal=True, bias=True, mask=False),
    dict(name="t5_cross_b16_128x512", B=16, H=8, Lq=128, Lk=512, D=64, scale=1.0,
         causal=False, bias=False, mask=True),
    # SQuAD-like padding to 384, lengths 150 + (b*37) % 235 as in attn_check.cu.
    dict(name="distilbert_b32_384_varlen", B=32, H=12, Lq=384, Lk=384, D=64, scale=0.125,
         causal=False, bias=False, mask=True, lens=[150 + (b * 37) % 235 for b in range(32)]),
    # attention-probability dropout 0.1 (HF's fine-tuning default), as in attn_check.cu
    dict(name="distilbert_b32_384_dropout0.1", B=32, H=12, Lq=384, Lk=384, D=64, scale=0.125,
         causal=False, bias=False, mask=True, dropout=0.1),
    dict(name="t5_enc_b16_512_bias_dropout0.1", B=16, H=8, Lq=512, Lk=512, D=64, scale=1.0,
         causal=False, bias=True, mask=True, dropout=0.1),
]
REPS = 20
WARMUP = 3


def median_ms(fn, reps=REPS):
    times = []
    for it in range(reps + WARMUP):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        if it >= WARMUP:
            times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def make_inputs(c, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    shp_q = (c["B"], c["H"], c["Lq"], c["D"])
    shp_k = (c["B"], c["H"], c["Lk"], c["D"])

    def rnd(shape):
        return (torch.rand(shape, generator=g, device=dev) * 2 - 1).half().requires_grad_(True)

    q, k, v = rnd(shp_q), rnd(shp_k), rnd(shp_k)
    dout = (torch.rand(shp_q, generator=g, device=dev) * 2 - 1).half()
    bias = None
    if c["bias"]:
        bias = ((torch.rand((1, c["H"], c["Lq"], c["Lk"]), generator=g, device=dev) * 4 - 2)
                .half().requires_grad_(True))
    neg = torch.finfo(torch.float16).min
    # Constant part of the additive mask: key padding (all keys kept here, as in the
    # attn_check benchmark, but still applied) and the causal triangle.
    const = torch.zeros((c["B"], 1, c["Lq"], c["Lk"]), device=dev, dtype=torch.float16)
    for b, n in enumerate(c.get("lens", [])):
        const[b, :, :, n:] = neg
    if c["causal"]:
        tri = torch.ones((c["Lq"], c["Lk"]), device=dev, dtype=torch.bool).triu(
            c["Lk"] - c["Lq"] + 1)
        const = const.masked_fill(tri, neg)
    has_mask = c["mask"] or c["causal"] or c["bias"]
    return q, k, v, dout, bias, const, has_mask


def additive_mask(bias, const):
    # T5 / HF: position_bias + extended mask, materialised as [B, H, Lq, Lk].
    return const if bias is None else bias + const


def impl_sdpa(backend):
    def run(c, q, k, v, bias, const, has_mask):
        from torch.nn.attention import sdpa_kernel
        am = additive_mask(bias, const) if has_mask else None
        p = c.get("dropout", 0.0)
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=am, dropout_p=p,
                                                  scale=c["scale"])
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=am, dropout_p=p,
                                                  scale=c["scale"])
    return run


def impl_flash(c, q, k, v, bias, const, has_mask):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if bias is not None:
        raise RuntimeError("not applicable: flash takes no additive bias")
    if c.get("lens"):
        raise RuntimeError("not applicable: flash takes no padding mask")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"],
                                              dropout_p=c.get("dropout", 0.0), scale=c["scale"])


def impl_eager(c, q, k, v, bias, const, has_mask):
    scores = torch.matmul(q, k.transpose(-1, -2))
    if c["scale"] != 1.0:
        scores = scores * c["scale"]
    if has_mask:
        scores = scores + additive_mask(bias, const)
    attn = F.softmax(scores.float(), dim=-1).type_as(scores)
    if c.get("dropout", 0.0) > 0:
        attn = F.dropout(attn, p=c["dropout"], training=True)
    return torch.matmul(attn, v)


def bench_one(c, name, fn, dev):
    q, k, v, dout, bias, const, has_mask = make_inputs(c, dev)
    params = [t for t in (q, k, v, bias) if t is not None]

    def fwd():
        return fn(c, q, k, v, bias, const, has_mask)

    def fwdbwd():
        for t in params:
            t.grad = None
        fwd().backward(dout)

    fwd_ms = median_ms(fwd)
    fwdbwd_ms = median_ms(fwdbwd)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwdbwd()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"TORCHATTN case={c['name']} impl={name} fwd_ms={fwd_ms:.4f} "
          f"fwdbwd_ms={fwdbwd_ms:.4f} peak_mb={peak_mb:.1f}", flush=True)


def smoke():
    """--smoke: tiny shapes on the CPU (no timing); every impl's output and input grads
    are compared with eager_t5's, which checks the mask/bias/scale plumbing anywhere."""
    dev = torch.device("cpu")
    bad = 0
    for c0 in CASES:
        c = dict(c0, B=2, H=2, Lq=min(c0["Lq"], 24), Lk=min(c0["Lk"], 40), D=16, dropout=0.0)
        if "lens" in c0:
            c["lens"] = [40, 17]
        results = {}
        for name, fn in [("eager_t5", impl_eager), ("sdpa_auto", impl_sdpa(None))]:
            q, k, v, dout, bias, const, has_mask = make_inputs(c, dev)
            q, k, v, dout = (t.detach().float().requires_grad_(t.requires_grad)
                             for t in (q, k, v, dout))
            if bias is not None:
                bias = bias.detach().float().requires_grad_(True)
            const = const.float()
            out = fn(c, q, k, v, bias, const, has_mask)
            out.backward(dout)
            grads = [t.grad for t in (q, k, v, bias) if t is not None]
            results[name] = [out] + grads
        diff = max((a - b).abs().max().item()
                   for a, b in zip(results["eager_t5"], results["sdpa_auto"]))
        ok = diff < 1e-4 and all(torch.isfinite(t).all() for t in results["eager_t5"])
        bad += not ok
        print(f"TORCHSMOKE case={c['name']} max_diff_sdpa_vs_eager={diff:.2e} "
              f"pass={'true' if ok else 'false'}", flush=True)
    return 1 if bad else 0


def main():
    if "--smoke" in sys.argv:
        return smoke()
    if not torch.cuda.is_available():
        print("TORCHATTN error=no_cuda_device")
        return 1
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} device {torch.cuda.get_device_name(0)}", flush=True)
    impls = []
    try:
        from torch.nn.attention import SDPBackend
        impls.append(("sdpa_efficient", impl_sdpa(SDPBackend.EFFICIENT_ATTENTION)))
        impls.append(("sdpa_flash", impl_flash))
    except Exception as e:  # older torch: no torch.nn.attention
        print(f"TORCHATTN impl=sdpa_efficient error=import:{e!r}", flush=True)
    impls.append(("sdpa_auto", impl_sdpa(None)))
    impls.append(("eager_t5", impl_eager))
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only = args[0] if args else None
    for c in CASES:
        if only and only not in c["name"]:
            continue
        for name, fn in impls:
            try:
                bench_one(c, name, fn, dev)
            except Exception as e:
                msg = str(e).splitlines()[0][:200] if str(e) else repr(e)
                print(f"TORCHATTN case={c['name']} impl={name} error={msg!r}", flush=True)
                if "not applicable" not in msg:
                    traceback.print_exc(limit=2)
            finally:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
