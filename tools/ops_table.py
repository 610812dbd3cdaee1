#!/usr/bin/env python3
"""Print the per-op table of one `bench --json` line read from stdin (used by gpu_session.sh)."""
import json
import sys

try:
    r = json.loads(sys.stdin.read())
except Exception as e:  # a failed bench leaves no JSON line
    print("no bench JSON:", e)
    sys.exit(0)
ops = r.get("ops", [])
tot = sum(o["ms"] for o in ops) or 1.0
print(f"{r.get('model', '?')}: {r.get('ms_per_step_median', 0):.2f} ms/step, {r.get('tokens_per_s', 0):.0f} tokens/s")
for o in ops[:25]:
    print(f"{o['op']:<24} {o['calls']:>6} {o['ms']:>10.2f} ms {100 * o['ms'] / tot:5.1f}%")
