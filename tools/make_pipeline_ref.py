#!/usr/bin/env python3
"""Reference for fusebox's pipeline-style QA decoder (tasks::qa_post::pipeline_decode).

Why: transformers 5.x removed pipeline("question-answering"); 4.57.6 is the last release
with it. This runs that pipeline (install it beside torch, e.g.
`pip install --target /tmp/tf457 --no-deps transformers==4.57.6 "tokenizers<0.23"
"huggingface_hub<1.0" requests urllib3 idna certifi charset_normalizer`, then
`PYTHONPATH=/tmp/tf457 python tools/make_pipeline_ref.py`) with a BertForQuestionAnswering
built from all-MiniLM-L6-v2 (QA head random, scaled so answers are well separated) and
its fast tokenizer, on real SQuAD contexts split into several windows. It records the
per-window logits the pipeline decoded and the answers it returned, so the Rust test feeds
the *same logits* to pipeline_decode: the decoding is compared, not the model.

Writes tests/fixtures/qa_pipeline_hf.json.
"""

import json
import os
import tempfile

import torch
import transformers
from transformers import BertForQuestionAnswering, PreTrainedTokenizerFast, pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.environ.get("FUSEBOX_ASSETS", os.path.join(HERE, "..", "..", "shared", "assets"))
MODEL = os.path.join(ASSETS, "models", "all-minilm-l6-v2")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "qa_pipeline_hf.json")
MAX_SEQ, STRIDE = 96, 32
SETTINGS = [
    {},
    {"top_k": 3, "handle_impossible_answer": True},
    {"top_k": 2, "align_to_words": False, "max_answer_len": 5},
]


def main():
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(MODEL, attn_implementation="eager").eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(40.0)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(MODEL, "tokenizer.json"), cls_token="[CLS]",
        sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        model_max_length=512)
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    pipe = pipeline("question-answering", model=model, tokenizer=tok, device="cpu")
    recorded = {}
    orig = pipe.postprocess

    def spy(model_outputs, **kw):
        recorded["windows"] = [
            {"input_ids": o["input_ids"][0].tolist(),
             "start": o["start"][0].float().tolist(), "end": o["end"][0].float().tolist()}
            for o in model_outputs]
        return orig(model_outputs, **kw)

    pipe.postprocess = spy
    with open(os.path.join(ASSETS, "qa", "hf-fixture-sample-flat.json")) as f:
        rows = json.load(f)["data"]
    picked = [rows[0], rows[5], rows[9]]
    cases = []
    for r in picked:
        for s in SETTINGS:
            ans = pipe(question=r["question"], context=r["context"], max_seq_len=MAX_SEQ,
                       doc_stride=STRIDE, **s)
            ans = ans if isinstance(ans, list) else [ans]
            cases.append({"id": r["id"], "question": r["question"], "context": r["context"],
                          "settings": s, "windows": recorded["windows"], "answers": ans})
    out = {"transformers": transformers.__version__, "max_seq_len": MAX_SEQ,
           "doc_stride": STRIDE, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes;",
          [len(c["windows"]) for c in cases], "windows")


if __name__ == "__main__":
    main()
