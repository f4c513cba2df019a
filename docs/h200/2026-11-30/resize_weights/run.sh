#!/usr/bin/env bash
# One H200 (16 CPU cores), about 8 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/resize_weights/run.sh
# The nvjpeg + device-resize encode of 20,000 JPEGs (default tokenizer, batch 128, 8 workers) with resize_batch
# as it was and as it is, alternating, three rounds; the pixels of both compared; then the GPU test suite.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
J=/tmp/jpegs
P=docs/h200/2026-11-30/resize_weights/probe.py
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
python3 $P compare $J | tee "$OUT/compare.txt"
python3 $P now -q encode $J -o /tmp/warm --limit 256 --jpeg-decoder nvjpeg --resize-on device > /dev/null
for round in 1 2 3; do
  for v in before now; do
    rm -rf /tmp/t
    python3 $P $v -q encode $J -o /tmp/t --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device \
      --json > /tmp/r.json
    python3 -c "import json, sys; d = json.load(open('/tmp/r.json')); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" $v | tee -a "$OUT/encode.txt"
  done
done
python3 -m pytest -q -m gpu tests 2>&1 | tail -15 > "$OUT/gpu_suite.txt"; tail -3 "$OUT/gpu_suite.txt"
