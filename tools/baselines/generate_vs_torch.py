#!/usr/bin/env python3
"""fusebox `infer generate` against transformers' generate() on the CPU, same inputs.

A random-weight t5-small (its public configuration; initializer_factor 1.5, so that
the generated tokens vary instead of repeating one) is saved with the T5 tokenizer from
the shared assets. The first N CNN stories (article text, "summarize: " prefix) are
generated one at a time, as the summarization pipeline does, with exactly
--max-new-tokens tokens each (min_new_tokens equal, so both do the same work), greedy
and with beams. Printed per setting: transformers' time over its generate() calls (model
loading excluded), fusebox's wall time for the whole `infer generate --file` process
(model loading included), and how many inputs gave the same tokens.

    python tools/baselines/generate_vs_torch.py --infer target/release/infer [--inputs 4]

Needs torch and transformers (tools/ only; CI does not run this).
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

ASSETS = os.environ.get(
    "FUSEBOX_ASSETS", os.path.join(os.path.dirname(__file__), "../../../shared/assets")
)


def stories(n):
    d = os.path.join(ASSETS, "seq2seq", "cnn-stories")
    out = []
    for f in sorted(os.listdir(d))[:n]:
        text = open(os.path.join(d, f)).read().split("@highlight")[0]
        out.append(" ".join(text.split()))
    return out


def make_model(dir_):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                   num_heads=8, initializer_factor=1.5, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(dir_)
    tok = os.path.join(ASSETS, "tokenizers", "t5-small")
    for f in os.listdir(tok):
        shutil.copy(os.path.join(tok, f), dir_)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--infer", required=True, help="fusebox's infer binary")
    p.add_argument("--inputs", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--beams", default="1,4", help="comma-separated num_beams values")
    p.add_argument("--no-repeat-ngram-size", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = stories(args.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "t5-random")
        make_model(model_dir)
        inputs = os.path.join(tmp, "inputs.txt")
        with open(inputs, "w") as f:
            f.write("\n".join(texts) + "\n")
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
        n = args.max_new_tokens
        for nb in (int(b) for b in args.beams.split(",")):
            settings = dict(max_new_tokens=n, min_new_tokens=n, num_beams=nb,
                            no_repeat_ngram_size=args.no_repeat_ngram_size)
            t0 = time.perf_counter()
            theirs = []
            with torch.inference_mode():
                for t in texts:
                    enc = tok("summarize: " + t, return_tensors="pt", truncation=True,
                              max_length=512)
                    theirs.append(model.generate(**enc, **settings)[0].tolist()[1:])
            t_hf = time.perf_counter() - t0
            cmd = [args.infer, "generate", "--model", model_dir, "--file", inputs,
                   "--prefix", "summarize: ", "--max-new-tokens", str(n),
                   "--min-new-tokens", str(n), "--num-beams", str(nb),
                   "--no-repeat-ngram-size", str(args.no_repeat_ngram_size),
                   "--device", "cpu", "--json"]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            t_fb = time.perf_counter() - t0
            ours = [json.loads(line)["tokens"] for line in out.splitlines() if line.strip()]
            strip = lambda s: [x for x in s if x != 0]  # padding
            same = sum(strip(a) == strip(b) for a, b in zip(theirs, ours))
            print(json.dumps({"num_beams": nb, "inputs": len(texts), "new_tokens": n,
                              "transformers_s": round(t_hf, 2),
                              "fusebox_s_with_load": round(t_fb, 2),
                              "speedup": round(t_hf / t_fb, 2),
                              "same_tokens": f"{same}/{len(texts)}",
                              "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
