#!/usr/bin/env bash
# tools/baselines/real_qa.sh — a real pretrained encoder fine-tuned for extractive QA on real data,
# on whatever device `--device auto` finds: all-MiniLM-L6-v2 (a BERT, 6 layers, 384 wide)
# on TyDi QA GoldP English dev (../shared/assets; 440 questions, one per Wikipedia
# passage), the first 340 questions for training and the last 100 held out. Then the
# held-out predictions through `infer qa --file` and `eval squad`, the official script's
# numbers, as a user would run them.
#
#   bash tools/baselines/real_qa.sh [OUT] [extra train flags...]     (default OUT: out/real-qa)
#
# Why this model and data: they are the real ones available offline here. MiniLM is a
# sentence-embedding model, not a QA model, and 340 questions are few, so the figure is
# a check that fine-tuning a real checkpoint on real text learns, not a SQuAD score.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ASSETS="${FUSEBOX_ASSETS:-$ROOT/../shared/assets}"
OUT="${1:-out/real-qa}"
shift || true
DATA="$ASSETS/qa/tydiqa-goldp-dev-en.json"
MODEL="$ASSETS/models/all-minilm-l6-v2"
for f in "$DATA" "$MODEL/config.json"; do
    [ -e "$f" ] || { echo "real_qa: $f not found (set FUSEBOX_ASSETS)" >&2; exit 2; }
done
mkdir -p "$OUT/data"
OUT="$(cd "$OUT" && pwd)"  # the binaries run from the repository root
python3 - "$DATA" "$OUT/data" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
arts = d["data"]
for name, part in (("train", arts[:340]), ("eval", arts[340:])):
    json.dump({"version": "1.1", "data": part}, open(f"{sys.argv[2]}/{name}.json", "w"))
print(f"real_qa: {sum(len(p['qas']) for a in arts[:340] for p in a['paragraphs'])} train / "
      f"{sum(len(p['qas']) for a in arts[340:] for p in a['paragraphs'])} held-out questions")
PY
cd "$ROOT"
cargo build --release --bins
BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release"
time "$BIN/train" qa --model "$MODEL" --train "$OUT/data/train.json" --eval "$OUT/data/eval.json" \
    --epochs 3 --batch 16 --lr 1e-4 --warmup-ratio 0.1 --out "$OUT/model" "$@"
"$BIN/infer" qa --model "$OUT/model" --file "$OUT/data/eval.json" --out "$OUT/predictions.json"
"$BIN/eval" squad "$OUT/data/eval.json" "$OUT/predictions.json"
