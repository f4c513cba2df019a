#!/usr/bin/env bash
# One H200, about 3 minutes, carrying .carry/inc16 (the TF-FID Inception file with its weights rounded to fp16, 44
# MB: the whole file does not fit one call; every comparison below is between forms of the same weights):
#   OUT=results bash docs/h200/2026-12-02/inception/fixed.sh
# The pools' gradients by layout, the GPU tests of the loss copy (with its average pool that takes NCHW maps where a
# gradient is wanted), and the gradients of the whole copy against the fp32 network again.
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD REGVQ_INCEPTION_WEIGHTS=$PWD/.carry/inc16/default_1_fp16.pt
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
timeout 40 python3 docs/h200/2026-12-02/inception/pools.py > "$OUT/pools_by_layout.txt" 2>&1
tail -9 "$OUT/pools_by_layout.txt"
timeout 150 python3 -m pytest -q -m gpu tests/test_train_speed_options.py -p no:warnings --tb=short \
  -k "average_pool or within_a_few_percent or feature_network" > "$OUT/gpu_tests.txt" 2>&1
grep -v DEBUG "$OUT/gpu_tests.txt" | tail -8
timeout 40 python3 docs/h200/2026-12-02/inception/where.py --size 256 > "$OUT/where_fixed.txt" 2>&1
grep "bf16 copy  \|fp32 copy\|NCHW\|cpu   bf16 copy  " "$OUT/where_fixed.txt"
timeout 40 python3 docs/h200/2026-12-02/inception/cos.py --device cuda --size 256 | tee "$OUT/cos_fixed.txt"
