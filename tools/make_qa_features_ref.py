#!/usr/bin/env python3
"""Reference QA features from transformers, for tests/qa_features.rs.

Why: fusebox's src/tasks/qa.rs claims to build features exactly as HF's run_qa.py
(prepare_train_features / prepare_validation_features). This script runs that code's
logic (copied from examples/pytorch/question-answering/run_qa.py, pad_on_right) with
transformers' fast tokenizers on the real SQuAD sample in /work/shared/assets and saves
the result as JSON, so the Rust test compares against HF without Python in CI.

    python tools/make_qa_features_ref.py   # writes tests/fixtures/qa_features_hf.json
"""

import json
import os

import transformers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.environ.get("FUSEBOX_ASSETS", os.path.join(HERE, "..", "..", "shared", "assets"))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "qa_features_hf.json")
MAX_LEN, STRIDE = 128, 32


def examples():
    with open(os.path.join(ASSETS, "qa", "hf-fixture-sample-flat.json")) as f:
        rows = json.load(f)["data"]
    ex = {"id": [], "question": [], "context": [], "answers": []}
    for r in rows:
        for k in ex:
            ex[k].append(r[k])
    # One unanswerable (SQuAD v2 style) copy of the first long example.
    i = max(range(len(rows)), key=lambda j: len(rows[j]["context"]))
    ex["id"].append("unanswerable")
    ex["question"].append("  " + rows[i]["question"])  # leading spaces: run_qa lstrips
    ex["context"].append(rows[i]["context"])
    ex["answers"].append({"text": [], "answer_start": []})
    return ex


def train_features(tok, examples):
    examples = dict(examples)
    examples["question"] = [q.lstrip() for q in examples["question"]]
    t = tok(examples["question"], examples["context"], truncation="only_second",
            max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True,
            return_offsets_mapping=True, padding="max_length",
            return_token_type_ids=True)
    sample_mapping = t.pop("overflow_to_sample_mapping")
    offset_mapping = t.pop("offset_mapping")
    t["start_positions"], t["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = t["input_ids"][i]
        cls_index = input_ids.index(tok.cls_token_id) if tok.cls_token_id in input_ids else 0
        sequence_ids = t.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            t["start_positions"].append(cls_index)
            t["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        ts = 0
        while sequence_ids[ts] != 1:
            ts += 1
        te = len(input_ids) - 1
        while sequence_ids[te] != 1:
            te -= 1
        if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
            t["start_positions"].append(cls_index)
            t["end_positions"].append(cls_index)
        else:
            while ts < len(offsets) and offsets[ts][0] <= start_char:
                ts += 1
            t["start_positions"].append(ts - 1)
            while offsets[te][1] >= end_char:
                te -= 1
            t["end_positions"].append(te + 1)
    t["example_index"] = list(sample_mapping)
    return {k: list(v) for k, v in t.items()}


def eval_features(tok, examples):
    examples = dict(examples)
    examples["question"] = [q.lstrip() for q in examples["question"]]
    t = tok(examples["question"], examples["context"], truncation="only_second",
            max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True,
            return_offsets_mapping=True, padding="max_length",
            return_token_type_ids=True)
    sample_mapping = t.pop("overflow_to_sample_mapping")
    t["example_id"] = []
    for i in range(len(t["input_ids"])):
        seq = t.sequence_ids(i)
        t["example_id"].append(examples["id"][sample_mapping[i]])
        t["offset_mapping"][i] = [list(o) if seq[k] == 1 else None
                                  for k, o in enumerate(t["offset_mapping"][i])]
    return {"example_id": t["example_id"], "offset_mapping": list(t["offset_mapping"]),
            "input_ids": list(t["input_ids"])}


def main():
    ex = examples()
    cased = BertTokenizerFast(
        vocab=os.path.join(ASSETS, "tokenizers", "bert-base-cased", "vocab.txt"),
        do_lower_case=False)
    minilm = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(ASSETS, "models", "all-minilm-l6-v2", "tokenizer.json"),
        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    out = {"transformers": transformers.__version__, "max_length": MAX_LEN, "stride": STRIDE,
           "examples": ex}
    for name, tok in (("bert-base-cased", cased), ("all-minilm-l6-v2", minilm)):
        out[name] = {"train": train_features(tok, ex), "eval": eval_features(tok, ex)}
        print(name, len(out[name]["train"]["input_ids"]), "windows")
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
