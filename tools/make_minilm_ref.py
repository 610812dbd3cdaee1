#!/usr/bin/env python3
"""Reference hidden states of a real pretrained BERT encoder for tests/qa_parity.rs.

Why: the tiny random fixtures check every op against transformers, but not a real
checkpoint's scale (pretrained LayerNorm gains, real attention patterns, padding).
This runs transformers' BertModel on sentence-transformers/all-MiniLM-L6-v2 (from
/work/shared/assets) for 3 real sentences, padded to one length as a batch, in float32
on the CPU with eager attention, and saves the inputs and `last_hidden_state` as
tests/fixtures/minilm_hidden.safetensors (metadata under one key, for reproducible bytes).

    python tools/make_minilm_ref.py
"""

import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import BertModel, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.environ.get("FUSEBOX_ASSETS", os.path.join(HERE, "..", "..", "shared", "assets"))
MODEL = os.path.join(ASSETS, "models", "all-minilm-l6-v2")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "minilm_hidden.safetensors")

SENTENCES = [
    "The Normans gave their name to Normandy, a region in France.",
    "Hello, my dog is cute",
    "In what country is Normandy located?",
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(MODEL, "tokenizer.json"),
                                  pad_token="[PAD]")
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    enc = tok(SENTENCES, padding=True, return_tensors="pt", return_token_type_ids=True)
    model = BertModel.from_pretrained(MODEL, attn_implementation="eager").eval()
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=enc["token_type_ids"]).last_hidden_state
    tensors = {
        "input_ids": enc["input_ids"].to(torch.int32).contiguous(),
        "attention_mask": enc["attention_mask"].to(torch.int32).contiguous(),
        "token_type_ids": enc["token_type_ids"].to(torch.int32).contiguous(),
        "last_hidden_state": h.float().contiguous(),
    }
    meta = {"sentences": SENTENCES, "torch": torch.__version__,
            "transformers": transformers.__version__, "model": "all-MiniLM-L6-v2 (BertModel)"}
    save_file(tensors, OUT, metadata={"fixture": json.dumps(meta, sort_keys=True)})
    size = os.path.getsize(OUT)
    assert size < 2 * 1024 * 1024, size
    print(f"wrote {OUT} ({size} bytes), hidden {tuple(h.shape)}")


if __name__ == "__main__":
    main()
