#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 2 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/host_syncs/scaling.sh
# benchmarks/scaling.sh's encode of 100,000 JPEGs (nvjpeg + device resize, 8 workers a process) on 1 and 2 GPUs,
# after resize_batch's weights once per batch and the asynchronous small copies.
set -uo pipefail
export PYTHONPATH=$PWD
GPUS=2 PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT" \
  ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh 2>&1 | grep '^encode'
for f in "$OUT"/encode_np*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$f"
done
