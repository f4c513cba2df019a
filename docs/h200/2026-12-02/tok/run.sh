#!/usr/bin/env bash
# One H200, about 7 minutes: the compiled-training GPU test (its losses now checked to be computed), then the paper
# preset's tokenizer compiled at batch 128, twice, with the clocks and power nvidia-smi reads while it runs.
#   OUT=results bash docs/h200/2026-12-02/tok/run.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD; unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
timeout 300 python3 -m pytest -q -m gpu tests/test_train_speed_options.py -p no:warnings --tb=short \
  > "$OUT/gpu_train_speed.txt" 2>&1
grep -v DEBUG "$OUT/gpu_train_speed.txt" | tail -3
for i in 1 2; do
  timeout 200 python3 benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json \
    > "$OUT/tok_b128_$i.json" 2> "$OUT/tok_b128_$i.err"
  python3 - "$OUT/tok_b128_$i.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(sys.argv[1].rsplit("/", 1)[-1], r)
PY
done
