#!/usr/bin/env python3
"""Build fusebox's PyTorch / Hugging Face parity fixtures (tests/fixtures/*.safetensors).

Why this exists: fusebox's Rust tests must match torch + transformers without running
Python in CI, so this script runs the reference once and freezes inputs and outputs as
safetensors. It is deterministic (fixed seeds, one CPU thread) and writes all metadata
under the single key "fixture" (a JSON string with sorted keys), because safetensors
writes several metadata keys in random order and the files must be byte-reproducible.

Regenerate (from the repository root, in a venv with torch + transformers + safetensors):
    python tools/make_fixtures.py            # all fixtures
    python tools/make_fixtures.py adamw ops  # a subset: adamw grad_scaler ops models

Tensor naming (every file also documents itself in its "fixture" metadata):

adamw.safetensors — torch.optim.AdamW replay, HF Trainer style, NSTEPS steps.
    Parameters: w0 [7,5], b0 [5], w1 [3,4,2], LayerNorm.weight [4]. Two groups:
    weight_decay 0.01 for w0, w1; 0.0 for b0 and LayerNorm.weight (biases + LayerNorm).
    lr: transformers.get_linear_schedule_with_warmup; the lr used at step k is lr[k-1].
    Before each step torch.nn.utils.clip_grad_norm_(max_norm=1.0) rescales the grads by
    min(1, max_norm / (norm + 1e-6)); clip_norm[k-1] is the norm it returned (pre-clip).
    f32.*: the float32 run; f64.*: the same run in float64 (same init, same grads).
      <p>.init                    parameter before step 1
      <p>.step<k>.grad            raw gradient fed at step k (f32; the f64 run casts it)
      <p>.step<k>.grad_clipped    gradient after clipping, what AdamW consumed
      <p>.step<k>.param / .exp_avg / .exp_avg_sq   state after step k
      lr [NSTEPS], clip_norm [NSTEPS]
    all prefixed "f32." or "f64." (grad is stored once, unprefixed: "<p>.step<k>.grad").

grad_scaler.safetensors (+ grad_scaler.json, the same numbers): torch.amp.GradScaler.
    Per case <c>: found [N] int32 (0 finite grads, 1 an inf, 2 a NaN injected),
    scale_before [N], scale_after [N] f32, growth_tracker_after [N] int32,
    step_taken [N] int32 (1 if optimizer.step ran). Case parameters in metadata.

ops.safetensors — single ops in float64, torch as the oracle: "<op>.<tensor>", where
    each op has inputs, out, dout (fixed random upstream gradient) and d<input>
    (gradient of sum(out * dout)). Attention tensors use fusebox's layout [B, L, H, D];
    mask is int32 [B, Lk] with 1 = keep; bias is [H, Lq, Lk]. No fully masked rows.

models/<name>/ (config.json, model.safetensors, generation_config.json via
    save_pretrained) and <name>_io.safetensors: inputs (int32), torch outputs computed in
    float64 from the float32 weights and rounded to float32 (start_logits/end_logits or
    logits, loss), torch_f32.* the same outputs from the plain float32 run,
    grad.<param> for every parameter (float64 run, rounded), param_after.<param> after one
    torch AdamW step (lr 1e-3, wd 0.01, betas (0.9, 0.999), eps 1e-8, no groups, float32)
    fed the stored grads. T5 also: generate.greedy / generate.beam token ids (int32) and
    generate.beam_scores, settings in metadata.
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
NSTEPS = 4


def save(name, tensors, meta):
    meta = dict(meta)
    meta["torch"] = torch.__version__
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    out = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    path = os.path.join(ROOT, name)
    save_file(out, path, metadata={"fixture": json.dumps(meta, sort_keys=True)})
    size = os.path.getsize(path)
    assert size < 2 * 1024 * 1024, f"{path} is {size} bytes"
    print(f"wrote {path} ({size} bytes, {len(out)} tensors)")


# ---------------------------------------------------------------- AdamW replay


def adamw_fixture():
    from transformers import get_linear_schedule_with_warmup

    shapes = {"w0": (7, 5), "b0": (5,), "w1": (3, 4, 2), "LayerNorm.weight": (4,)}
    no_decay = {"b0", "LayerNorm.weight"}
    hp = dict(
        lr=1e-3,
        betas=[0.9, 0.999],
        eps=1e-8,
        weight_decay=0.01,
        num_warmup_steps=2,
        num_training_steps=5,
        steps=NSTEPS,
        max_grad_norm=1.0,
    )
    g = torch.Generator().manual_seed(1234)
    init = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    # Step 2's grads are small so clipping is inactive there and active elsewhere.
    grad_scales = [0.5, 0.05, 1.0, 0.3]
    grads = [
        {n: torch.randn(s, generator=g) * grad_scales[k] for n, s in shapes.items()}
        for k in range(NSTEPS)
    ]
    tensors = {}
    for k in range(NSTEPS):
        for n in shapes:
            tensors[f"{n}.step{k + 1}.grad"] = grads[k][n]

    for prec, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        params = {n: torch.nn.Parameter(init[n].to(dtype).clone()) for n in shapes}
        groups = [
            {"params": [params[n] for n in shapes if n not in no_decay], "weight_decay": 0.01},
            {"params": [params[n] for n in shapes if n in no_decay], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(0.9, 0.999), eps=1e-8)
        sched = get_linear_schedule_with_warmup(
            opt, hp["num_warmup_steps"], hp["num_training_steps"]
        )
        lrs, norms = [], []
        for n in shapes:
            tensors[f"{prec}.{n}.init"] = params[n].detach().clone()
        for k in range(NSTEPS):
            for n in shapes:
                params[n].grad = grads[k][n].to(dtype).clone()
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=1.0)
            norms.append(float(norm))
            lrs.append(sched.get_last_lr()[0])
            for n in shapes:
                tensors[f"{prec}.{n}.step{k + 1}.grad_clipped"] = params[n].grad.clone()
            opt.step()
            sched.step()
            for n in shapes:
                st = opt.state[params[n]]
                tensors[f"{prec}.{n}.step{k + 1}.param"] = params[n].detach().clone()
                tensors[f"{prec}.{n}.step{k + 1}.exp_avg"] = st["exp_avg"].clone()
                tensors[f"{prec}.{n}.step{k + 1}.exp_avg_sq"] = st["exp_avg_sq"].clone()
        tensors[f"{prec}.lr"] = torch.tensor(lrs, dtype=dtype)
        tensors[f"{prec}.clip_norm"] = torch.tensor(norms, dtype=dtype)
    meta = {
        "what": "torch.optim.AdamW replay with HF Trainer param groups, linear warmup/decay "
        "schedule and clip_grad_norm_ before each step",
        "params": {n: list(s) for n, s in shapes.items()},
        "no_decay": sorted(no_decay),
        "hyper": hp,
        "order": "clip_grad_norm_ -> lr = sched.get_last_lr() -> opt.step() -> sched.step()",
        "clip": "coef = min(1, max_norm / (total_norm + 1e-6)); grads *= coef",
        "adamw": "p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g; "
        "p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)",
        "naming": "<p>.step<k>.grad (raw, f32); <prec>.<p>.init; "
        "<prec>.<p>.step<k>.{grad_clipped,param,exp_avg,exp_avg_sq}; <prec>.lr; "
        "<prec>.clip_norm; prec in f32, f64",
    }
    save("adamw.safetensors", tensors, meta)


# ---------------------------------------------------------------- GradScaler


def grad_scaler_fixture():
    cases = {
        "default": dict(
            init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
            found=[0, 0, 1, 0, 2, 1, 0, 0, 0, 1, 0, 0],
        ),
        "interval3": dict(
            init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3,
            found=[0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 2, 0, 0, 0],
        ),
        # The kernel keeps the old scale when growing it would overflow to inf.
        "overflow_guard": dict(
            init_scale=2.0**127, growth_factor=2.0, backoff_factor=0.5, growth_interval=1,
            found=[0, 0, 1, 0, 0],
        ),
    }
    tensors, meta_cases, js = {}, {}, {}
    for name, c in cases.items():
        scaler = torch.amp.GradScaler(
            "cpu",
            init_scale=c["init_scale"],
            growth_factor=c["growth_factor"],
            backoff_factor=c["backoff_factor"],
            growth_interval=c["growth_interval"],
        )
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([p], lr=0.1)
        rows = {k: [] for k in ("scale_before", "scale_after", "growth_tracker_after", "step_taken")}
        for f in c["found"]:
            opt.zero_grad()
            before = p.detach().clone()
            scaler.scale((p * 1.0).sum()).backward()
            rows["scale_before"].append(scaler.get_scale())
            if f == 1:
                p.grad[1] = float("inf")
            elif f == 2:
                p.grad[2] = float("nan")
            scaler.step(opt)
            scaler.update()
            rows["scale_after"].append(scaler.get_scale())
            rows["growth_tracker_after"].append(int(scaler._growth_tracker.item()))
            rows["step_taken"].append(int(not torch.equal(before, p.detach())))
        tensors[f"{name}.found"] = torch.tensor(c["found"], dtype=torch.int32)
        for k in ("scale_before", "scale_after"):
            tensors[f"{name}.{k}"] = torch.tensor(rows[k], dtype=torch.float32)
        for k in ("growth_tracker_after", "step_taken"):
            tensors[f"{name}.{k}"] = torch.tensor(rows[k], dtype=torch.int32)
        params = {k: v for k, v in c.items() if k != "found"}
        meta_cases[name] = params
        js[name] = dict(params, found=c["found"], **rows)
    meta = {
        "what": "torch.amp.GradScaler('cpu') scale()/step()/update() with an inf or NaN "
        "injected into the scaled grads; found: 0 finite, 1 inf, 2 nan",
        "api": "torch.amp.GradScaler('cpu', ...): update() runs torch._amp_update_scale_",
        "cases": meta_cases,
    }
    save("grad_scaler.safetensors", tensors, meta)
    path = os.path.join(ROOT, "grad_scaler.json")
    with open(path, "w") as fh:
        json.dump({"meta": meta, "torch": torch.__version__, "cases": js}, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------- single ops


def ops_fixture():
    from transformers.activations import NewGELUActivation
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    g = torch.Generator().manual_seed(4321)
    f64 = torch.float64

    def rnd(*s):
        return torch.randn(s, generator=g, dtype=f64)

    tensors = {}

    def record(op, fn, inputs, extra=None):
        """Run fn on leaf copies of inputs, store out, dout and d<input> for float inputs."""
        leaves = {}
        for k, v in inputs.items():
            leaves[k] = v.clone().requires_grad_(v.is_floating_point())
        out = fn(**leaves)
        dout = rnd(*out.shape) if out.dim() > 0 else torch.tensor(1.0, dtype=f64)
        (out * dout).sum().backward()
        for k, v in inputs.items():
            tensors[f"{op}.{k}"] = v.to(torch.int32) if not v.is_floating_point() else v
            if v.is_floating_point():
                tensors[f"{op}.d{k}"] = leaves[k].grad
        tensors[f"{op}.out"] = out.detach()
        tensors[f"{op}.dout"] = dout
        for k, v in (extra or {}).items():
            tensors[f"{op}.{k}"] = v

    x = rnd(3, 5, 7)
    record(
        "layer_norm",
        lambda x, weight, bias: F.layer_norm(x, (7,), weight, bias, eps=1e-12),
        {"x": x, "weight": 1 + 0.3 * rnd(7), "bias": 0.3 * rnd(7)},
    )

    # T5LayerNorm casts the variance to float32 even for float64 input (a ~1e-7 floor),
    # so the oracle is the same formula in float64; the HF module is checked against it.
    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    w = 1 + 0.3 * rnd(7)
    ln = T5LayerNorm(7, eps=1e-6).to(f64)
    with torch.no_grad():
        ln.weight.copy_(w)
        hf_out = ln(x)
    assert torch.allclose(hf_out, rms(x, w), rtol=1e-6, atol=1e-6)
    record("t5_layer_norm", rms, {"x": x, "weight": w}, {"out_hf": hf_out})

    xa = rnd(4, 9) * 2
    record("gelu", lambda x: F.gelu(x), {"x": xa})
    gelu_new = NewGELUActivation()
    record("gelu_new", lambda x: gelu_new(x), {"x": xa})
    record("relu", lambda x: F.relu(x), {"x": xa})
    record("softmax", lambda x: torch.softmax(x, dim=-1), {"x": rnd(3, 4, 11) * 3})

    labels = torch.randint(0, 13, (11,), generator=g)
    labels[[2, 7]] = -100
    record(
        "cross_entropy",
        lambda logits, labels: F.cross_entropy(logits, labels, ignore_index=-100),
        {"logits": rnd(11, 13) * 2, "labels": labels},
    )

    ids = torch.tensor([[3, 0, 5, 3, 16], [1, 1, 0, 9, 2]])
    emb_w = rnd(17, 6)
    record("embedding", lambda ids, weight: F.embedding(ids, weight), {"ids": ids, "weight": emb_w})
    # nn.Embedding(padding_idx=0) as BERT/DistilBERT build it: no gradient into row 0.
    record(
        "embedding_pad",
        lambda ids, weight: F.embedding(ids, weight, padding_idx=0),
        {"ids": ids, "weight": emb_w},
    )

    def attention(scale, causal, with_bias):
        def fn(q, k, v, mask, bias=None):
            qh, kh, vh = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # HF layout [B,H,L,D]
            s = (qh * scale) @ kh.transpose(-1, -2)
            if bias is not None:
                s = s + bias.unsqueeze(0)
            keep = mask.bool()[:, None, None, :]
            if causal:
                lq, lk = s.shape[-2], s.shape[-1]
                keep = keep & torch.ones(lq, lk, dtype=torch.bool).tril()
            s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
            return (torch.softmax(s, dim=-1) @ vh).permute(0, 2, 1, 3)

        return fn

    attn_cases = {
        # DistilBERT: q / sqrt(d), key padding mask.
        "attn_scaled_mask": dict(B=2, Lq=7, Lk=7, H=3, D=5, scaled=True, causal=False, bias=False),
        # T5 decoder self-attention: unscaled, relative-position bias, causal.
        "attn_bias_causal": dict(B=2, Lq=6, Lk=6, H=3, D=4, scaled=False, causal=True, bias=True),
        # T5 encoder self-attention: unscaled, bias, key padding mask.
        "attn_bias_mask": dict(B=2, Lq=6, Lk=6, H=3, D=4, scaled=False, causal=False, bias=True),
        # T5 cross attention: Lq != Lk, unscaled, key padding mask, no bias.
        "attn_cross": dict(B=2, Lq=5, Lk=8, H=2, D=6, scaled=False, causal=False, bias=False),
    }
    masks = {
        7: [[1] * 7, [1, 1, 1, 1, 0, 0, 0]],
        6: [[1] * 6, [1, 1, 1, 1, 1, 0]],
        8: [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
    }
    meta_attn = {}
    for name, c in attn_cases.items():
        B, Lq, Lk, H, D = c["B"], c["Lq"], c["Lk"], c["H"], c["D"]
        scale = 1 / math.sqrt(D) if c["scaled"] else 1.0
        mask = torch.tensor(masks[Lk], dtype=torch.int32)
        if c["causal"]:
            mask = torch.ones(B, Lk, dtype=torch.int32)  # decoder self-attn: no padding mask
        inputs = {"q": rnd(B, Lq, H, D), "k": rnd(B, Lk, H, D), "v": rnd(B, Lk, H, D), "mask": mask}
        if c["bias"]:
            inputs["bias"] = rnd(H, Lq, Lk)
        record(name, attention(scale, c["causal"], c["bias"]), inputs)
        meta_attn[name] = dict(c, scale=scale)

    meta = {
        "what": "single-op references in float64: <op>.<input>, <op>.out, <op>.dout, "
        "<op>.d<input> = grad of sum(out * dout)",
        "layer_norm": "F.layer_norm over the last dim, eps 1e-12",
        "t5_layer_norm": "weight * x / sqrt(mean(x^2) + 1e-6) in float64; out_hf is "
        "transformers T5LayerNorm (variance in float32)",
        "gelu": "F.gelu (erf)",
        "gelu_new": "transformers NewGELUActivation (tanh approximation)",
        "softmax": "last dim",
        "cross_entropy": "F.cross_entropy(ignore_index=-100, reduction mean); out is a scalar, "
        "dout = 1",
        "embedding": "F.embedding; embedding_pad uses padding_idx=0 (no grad into row 0)",
        "attention": "q, k, v [B, L, H, D]; mask int32 [B, Lk] 1 = keep; bias [H, Lq, Lk]; "
        "masked scores = finfo.min before softmax; out [B, Lq, H, D]; dbias summed over B",
        "attention_cases": meta_attn,
    }
    save("ops.safetensors", tensors, meta)


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(ROOT, exist_ok=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures_models import models_fixture  # noqa: E402

    jobs = {
        "adamw": adamw_fixture,
        "grad_scaler": grad_scaler_fixture,
        "ops": ops_fixture,
        "models": lambda: models_fixture(save, ROOT),
    }
    for name in sys.argv[1:] or list(jobs):
        jobs[name]()
