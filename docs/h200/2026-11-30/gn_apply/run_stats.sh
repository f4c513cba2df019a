#!/usr/bin/env bash
# One H200, about 4 minutes: the GPU tests of the image convolution (its compiled output no longer filled with NaN
# first) and of GroupNorm's scale/shift kernel; the statistics pass three ways (probe_gn_stats.py); compiled
# vqgan-f16 at batch 128 as the package runs now, profiled.
#   OUT=results bash docs/h200/2026-11-30/gn_apply/run_stats.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py tests/test_image_conv.py > "$OUT/gpu_tests_2.txt" 2>&1
tail -1 "$OUT/gpu_tests_2.txt"
python3 docs/h200/2026-11-30/gn_apply/probe_gn_stats.py 2>&1 | grep -v Warn
python3 benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json \
  --profile 25 > "$OUT/tok_b128_empty_strided.json"
python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print([(r['op'], r['images_per_s']) for r in d['rows']])" "$OUT/tok_b128_empty_strided.json"
