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
Step = forward + backward + clip_grad_norm_(1.0) + AdamW step (HF Trainer's defaults:
lr 5e-5, wd 0.01, max_grad_norm 1.0). Dropout stays at the configs' default 0.1.
"""

import argparse
import gc
import json
import platform
import resource
import statistics
import sys
import time

import torch


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
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
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
    args = p.parse_args()
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
