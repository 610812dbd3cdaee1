#!/usr/bin/env python3
"""Runs the official SQuAD evaluation scripts on the shared QA assets with generated
predictions and records their exact stdout in tests/fixtures/squad_official_outputs.json,
which tests/metrics.rs and tests/cli_eval.rs replay against fusebox.

The official scripts are not stored in this repository (see README.md here for where to
get them); pass the folder that holds evaluate-v1.1.py and evaluate-v2.0.py:

    python3 tools/squad_eval/make_squad_fixtures.py /path/to/official [ASSETS_DIR]

Only the standard library is needed (evaluate-v2.0.py imports numpy; install it if absent).
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OFFICIAL = sys.argv[1] if len(sys.argv) > 1 else "/tmp/squad_official"
ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "..", "shared", "assets")


def load(rel):
    with open(os.path.join(ASSETS, rel), encoding="utf-8") as f:
        return json.load(f)


def questions(data):
    """(qa dict, context) in file order, for nested or flat files."""
    out = []
    for art in data["data"]:
        if "paragraphs" in art:
            for p in art["paragraphs"]:
                for qa in p["qas"]:
                    out.append(({"id": qa["id"], "answers": [a["text"] for a in qa["answers"]]},
                                p["context"]))
        else:
            out.append(({"id": art["id"], "answers": list(art["answers"]["text"])}, art["context"]))
    return out


def nested_for_official(data, version):
    """The official scripts read `version` (v1.1) and `paragraphs`; give them both without
    touching questions or answers."""
    if all("paragraphs" in a for a in data["data"]):
        arts = data["data"]
    else:
        arts = [{"title": r.get("title", ""), "paragraphs": [{"context": r["context"], "qas": [{
            "id": r["id"], "question": r["question"],
            "answers": [{"text": t, "answer_start": s} for t, s in
                        zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}]}
                for r in data["data"]]
    return {"version": version if version == "1.1" else data.get("version", version), "data": arts}


def pred_mixed(qs, seed):
    preds = {}
    for i, (qa, ctx) in enumerate(qs):
        ans = qa["answers"][0] if qa["answers"] else ""
        k = (i + seed) % 6
        if not qa["answers"]:
            preds[qa["id"]] = "" if i % 2 == 0 else " ".join(ctx.split()[:3])
        elif k == 0:
            preds[qa["id"]] = ans
        elif k == 1:
            preds[qa["id"]] = ans + " and some extra words"
        elif k == 2:
            toks = ans.split()
            preds[qa["id"]] = " ".join(toks[1:]) if len(toks) > 1 else "wrong"
        elif k == 3:
            preds[qa["id"]] = "The " + ans.upper() + "!!"
        elif k == 4:
            preds[qa["id"]] = " ".join(ctx.split()[:4])
        else:
            preds[qa["id"]] = ""
    return preds


def na_probs_text(qs):
    parts = []
    for i, (qa, _) in enumerate(qs):
        if i % 7 == 3:
            v = "1"
        elif i % 7 == 5:
            v = "0"
        else:
            v = repr(((i * 37) % 100) / 100 + i / 3000)
        parts.append(f"{json.dumps(qa['id'])}: {v}")
    # A repeated probability makes ties that only file order breaks.
    return "{" + ", ".join(parts) + "}"


def run(script, data, preds, na_text=None, thresh=None):
    with tempfile.TemporaryDirectory() as d:
        dp, pp = os.path.join(d, "data.json"), os.path.join(d, "pred.json")
        with open(dp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        with open(pp, "w", encoding="utf-8") as f:
            json.dump(preds, f)
        cmd = [sys.executable, os.path.join(OFFICIAL, script), dp, pp]
        if na_text is not None:
            np_ = os.path.join(d, "na.json")
            with open(np_, "w", encoding="utf-8") as f:
                f.write(na_text)
            cmd += ["--na-prob-file", np_]
        if thresh is not None:
            cmd += ["--na-prob-thresh", repr(thresh)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return r.stdout, r.stderr


NORMALIZE_CASES = [
    "The Ångström unit", "a\u0301b the", "théâtre a l'été", "Σίσυφος ΟΔΟΣ the",
    "İstanbul THE", "an_apple a_ the_", "ａ ｔｈｅ fullwidth", "the\u00a0cat a\u2028dog",
    "1st a 2nd an 3rd", "a.b.c", "THE\u2014END", "naïve\u3000the", "the\u1680end",
    "\x1cthe\x1d x", "anthem thea a-an-the", "²the a²", "The Beatles' \"A Hard Day's Night\"",
    "  multiple   spaces\tand\nnewlines  ", "", "!!!", "ⓐ the Ⓐ", "日本の the 東京",
    "केa the", "aक the",
]


def main():
    cases = []

    def add(name, rel, script, preds, na_text=None, thresh=None):
        data = load(rel)
        ver = "1.1" if script == "evaluate-v1.1.py" else "v2.0"
        stdout, stderr = run(script, nested_for_official(data, ver), preds, na_text, thresh)
        cases.append({"name": name, "data": rel, "script": "v1.1" if ver == "1.1" else "v2.0",
                      "predictions": preds, "na_probs_json": na_text, "na_prob_thresh": thresh,
                      "stdout": stdout, "stderr": stderr})

    for rel in ("qa/allennlp-squad-v1.json", "qa/tydiqa-goldp-dev-en.json",
                "qa/tydiqa-goldp-dev-id.json"):
        qs = questions(load(rel))
        base = os.path.basename(rel).replace(".json", "")
        add(f"{base}-correct", rel, "evaluate-v1.1.py", {q["id"]: q["answers"][-1] for q, _ in qs})
        add(f"{base}-mixed", rel, "evaluate-v1.1.py", pred_mixed(qs, 0))
        add(f"{base}-empty", rel, "evaluate-v1.1.py", {q["id"]: "" for q, _ in qs})
        missing = {k: v for i, (k, v) in enumerate(pred_mixed(qs, 1).items()) if i % 3 != 2}
        add(f"{base}-missing", rel, "evaluate-v1.1.py", missing)

    for rel in ("qa/hf-fixture-dev-v2.0.json", "qa/allennlp-squad-v2.json",
                "qa/hf-fixture-sample-flat.json"):
        qs = questions(load(rel))
        base = os.path.basename(rel).replace(".json", "")
        correct = {}
        for q, _ in qs:
            correct[q["id"]] = q["answers"][0] if q["answers"] else ""
        add(f"{base}-correct", rel, "evaluate-v2.0.py", correct)
        add(f"{base}-empty", rel, "evaluate-v2.0.py", {q["id"]: "" for q, _ in qs})
        mixed = pred_mixed(qs, 2)
        add(f"{base}-mixed", rel, "evaluate-v2.0.py", mixed)
        na = na_probs_text(qs)
        add(f"{base}-mixed-naprob", rel, "evaluate-v2.0.py", mixed, na)
        add(f"{base}-mixed-naprob-t0.5", rel, "evaluate-v2.0.py", mixed, na, 0.5)
        add(f"{base}-correct-naprob-t0.3", rel, "evaluate-v2.0.py", correct, na, 0.3)

    import importlib.util
    norm = {}
    mods = {}
    for script in ("evaluate-v1.1.py", "evaluate-v2.0.py"):
        spec = importlib.util.spec_from_file_location("official", os.path.join(OFFICIAL, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        norm[script] = {t: mod.normalize_answer(t) for t in NORMALIZE_CASES}
        mods[script] = mod

    import random
    rng = random.Random(99)
    vocab = ("the a an The A An THE Paris paris 1,000 3.5 U.S. e.g. _x caf\u00e9 "
             "\u0130stanbul \u0915\u0947a \u00fcber - -- ' \" . , ! ? ( ) \u2014 \u00a0 "
             "theater another an_apple \u00bd x y z").split(" ")
    pairs = []
    for _ in range(300):
        def txt():
            return "".join(rng.choice(vocab) + rng.choice([" ", " ", "", "  "])
                           for _ in range(rng.randint(0, 8)))
        pred, gold = txt(), txt()
        if rng.random() < 0.3:
            gold = pred.upper()
        v1, v2 = mods["evaluate-v1.1.py"], mods["evaluate-v2.0.py"]
        pairs.append({"pred": pred, "gold": gold,
                      "v1_exact": bool(v1.exact_match_score(pred, gold)),
                      "v1_f1": float(v1.f1_score(pred, gold)),
                      "v2_exact": int(v2.compute_exact(gold, pred)),
                      "v2_f1": float(v2.compute_f1(gold, pred))})

    out = {"generated_by": "tools/squad_eval/make_squad_fixtures.py",
           "normalize_answer": norm, "score_pairs": pairs,
           "official_scripts": "see tools/squad_eval/README.md",
           "python": sys.version.split()[0], "cases": cases}
    path = os.path.join(ROOT, "tests", "fixtures", "squad_official_outputs.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
