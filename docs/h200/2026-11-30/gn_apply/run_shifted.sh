#!/usr/bin/env bash
# One H200, about 5 minutes: the GPU tests of the tokenizer's GroupNorm, then compiled vqgan-f16 one after the
# other: batch 128 with inference's channel statistics from torch.var_mean (as before) and from shifted sums (as
# now, profiled), and batch 64 as now.
#   OUT=results bash docs/h200/2026-11-30/gn_apply/run_shifted.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py tests/test_image_conv.py > "$OUT/gpu_tests_3.txt" 2>&1
tail -1 "$OUT/gpu_tests_3.txt"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --dtype bf16 --compile --json)
show() { python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
python3 -c "
import runpy, sys, torch
import regvq_cli.tokenizer.nets as nets
nets.channel_var_mean = lambda x: torch.var_mean(x.float(), dim=(2, 3), correction=0)
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "${B[@]}" --batch-size 128 \
  > "$OUT/tok_b128_var_mean.json"; show "$OUT/tok_b128_var_mean.json"
python3 "${B[@]}" --batch-size 128 --profile 25 > "$OUT/tok_b128_shifted.json"; show "$OUT/tok_b128_shifted.json"
python3 "${B[@]}" --batch-size 64 > "$OUT/tok_b64_shifted.json"; show "$OUT/tok_b64_shifted.json"
