#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 5 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/claimed_shards/workers.sh
# The same encode of 100,000 JPEGs (nvjpeg + device resize, shards drawn from a shared counter) with fewer loader
# workers per process than run.sh's 15: with nvjpeg they only read the files, and two processes' 30 workers, main
# processes and their threads share 32 cores.
set -uo pipefail
export PYTHONPATH=$PWD
for w in 8 4; do
  GPUS=2 PHOTOS=.carry/photos N=100000 JOBS=encode W=$w OUT="$OUT/workers$w" \
    ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh 2>&1 | grep '^encode'
done
for f in "$OUT"/workers*/encode_np*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$f"
done
