#!/usr/bin/env bash
# On one H200, the int8 decode attention with its int8 query (dp4a key products) and byte-permute value unpacking:
# the GPU tests of the kernel, its time at 512 rows (two rounds) and the guided batch-256 `ar-b` sampler with it.
#   OUT=results bash docs/h200/2026-11-30/int8_dp4a/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
python3 -m pytest -q -m gpu tests/test_priors_ar_static.py -k "int8 or triton" > "$OUT/gpu_tests.txt" 2>&1
tail -3 "$OUT/gpu_tests.txt"
for r in 1 2; do
  python3 benchmarks/bench_attention.py --rows 512 --positions 64 128 256 --only-triton --kv-cache int8 \
    --triton 64:1:2 --json > "$OUT/attention_int8_round$r.json"
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['positions'], round(r['ms'] * 1e3, 1)) for r in d['results']])" \
    "$OUT/attention_int8_round$r.json"
done
python3 benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 256 --compile --cuda-graphs \
  --attention triton --kv-cache int8 --keep --json > "$OUT/sample_ar_b256_int8.json"
python3 -c "
import json, sys
for r in json.load(open(sys.argv[1]))['rows']:
    if 'graph-compile' in r['sampler']: print(r['sampler'], r['cfg'], r['images_per_s'], r.get('ms_per_batch'))
" "$OUT/sample_ar_b256_int8.json"
