#!/usr/bin/env python3
"""PyTorch + transformers baseline for fusebox's training benchmarks.

Why: every fusebox figure in benches/RESULTS.md is compared with the same workload run the
way a PyTorch user would run it (HF model classes, torch.optim.AdamW, autocast fp16 +
GradScaler, optionally torch.compile), on the same card in the same session. Models are
random-init configs built locally (no download), inputs are random token ids, so only
speed and memory are measured (the same batch is reused every step, so data loading is
excluded and the loss falls fast as the model memorises it). Each run prints one JSON line; a run that fails (OOM,
compile error) prints a JSON line with "error" instead of stopping the others.

Examples:
    python tools/torch_baseline.py --model distilbert-qa --device cpu --batch 4 --seq 384 \
        --steps 5 --warmup 1
    python tools/torch_baseline.py --model t5-small --device cuda --batch 16 --seq 512 \
        --tgt-seq 128 --suite          # torch-eager-amp then torch-compile-amp
    python tools/torch_baseline.py --model distilbert-qa --device cpu --batch 2 --seq 128 \
        --steps 2 --warmup 1 --profile torch.json   # then: bench ... --compare torch.json
Step = forward + backward + clip_grad_norm_(1.0) + AdamW step (HF Trainer's defaults:
lr 5e-5, wd 0.01, max_grad_norm 1.0). Dropout stays at the configs' default 0.1.

--profile FILE runs --profile-steps more steps under torch.profiler after the timed ones
and adds "categories" (ms per step per category: the categories of fusebox's
src/profile/cost.rs) to the JSON line, which it also writes to FILE for `bench
--compare`. On a card the time is the CUDA kernels' (and memcpys'), mapped by kernel
name; on the CPU the self time of each aten op (and autograd node), mapped by op name;
CATEGORY_PATTERNS below is the one table. Anything under the optimizer's scope (clipping
and AdamW, as fusebox's `adamw` op does both) counts as optimizer. T5's RMSNorm is
plain torch arithmetic in transformers, so torch's side counts it as elementwise.
"""

import argparse
import gc
import json
import platform
import re
import resource
import statistics
import sys
import time

import torch

# (category, pattern): the first pattern found (re.search, lowercase) in an op or kernel
# name gives its category; a name none matches is elementwise. Names are stripped of
# "aten::" and of the autograd node prefix first (so "MmBackward0" is "mmbackward0").
CATEGORY_PATTERNS = [
    ("optimizer", r"optimizer|adam|_foreach_|multi_tensor_apply|clip_grad|fusebox::optimizer"),
    ("loss", r"cross_entropy|nll_?loss|log_?softmax"),
    ("attention", r"scaled_dot_product|flash|fmha|efficient_attention|attention|softmax"),
    ("norm", r"layer_?norm|rms_?norm"),
    ("gemm", r"^(mm|addmm|bmm|baddbmm|matmul|linear|addmv|mv)(backward\d*)?$"
             r"|gemm|cublas|cutlass|xmma|_s1688|_s16816|_h1688|_h16816|^ampere_|^volta_|^turing_"
             r"|^sm\d+_"),
    ("copies", r"^(copy_|_to_copy|to|cat|clone|contiguous|index_select|gather|narrow|t|stack"
               r"|chunk|split|alias|detach_?|item|_local_scalar_dense|lift_fresh|resize_"
               r"|zero_|fill_|set_)$"
               r"|embedding|index|scatter|slice|select|view|reshape|transpose|permute|expand"
               r"|as_strided|squeeze|unsqueeze|^empty|^zeros|^ones|^new_|^full|^tbackward"
               r"|copy|memcpy|memset|catarray|clonebackward"),
]
CATEGORIES = ["gemm", "attention", "norm", "elementwise", "loss", "optimizer", "copies"]


def category(name):
    n = name.lower()
    n = n.split("evaluate_function: ", 1)[-1]
    n = n[len("aten::"):] if n.startswith("aten::") else n
    for cat, pat in CATEGORY_PATTERNS:
        if re.search(pat, n):
            return cat
    return "elementwise"


def profile_categories(prof, device, steps):
    """ms per step per category from a finished torch.profiler run."""
    from torch.autograd import DeviceType

    ms = {c: 0.0 for c in CATEGORIES}
    top = {}
    for e in prof.events():
        if device == "cuda":
            if e.device_type != DeviceType.CUDA:
                continue
            us, cat = e.device_time_total, category(e.name)
        else:
            if e.device_type != DeviceType.CPU:
                continue
            us, cat = e.self_cpu_time_total, category(e.name)
            # Everything under the optimizer's scope is the optimizer's.
            p = e.cpu_parent
            while p is not None and cat != "optimizer":
                if category(p.name) == "optimizer":
                    cat = "optimizer"
                p = p.cpu_parent
        ms[cat] += us / 1e3 / steps
        key = (e.name[:80], cat)
        top[key] = top.get(key, 0.0) + us / 1e3 / steps
    ranked = sorted(top.items(), key=lambda kv: -kv[1])[:20]
    return (
        {c: {"ms_per_step": round(v, 4)} for c, v in ms.items()},
        [{"name": n, "category": c, "ms_per_step": round(v, 4)} for (n, c), v in ranked],
    )


def build(model_name, attn):
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering
    from transformers import T5Config, T5ForConditionalGeneration

    kw = {"attn_implementation": attn} if attn else {}
    if model_name == "distilbert-qa":
        # distilbert-base-uncased sizes.
        cfg = DistilBertConfig(
            vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
            max_position_embeddings=512,
        )
        return DistilBertForQuestionAnswering._from_config(cfg, **kw), cfg
    if model_name == "t5-small":
        cfg = T5Config(
            vocab_size=32128, d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6,
            num_decoder_layers=6, feed_forward_proj="relu", tie_word_embeddings=True,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
        return T5ForConditionalGeneration._from_config(cfg, **kw), cfg
    raise ValueError(f"unknown model {model_name}")


def make_batch(model_name, cfg, b, s, t, device, gen):
    ids = torch.randint(1000, cfg.vocab_size, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    if model_name == "distilbert-qa":
        start = torch.randint(0, s, (b,), generator=gen)
        end = torch.minimum(start + torch.randint(0, 30, (b,), generator=gen), torch.tensor(s - 1))
        batch = dict(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end)
        tokens = b * s
    else:
        labels = torch.randint(2, cfg.vocab_size, (b, t), generator=gen)
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
        tokens = b * (s + t)
    return {k: v.to(device) for k, v in batch.items()}, tokens


def impl_name(device, precision, compiled):
    if device == "cpu":
        return f"torch-cpu-{precision}" + ("-compile" if compiled else "")
    kind = "compile" if compiled else "eager"
    return f"torch-{kind}-{'amp' if precision == 'fp16' else precision}"


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def run(args, precision, compiled):
    device = args.device
    rec = {
        "impl": impl_name(device, precision, compiled),
        "model": args.model,
        "device": None,
        "batch": args.batch,
        "seq": args.seq,
        "tgt_seq": args.tgt_seq if args.model == "t5-small" else None,
        "precision": precision,
        "steps": args.steps,
    }
    model = opt = None
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("cuda requested but torch.cuda.is_available() is false")
        if precision == "fp16" and device != "cuda":
            raise RuntimeError("fp16 autocast + GradScaler is a cuda mode")
        rec["device"] = device_name(device)
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model, cfg = build(args.model, args.attn)
        model.to(device).train()
        rec["attn"] = model.config._attn_implementation
        batch, tokens = make_batch(args.model, cfg, args.batch, args.seq, args.tgt_seq, device, gen)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        fwd = torch.compile(model) if compiled else model

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        def step():
            with torch.autocast(device_type=device, dtype=torch.float16, enabled=scaler is not None):
                loss = fwd(**batch).loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
            # The optimizer's scope for the profile (clip + step, as fusebox's adamw op).
            with torch.profiler.record_function("fusebox::optimizer"):
                if scaler is not None:
                    scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(args.warmup):
            loss = step()
            if i == 0:
                rec["first_loss"] = float(loss.detach())
        sync()
        rec["warmup_s"] = round(time.perf_counter() - t0, 3)
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            loss = step()
            sync()
            if "first_loss" not in rec:
                rec["first_loss"] = float(loss.detach())
            times.append(time.perf_counter() - t0)
        ms = sorted(x * 1e3 for x in times)
        rec["tokens_per_s"] = round(tokens * len(times) / sum(times), 1)
        rec["ms_per_step_median"] = round(statistics.median(ms), 3)
        rec["ms_per_step_p90"] = round(ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))], 3)
        rec["peak_mem_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
        if device == "cpu":
            # Process-wide high-water mark (Linux reports KiB), not per run.
            rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rec["tokens_per_step"] = tokens
        if scaler is not None:
            # Scale < 2^16 means overflowing steps were skipped (cheaper, so faster).
            rec["final_loss_scale"] = scaler.get_scale()
        rec["final_loss"] = float(loss.detach())
        rec["torch"] = torch.__version__
        if args.profile:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if device == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(args.profile_steps):
                    step()
                sync()
            rec["profile_steps"] = args.profile_steps
            rec["profile_source"] = (
                "torch.profiler: CUDA kernel time by kernel name" if device == "cuda"
                else "torch.profiler: self CPU time by aten op name"
            )
            rec["categories"], rec["top_ops"] = profile_categories(prof, device, args.profile_steps)
    except Exception as e:  # noqa: BLE001 - one failed mode must not stop the others
        rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    finally:
        del model, opt
        gc.collect()
        if device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if compiled:
            torch._dynamo.reset()
    print(json.dumps(rec), flush=True)
    if args.profile and "error" not in rec:
        with open(args.profile, "w") as f:
            json.dump(rec, f, indent=1)
            f.write("\n")
    return "error" not in rec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["distilbert-qa", "t5-small"], required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--tgt-seq", type=int, default=128, help="T5 target length")
    p.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument("--suite", action="store_true",
                   help="cuda: eager-amp then compile-amp; cpu: fp32 (ignores --precision/--compile)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers')")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on cpu")
    p.add_argument("--profile", metavar="FILE", default=None,
                   help="profile more steps, map the times onto fusebox's categories, write "
                        "the JSON to FILE (for bench --compare FILE)")
    p.add_argument("--profile-steps", type=int, default=2, help="steps run under --profile")
    args = p.parse_args()
    if args.profile and args.suite:
        p.error("--profile writes one run: use it without --suite")
    if args.profile_steps < 1:
        p.error("--profile-steps must be >= 1")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 1 or args.tgt_seq < 1:
        p.error("steps, batch, seq, tgt-seq must be >= 1 and warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite:
        modes = [("fp16", False), ("fp16", True)] if args.device == "cuda" else [("fp32", False)]
    else:
        prec = args.precision or ("fp16" if args.device == "cuda" else "fp32")
        modes = [(prec, args.compile)]
    ok = [run(args, prec, comp) for prec, comp in modes]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
