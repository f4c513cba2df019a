#!/usr/bin/env bash
# One H200, about 4 minutes: the tokenizer's GPU tests, then compiled vqgan-f16 one after the other: batch 128 with
# the decoder's upsamplers as upsample + 3x3 convolution (as before) and as transposed convolutions (as now,
# profiled), and batch 64 as now.
#   OUT=results bash docs/h200/2026-11-30/upsample/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py > "$OUT/gpu_tests.txt" 2>&1; tail -1 "$OUT/gpu_tests.txt"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --dtype bf16 --compile --json)
show() { python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
python3 -c "
import runpy, sys
import regvq_cli.tokenizer.nets as nets
nets.Upsample.forward = lambda self, x, up=nets.upsample_nearest_2x: self.conv(up(x))  # no global: dynamo guards
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "${B[@]}" --batch-size 128 \
  > "$OUT/tok_b128_upsample_conv.json"; show "$OUT/tok_b128_upsample_conv.json"
python3 "${B[@]}" --batch-size 128 --profile 25 > "$OUT/tok_b128_transposed.json"; show "$OUT/tok_b128_transposed.json"
python3 "${B[@]}" --batch-size 64 > "$OUT/tok_b64_transposed.json"; show "$OUT/tok_b64_transposed.json"
