#!/usr/bin/env python3
"""Prove that a checkpoint fusebox wrote loads back in Hugging Face transformers.

    python tools/check_hf_load.py qa  OUT_DIR QUESTION CONTEXT   # train qa output
    python tools/check_hf_load.py t5  OUT_DIR SOURCE_TEXT        # train summarize/translate output
    python tools/check_hf_load.py bart OUT_DIR SOURCE_TEXT       # a BART or Marian checkpoint
    python tools/check_hf_load.py bart OUT_DIR --ids 0,38,15,2   # ... without tokenizer files
    (bart: --own-config generates as the checkpoint's generation_config.json says;
     --plain is greedy with every logits processor off)

Loads OUT_DIR with AutoTokenizer + DistilBertForQuestionAnswering/BertForQuestionAnswering
or T5ForConditionalGeneration / BartForConditionalGeneration / MarianMTModel (by
config.json's model_type), runs it, and prints one JSON line: the answer span (QA) or the
generation (num_beams 1 and max_new_tokens 24 over the checkpoint's generation config;
bart --own-config: `generate()` with no arguments; bart --plain: greedy with no forced,
banned or repeated-n-gram rules), so it can be compared with `infer qa --json` /
`infer generate --json` on the same checkpoint. Needs torch + transformers (not CI).
"""
import json
import sys

import torch
from transformers import AutoConfig, AutoTokenizer


def qa(out, question, context):
    from transformers import AutoModelForQuestionAnswering

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    enc = tok(question, context, return_tensors="pt", truncation="only_second", max_length=min(384, tok.model_max_length),
              return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")[0]
    seq_ids = enc.sequence_ids(0)
    with torch.no_grad():
        out_ = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    s, e = out_.start_logits[0], out_.end_logits[0]
    best, span = -1e9, (0, 0)
    ctx = [i for i, sid in enumerate(seq_ids) if sid == 1]
    for i in ctx:
        for j in ctx:
            if i <= j < i + 15 and s[i] + e[j] > best:
                best, span = float(s[i] + e[j]), (i, j)
    a, b = int(offsets[span[0]][0]), int(offsets[span[1]][1])
    print(json.dumps({"class": type(model).__name__, "answer": context[a:b], "start": a, "end": b}))


def t5(out, text):
    from transformers import T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(out)
    model = T5ForConditionalGeneration.from_pretrained(out).eval()
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=24, num_beams=1, do_sample=False)
    print(json.dumps({"class": type(model).__name__, "tokens": gen[0].tolist(),
                      "text": tok.decode(gen[0], skip_special_tokens=True)}))


PLAIN = dict(length_penalty=1.0, early_stopping=False, no_repeat_ngram_size=0, min_length=0,
             forced_bos_token_id=None, forced_eos_token_id=None, bad_words_ids=None,
             renormalize_logits=False)


def bart(out, text=None, ids=None, mode="greedy"):
    from transformers import BartForConditionalGeneration, MarianMTModel

    cls = {"bart": BartForConditionalGeneration, "marian": MarianMTModel}[
        AutoConfig.from_pretrained(out).model_type]
    model = cls.from_pretrained(out).eval()
    tok = None
    if ids is None:
        tok = AutoTokenizer.from_pretrained(out)
        ids = tok(text, return_tensors="pt").input_ids
    else:
        ids = torch.tensor([ids])
    gen = {} if mode == "own" else dict(max_new_tokens=24, num_beams=1, do_sample=False)
    if mode == "plain":
        gen.update(PLAIN)
    with torch.no_grad():
        out_ = model.generate(ids, attention_mask=torch.ones_like(ids), **gen)
    line = {"class": type(model).__name__, "tokens": out_[0].tolist()}
    if tok is not None:
        line["text"] = tok.decode(out_[0], skip_special_tokens=True)
    print(json.dumps(line))


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "qa":
        qa(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) >= 4 and sys.argv[1] == "t5":
        t5(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "bart":
        flags = {"--own-config": "own", "--plain": "plain"}
        rest = [a for a in sys.argv[3:] if a not in flags]
        mode = next((flags[a] for a in sys.argv[3:] if a in flags), "greedy")
        if rest and rest[0] == "--ids" and len(rest) == 2:
            bart(sys.argv[2], ids=[int(x) for x in rest[1].split(",")], mode=mode)
        elif len(rest) == 1:
            bart(sys.argv[2], text=rest[0], mode=mode)
        else:
            print(__doc__)
            sys.exit(2)
    else:
        print(__doc__)
        sys.exit(2)
