#!/usr/bin/env python3
# The run of tools/baselines/real_qa.sh in PyTorch + transformers, to tell whether its EM/F1 is the
# engine's or the recipe's: the same checkpoint (all-MiniLM-L6-v2 with a fresh QA head),
# the same split (OUT/data/{train,eval}.json written by real_qa.sh), the same recipe
# (windows of 384 tokens, stride 128; AdamW lr 1e-4, weight decay 0.01 off biases and
# LayerNorm weights, 10 % linear warmup then linear decay, clip 1.0, batch 16, 3 epochs,
# dropout on) and run_qa.py's pre- and post-processing (n-best 20, answers up to 30
# tokens), scored with the official SQuAD v1.1 EM/F1.
#
#   python tools/baselines/real_qa_torch.py OUT MODEL_DIR [EPOCHS] [SEED]
#
# CPU. Prints one JSON line per epoch and the final one last.
import collections
import json
import math
import random
import re
import string
import sys
import time

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

out, model_dir = sys.argv[1], sys.argv[2]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 42
MAX_LEN, STRIDE, BATCH, LR, WD, WARM = 384, 128, 16, 1e-4, 0.01, 0.1
random.seed(seed)
torch.manual_seed(seed)


def load(path):
    rows = []
    for art in json.load(open(path))["data"]:
        for p in art["paragraphs"]:
            for q in p["qas"]:
                rows.append((q["id"], q["question"].lstrip(), p["context"], q["answers"]))
    return rows


tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
train, dev = load(f"{out}/data/train.json"), load(f"{out}/data/eval.json")


def encode(rows):
    return tok([r[1] for r in rows], [r[2] for r in rows], truncation="only_second",
               max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True,
               return_offsets_mapping=True, padding="max_length")


def train_features(rows):
    # run_qa.py's prepare_train_features: a window without the answer points at [CLS].
    enc = encode(rows)
    feats = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = rows[enc["overflow_to_sample_mapping"][i]]
        cls = enc["input_ids"][i].index(tok.cls_token_id)
        seq = enc.sequence_ids(i)
        s = e = cls
        if ex[3]:
            a0 = ex[3][0]["answer_start"]
            a1 = a0 + len(ex[3][0]["text"])
            ts = 0
            while seq[ts] != 1:
                ts += 1
            te = len(enc["input_ids"][i]) - 1
            while seq[te] != 1:
                te -= 1
            if offsets[ts][0] <= a0 and offsets[te][1] >= a1:
                while ts < len(offsets) and offsets[ts][0] <= a0:
                    ts += 1
                s = ts - 1
                while offsets[te][1] >= a1:
                    te -= 1
                e = te + 1
        feats.append((enc["input_ids"][i], enc["token_type_ids"][i], enc["attention_mask"][i], s, e))
    return feats


def predict(rows):
    # run_qa.py's prepare_validation_features + postprocess_qa_predictions (v1.1).
    enc = encode(rows)
    model.eval()
    starts, ends = [], []
    with torch.no_grad():
        for b in range(0, len(enc["input_ids"]), 32):
            sl = slice(b, b + 32)
            o = model(input_ids=torch.tensor(enc["input_ids"][sl]),
                      token_type_ids=torch.tensor(enc["token_type_ids"][sl]),
                      attention_mask=torch.tensor(enc["attention_mask"][sl]))
            starts += o.start_logits.tolist()
            ends += o.end_logits.tolist()
    model.train()
    by_ex = collections.defaultdict(list)
    for i, k in enumerate(enc["overflow_to_sample_mapping"]):
        by_ex[k].append(i)
    preds = {}
    for k, ex in enumerate(rows):
        best = None
        for i in by_ex[k]:
            seq = enc.sequence_ids(i)
            offs = [o if seq[j] == 1 else None for j, o in enumerate(enc["offset_mapping"][i])]
            si = sorted(range(len(starts[i])), key=lambda j: -starts[i][j])[:20]
            ei = sorted(range(len(ends[i])), key=lambda j: -ends[i][j])[:20]
            for s in si:
                for e in ei:
                    if offs[s] is None or offs[e] is None or e < s or e - s + 1 > 30:
                        continue
                    sc = starts[i][s] + ends[i][e]
                    if best is None or sc > best[0]:
                        best = (sc, ex[2][offs[s][0]:offs[e][1]])
        preds[ex[0]] = best[1] if best else ""
    return preds


def normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred, gold):
    p, g = normalize(pred).split(), normalize(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    pr, rc = same / len(p), same / len(g)
    return 2 * pr * rc / (pr + rc)


def score(rows, preds):
    em = f = 0.0
    for qid, _, _, answers in rows:
        golds = [a["text"] for a in answers]
        em += max(float(normalize(preds[qid]) == normalize(g)) for g in golds)
        f += max(f1(preds[qid], g) for g in golds)
    return {"exact_match": 100 * em / len(rows), "f1": 100 * f / len(rows)}


feats = train_features(train)
steps = math.ceil(len(feats) / BATCH) * epochs
warm = math.ceil(WARM * steps)
no_decay = ["bias", "LayerNorm.weight"]
groups = [
    {"params": [p for n, p in model.named_parameters() if not any(x in n for x in no_decay)], "weight_decay": WD},
    {"params": [p for n, p in model.named_parameters() if any(x in n for x in no_decay)], "weight_decay": 0.0},
]
opt = torch.optim.AdamW(groups, lr=LR)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: s / max(1, warm) if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
print(json.dumps({"train_windows": len(feats), "steps": steps, "untrained": score(dev, predict(dev))}), flush=True)
t0 = time.time()
model.train()
for ep in range(epochs):
    random.shuffle(feats)
    for b in range(0, len(feats), BATCH):
        chunk = feats[b:b + BATCH]
        cols = list(zip(*chunk))
        o = model(input_ids=torch.tensor(cols[0]), token_type_ids=torch.tensor(cols[1]),
                  attention_mask=torch.tensor(cols[2]), start_positions=torch.tensor(cols[3]),
                  end_positions=torch.tensor(cols[4]))
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    print(json.dumps({"epoch": ep + 1, "loss": o.loss.item(), "eval": score(dev, predict(dev)),
                      "train_seconds": time.time() - t0}), flush=True)
