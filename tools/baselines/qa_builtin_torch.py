#!/usr/bin/env python3
# The built-in QA task (OUT/data after `train qa --out OUT`) trained the same way in
# PyTorch + transformers: same data, tokenizer, DistilBERT config and recipe (AdamW lr 1e-3,
# wd 0.01, 10% warmup then linear decay, clip 1.0, batch 16). Written to tell whether a
# plateau of the built-in task is ours or the recipe's: on the first design (2-4 people
# per context, the data of commit f7ca493's `train qa`) it reached EM 42.0 after 3 epochs
# where fusebox reached 40.75 (see QA_BUILTIN in src/bin/train/qa.rs).
# Usage: python tools/baselines/qa_builtin_torch.py OUT EPOCHS
# with env LR, LAYERS, HEADS, DIM, INIT, B, WARM to vary the recipe. CPU, one thread.
# One window of up to 192 tokens per question (the generated contexts fit), where `train qa`
# uses 128-token windows with stride 48; EM here is exact string match on the best span.
import json, math, os, random, sys, time

import torch

E = os.environ.get
from transformers import DistilBertConfig, DistilBertForQuestionAnswering, PreTrainedTokenizerFast
torch.set_num_threads(1)
d = sys.argv[1]; epochs = int(sys.argv[2]); L = 192
tok = PreTrainedTokenizerFast(tokenizer_file=d + '/tokenizer.json', pad_token='[PAD]', cls_token='[CLS]', sep_token='[SEP]', unk_token='[UNK]')
def load(f):
    out = []
    for p in json.load(open(f))['data'][0]['paragraphs']:
        for q in p['qas']:
            a = q['answers'][0]; out.append((q['question'], p['context'], a['answer_start'], a['answer_start'] + len(a['text']), a['text']))
    return out
tr, ev = load(d + '/data/train.json'), load(d + '/data/eval.json')
def feats(rows):
    enc = tok([r[0] for r in rows], [r[1] for r in rows], truncation='only_second', max_length=L, padding='longest', return_offsets_mapping=True, return_tensors='pt')
    S, E = [], []
    for i, r in enumerate(rows):
        seq = enc.sequence_ids(i); off = enc['offset_mapping'][i].tolist(); s = e = 0
        for j, (a, b) in enumerate(off):
            if seq[j] != 1: continue
            if a <= r[2] < b: s = j
            if a < r[3] <= b: e = j
        S.append(s); E.append(e)
    return enc, torch.tensor(S), torch.tensor(E)
D=int(E('DIM','128'))
cfg = DistilBertConfig(vocab_size=tok.vocab_size + 10, max_position_embeddings=L, n_layers=int(E('LAYERS','2')), n_heads=int(E('HEADS','8')), dim=D, hidden_dim=4*D, dropout=0.0, attention_dropout=0.0, qa_dropout=0.0, initializer_range=float(E('INIT','0.02')))
torch.manual_seed(0); m = DistilBertForQuestionAnswering(cfg)
opt = torch.optim.AdamW(m.parameters(), lr=float(E('LR','1e-3')), weight_decay=0.01)
B = int(E('B','16')); steps = epochs * math.ceil(len(tr) / B); warm = int(float(E('WARM','0.1')) * steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warm) if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
t0 = time.time(); step = 0
for ep in range(epochs):
    idx = list(range(len(tr))); random.Random(ep).shuffle(idx)
    m.train()
    for k in range(0, len(idx), B):
        rows = [tr[i] for i in idx[k:k + B]]; enc, S, E = feats(rows)
        out = m(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'], start_positions=S, end_positions=E)
        out.loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad(); step += 1
        if step % 100 == 0: print(step, round(out.loss.item(), 3), round(time.time() - t0), flush=True)
    m.eval(); ok = 0
    with torch.no_grad():
        for k in range(0, len(ev), 64):
            rows = ev[k:k + 64]; enc, S, E = feats(rows)
            o = m(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'])
            for i, r in enumerate(rows):
                seq = enc.sequence_ids(i); off = enc['offset_mapping'][i].tolist()
                sl = o.start_logits[i].clone(); el = o.end_logits[i].clone()
                mask = torch.tensor([s != 1 for s in seq]); sl[mask] = -1e9; el[mask] = -1e9
                best = None
                for a in sl.topk(20).indices.tolist():
                    for b in el.topk(20).indices.tolist():
                        if a <= b <= a + 15 and (best is None or sl[a] + el[b] > best[0]): best = (sl[a] + el[b], a, b)
                pred = r[1][off[best[1]][0]:off[best[2]][1]] if best else ''
                ok += pred == r[4]
    print('epoch', ep + 1, 'EM', 100 * ok / len(ev), 'time', round(time.time() - t0), flush=True)
