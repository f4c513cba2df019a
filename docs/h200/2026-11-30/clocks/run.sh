#!/usr/bin/env bash
# One H200 start: compiled vqgan-f16 at batch 128, three processes one after the other, each row carrying the GPU's
# clocks, power and throttle reasons read while that operation keeps the GPU busy; then the GPU tests named as
# arguments.
#   OUT=results bash docs/h200/2026-11-30/clocks/run.sh tests/test_runtime.py ...
set -uo pipefail
export PYTHONPATH="$PWD"
nvidia-smi -q -d CLOCK,POWER,TEMPERATURE,PERFORMANCE > "$OUT/nvidia_smi_idle.txt" 2>&1
for i in 1 2 3; do
  python3 benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json \
    > "$OUT/tok_b128_$i.json"
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s'], r.get('gpu_state')) for r in d['rows']])" "$OUT/tok_b128_$i.json"
done
[ $# -gt 0 ] && python3 -m pytest -q -m gpu "$@" 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
