#!/usr/bin/env python3
"""Writes tests/fixtures/metrics_reference.json: ROUGE and BLEU values measured with the
real Python packages (rouge-score 0.1.2, nltk's PorterStemmer, sacrebleu 2.x), replayed by
tests/metrics.rs.

    python3 -m venv /work/venv-metrics
    /work/venv-metrics/bin/pip install rouge-score sacrebleu nltk
    /work/venv-metrics/bin/python tools/make_metric_refs.py [ASSETS_DIR]

ASSETS_DIR defaults to ../shared/assets relative to the repository root.
"""
import json
import os
import sys
from importlib.metadata import version

import sacrebleu
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "assets")
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n").split("\n")


ROUGE_PAIRS = [
    ("punctuation", "Hello, world! It's a test -- isn't it?", "hello world its a test isnt it"),
    ("case", "The Cat SAT on THE mat.", "the cat sat on the mat"),
    ("numbers", "In 2019, 3.5 million people moved 12km.", "3 5 million people in 2019 moved 12 km"),
    ("unicode", "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u0130stanbul \u212aelvin \u00c5ngstr\u00f6m \u65e5\u672c",
     "cafe naive resume istanbul kelvin angstrom"),
    ("empty_prediction", "some reference text here", ""),
    ("empty_target", "", "a prediction"),
    ("repeated_words", "the the the cat sat sat", "the cat cat the the sat the"),
    ("multi_sentence", "First sentence here.\nSecond one is longer than the first.\nThird.",
     "Second one is long.\nFirst sentence.\n\nA third thing here."),
    ("multi_sentence_repeats", "the cat\nthe cat the dog\n", "the dog the cat\ncat cat the"),
    ("stemming", "The runners were running quickly through generalizations and relational hopping.",
     "A runner runs quick; generalization relates happily to hoppers."),
    ("stemming2", "Police arrested the suspects after investigations revealed connections.",
     "Police arrests suspect after investigating connected revelations"),
]


def rouge_cases(scorers):
    cases = []
    pairs = list(ROUGE_PAIRS)
    tgt = read_lines(os.path.join(ASSETS, "metrics", "rouge", "target.txt"))
    pred = read_lines(os.path.join(ASSETS, "metrics", "rouge", "prediction.txt"))
    for i, (t, p) in enumerate(zip(tgt, pred)):
        pairs.append((f"asset_pair_{i + 1}", t, p))
    for name, t, p in pairs:
        for stem in (False, True):
            s = scorers[stem].score(t, p)
            cases.append({
                "name": name, "target": t, "prediction": p, "stemmer": stem,
                "scores": {k: [s[k].precision, s[k].recall, s[k].fmeasure] for k in TYPES},
            })
    return cases


def rouge_means(scorers):
    out = []
    tgt = read_lines(os.path.join(ASSETS, "metrics", "rouge", "target.txt"))
    pred = read_lines(os.path.join(ASSETS, "metrics", "rouge", "prediction.txt"))
    targets = tgt + [t for _, t, _ in ROUGE_PAIRS]
    preds = pred + [p for _, _, p in ROUGE_PAIRS]
    for stem in (False, True):
        per = [scorers[stem].score(t, p) for t, p in zip(targets, preds)]
        mean = {}
        for k in TYPES:
            n = len(per)
            mean[k] = [sum(s[k].precision for s in per) / n, sum(s[k].recall for s in per) / n,
                       sum(s[k].fmeasure for s in per) / n]
        out.append({"stemmer": stem, "targets": targets, "predictions": preds, "mean": mean})
    return out


def stem_words():
    stemmer = porter.PorterStemmer()
    words = set()
    texts = []
    for name in ("target.txt", "prediction.txt"):
        with open(os.path.join(ASSETS, "metrics", "rouge", name), encoding="utf-8") as f:
            texts.append(f.read())
    story_dir = os.path.join(ASSETS, "seq2seq", "cnn-stories")
    for name in sorted(os.listdir(story_dir)):
        with open(os.path.join(story_dir, name), encoding="utf-8") as f:
            texts.append(f.read())
    for t in texts:
        words.update(tokenize.tokenize(t, None))
    extra = ("sky skies dying lying tying news innings outings cannings howe proceed exceed "
             "succeed ies ied flies spied tries agreed feed bled motoring sing conflated "
             "troubled sized hopping tanned falling hissing fizzed failing filing happy enjoy "
             "relational conditional rational valenci hesitanci digitizer conformabli "
             "radicalli differentli vileli analogousli vietnamization predication operator "
             "feudalism decisiveness hopefulness callousness formaliti sensitiviti sensibiliti "
             "triplicate formative formalize electriciti electrical hopeful goodness revival "
             "allowance inference airliner gyroscopic adjustable defensible irritant "
             "replacement adjustment dependent adoption homologou communism activate "
             "angulariti homologous effective bowdlerize probate rate cease controll roll "
             "fully logically archaeology yyyy syzygy toy aaa by ivy trees troubles private "
             "oaten orrery generalizations running runners 1990s abc123 3000ing")
    words.update(extra.split())
    return {w: stemmer.stem(w) for w in sorted(words) if len(w) > 3}


def bleu_corpus():
    refs, hyps = [], []
    with open(os.path.join(ASSETS, "seq2seq", "wmt-en-ro", "test.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            ro = json.loads(line)["translation"]["ro"]
            refs.append(ro)
            words = ro.split()
            if i % 4 == 0:
                hyps.append(ro)
            elif i % 4 == 1:
                hyps.append(" ".join(words[: max(1, len(words) * 2 // 3)]))
            elif i % 4 == 2:
                hyps.append(" ".join(w for j, w in enumerate(words) if j % 3 != 1))
            else:
                hyps.append(" ".join(reversed(words)))
    return hyps, refs


HAND_HYPS = [
    "The quick brown fox jumps over the lazy dog.",
    "It costs $1,000.50 -- or 3-4 items (roughly)!",
    "AT&amp;T said &quot;no&quot; &lt;today&gt;",
    "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9 \u00ab quoted \u00bb",
    "",
    "a a a a a a",
    "Numbers: 3.14, 2,718 and 1.5-2.0 .",
]
HAND_REFS = [
    "The quick brown fox jumped over the lazy dog .",
    "It costs $1,000.50 - or 3-4 items (roughly).",
    "AT&T said \"no\" <today>",
    "Caf\u00e9 na\u00efve - r\u00e9sum\u00e9 \u00ab quoted \u00bb",
    "empty hypothesis here",
    "a cat",
    "Numbers: 3.14, 2,718 and 1.5-2.0.",
]
HAND_REFS2 = [
    "A fast brown fox leaps over a lazy dog.",
    "The price is $1,000.50, or 3-4 items roughly.",
    "AT&T said no today",
    "Cafe naive resume",
    "",
    "a a cat",
    "Numbers 3.14 2,718 1.5-2.0",
]


def bleu_dict(b):
    return {"score": b.score, "counts": list(b.counts), "totals": list(b.totals),
            "precisions": list(b.precisions), "bp": b.bp, "sys_len": b.sys_len,
            "ref_len": b.ref_len}


def bleu_cases():
    tok = Tokenizer13a()
    hyps, refs = bleu_corpus()
    corpus = [
        {"name": "wmt_en_ro_test", "hyps": hyps, "refs": [refs],
         "result": bleu_dict(sacrebleu.corpus_bleu(hyps, [refs]))},
        {"name": "hand_single_ref", "hyps": HAND_HYPS, "refs": [HAND_REFS],
         "result": bleu_dict(sacrebleu.corpus_bleu(HAND_HYPS, [HAND_REFS]))},
        {"name": "hand_two_refs", "hyps": HAND_HYPS, "refs": [HAND_REFS, HAND_REFS2],
         "result": bleu_dict(sacrebleu.corpus_bleu(HAND_HYPS, [HAND_REFS, HAND_REFS2]))},
        {"name": "no_overlap", "hyps": ["xyz qqq"], "refs": [["abc def"]],
         "result": bleu_dict(sacrebleu.corpus_bleu(["xyz qqq"], [["abc def"]]))},
        {"name": "only_unigrams_match", "hyps": ["dog cat"], "refs": [["cat dog"]],
         "result": bleu_dict(sacrebleu.corpus_bleu(["dog cat"], [["cat dog"]]))},
    ]
    sentence = []
    for h, r, r2 in zip(HAND_HYPS + hyps[:6], HAND_REFS + refs[:6], HAND_REFS2 + refs[1:7]):
        sentence.append({"hyp": h, "refs": [r], "result": bleu_dict(sacrebleu.sentence_bleu(h, [r]))})
        sentence.append({"hyp": h, "refs": [r, r2],
                         "result": bleu_dict(sacrebleu.sentence_bleu(h, [r, r2]))})
    tokenized = {s: tok(s.rstrip()) for s in HAND_HYPS + HAND_REFS + HAND_REFS2 + refs[:5]}
    return corpus, sentence, tokenized


FUZZ_VOCAB = ("the a an The A running runner runs ran generalization relational hopping "
              "happily sky skies dying news cat cats dog's dogs' 2019 3.5 1,000 3-4 12km "
              "caf\u00e9 na\u00efve \u0130stanbul \u212aelvin \u00fcber \u65e5\u672c \u0915\u0947 "
              "-- ( ) [ ] { } & &amp; &quot; < > , . ! ? ; : ' \" ` ~ @ # $ % ^ * _ + = / \\ | "
              "\u2014 \u2019 \u201c \u201d \u00ab \u00bb \u3002 \u00a0 \t U.S. e.g. x,y a.b "
              "connection connections connected investigations revealed police arrested").split(" ")


def fuzz_texts(rng, n):
    out = []
    for _ in range(n):
        words = [rng.choice(FUZZ_VOCAB) for _ in range(rng.randint(0, 25))]
        text = ""
        for w in words:
            text += w + rng.choice([" ", " ", " ", "", "\n"])
        out.append(text)
    return out


def fuzz_cases(scorers):
    import random
    rng = random.Random(1234)
    tg, pr = fuzz_texts(rng, 150), fuzz_texts(rng, 150)
    # make some pairs overlap heavily
    for i in range(0, 150, 3):
        pr[i] = " ".join(tg[i].split(" ")[: max(1, len(tg[i].split(" ")) - 2)]) + " extra"
    rouge = []
    for t, p in zip(tg, pr):
        for stem in (False, True):
            s = scorers[stem].score(t, p)
            rouge.append({"target": t, "prediction": p, "stemmer": stem,
                          "scores": {k: [s[k].precision, s[k].recall, s[k].fmeasure] for k in TYPES}})
    sent = [{"hyp": p, "refs": [t], "result": bleu_dict(sacrebleu.sentence_bleu(p, [t]))}
            for t, p in zip(tg, pr)]
    hyps = [p.replace("\n", " ") for p in pr]
    refs = [t.replace("\n", " ") for t in tg]
    corpus = {"hyps": hyps, "refs": [refs], "result": bleu_dict(sacrebleu.corpus_bleu(hyps, [refs]))}
    return {"rouge": rouge, "bleu_sentence": sent, "bleu_corpus": corpus}


def main():
    scorers = {s: rouge_scorer.RougeScorer(TYPES, use_stemmer=s) for s in (False, True)}
    corpus, sentence, tokenized = bleu_cases()
    out = {
        "generated_by": "tools/make_metric_refs.py",
        "versions": {p: version(p) for p in ("rouge-score", "nltk", "sacrebleu")},
        "rouge_pairs": rouge_cases(scorers),
        "rouge_means": rouge_means(scorers),
        "porter_stems": stem_words(),
        "bleu_corpus": corpus,
        "bleu_sentence": sentence,
        "tokenize_13a": tokenized,
        "fuzz": fuzz_cases(scorers),
    }
    path = os.path.join(ROOT, "tests", "fixtures", "metrics_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(out['rouge_pairs'])} rouge pairs, {len(out['porter_stems'])} stems, "
          f"{len(corpus)} corpus + {len(sentence)} sentence BLEU cases")


if __name__ == "__main__":
    main()
