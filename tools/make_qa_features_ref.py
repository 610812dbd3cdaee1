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

import collections

import numpy as np
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


def postprocess_qa_predictions(examples, features, predictions, version_2_with_negative,
                               n_best_size=20, max_answer_length=30,
                               null_score_diff_threshold=0.0):
    """utils_qa.py's postprocess_qa_predictions (transformers examples/pytorch/
    question-answering), minus logging and file output; returns predictions, n-best
    lists and the v2 score differences."""
    all_start_logits, all_end_logits = predictions
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    all_predictions, all_nbest, scores_diff = {}, {}, {}
    for example_index, example_id in enumerate(examples["id"]):
        min_null_prediction = None
        prelim = []
        for fi in features_per_example[example_index]:
            start_logits, end_logits = all_start_logits[fi], all_end_logits[fi]
            offset_mapping = features[fi]["offset_mapping"]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0],
                                       "end_logit": end_logits[0]}
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    if (s >= len(offset_mapping) or e >= len(offset_mapping)
                            or offset_mapping[s] is None or offset_mapping[e] is None):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offset_mapping[s][0], offset_mapping[e][1]),
                                   "score": start_logits[s] + end_logits[e],
                                   "start_logit": start_logits[s], "end_logit": end_logits[e]})
        if version_2_with_negative:
            prelim.append(min_null_prediction)
            null_score = min_null_prediction["score"]
        preds = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and not any(p["offsets"] == (0, 0) for p in preds):
            preds.append(min_null_prediction)
        context = examples["context"][example_index]
        for p in preds:
            o = p.pop("offsets")
            p["text"] = context[o[0]: o[1]]
        if len(preds) == 0 or (len(preds) == 1 and preds[0]["text"] == ""):
            preds.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([p.pop("score") for p in preds])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, p in zip(probs, preds):
            p["probability"] = float(prob)
            p["start_logit"] = float(p["start_logit"])
            p["end_logit"] = float(p["end_logit"])
        if not version_2_with_negative:
            all_predictions[example_id] = preds[0]["text"]
        else:
            i = 0
            while preds[i]["text"] == "":
                i += 1
            best = preds[i]
            diff = null_score - best["start_logit"] - best["end_logit"]
            scores_diff[example_id] = float(diff)
            all_predictions[example_id] = "" if diff > null_score_diff_threshold else best["text"]
        all_nbest[example_id] = preds
    return all_predictions, all_nbest, scores_diff


def postprocess_cases(ex, eval_feats):
    """Random float32 logits for every eval window (a CLS bias for half the examples,
    so v2 answers both ways), and utils_qa's outputs for v1 and v2."""
    rng = np.random.default_rng(7)
    n = len(eval_feats["input_ids"])
    start = (rng.standard_normal((n, MAX_LEN)) * 3).astype(np.float32)
    end = (rng.standard_normal((n, MAX_LEN)) * 3).astype(np.float32)
    # Every window of every other example strongly prefers CLS (a null answer in v2).
    ids = sorted(set(eval_feats["example_id"]))
    for i, eid in enumerate(eval_feats["example_id"]):
        if ids.index(eid) % 2 == 0:
            start[i, 0] += 15.0
            end[i, 0] += 15.0
    feats = [{"example_id": eval_feats["example_id"][i],
              "offset_mapping": eval_feats["offset_mapping"][i]} for i in range(n)]
    out = {"start_logits": start.tolist(), "end_logits": end.tolist()}
    for v2 in (False, True):
        p, nb, d = postprocess_qa_predictions(ex, feats, (start, end), v2)
        out["v2" if v2 else "v1"] = {"predictions": p, "nbest": nb, "null_diff": d}
    return out


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
    out["postprocess"] = postprocess_cases(ex, out["bert-base-cased"]["eval"])
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
