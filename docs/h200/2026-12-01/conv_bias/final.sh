#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:  OUT=results bash docs/h200/2026-12-01/conv_bias/final.sh
# The final code (folded biases, the norms' sums reused): the JPEG and encode GPU tests, then benchmarks/scaling.sh's
# encode of 100,000 JPEGs on one GPU (nvjpeg + device resize, 8 workers), timed whole by the shell too.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
python3 -m pytest -q -m gpu tests/test_jpeg_gpu_path.py tests/test_encode_decode.py -p no:warnings --tb=short 2>&1 \
  | grep -v DEBUG | tail -8 | tee "$OUT/gpu_tests.txt"
GPUS=1 NPS=1 PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT/scaling" WORK=/tmp/regvq-scaling \
  ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh > "$OUT/scaling.log" 2>&1
grep '^encode' "$OUT/scaling.log" || tail -20 "$OUT/scaling.log"
python3 -c "import json; d = json.load(open('$OUT/scaling/encode_np1.json')); print(d['images_per_s'], d['seconds'], d['timings'])"
