#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 8 minutes; carry .carry/photos (the photos the JPEGs are cut from):
#   OUT=results bash docs/h200/2026-11-30/claimed_shards/run.sh
# torchrun encode with the ranks drawing shards from a shared counter: the two-GPU tests of encode and decode, then
# benchmarks/scaling.sh's encode of 100,000 JPEGs (nvjpeg + device resize) on 1 and 2 GPUs, then 2 GPUs with
# shards of 1,024.
set -uo pipefail
export PYTHONPATH=$PWD
python3 -m pytest -q -m gpu tests/test_encode_decode.py -k torchrun 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
common=(GPUS=2 PHOTOS=.carry/photos N=100000 JOBS=encode)
env "${common[@]}" OUT="$OUT/shards4096" ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" \
  bash benchmarks/scaling.sh 2>&1 | tail -4
env "${common[@]}" OUT="$OUT/shards1024" NPS=2 ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device --shard-size 1024" \
  bash benchmarks/scaling.sh 2>&1 | tail -4
for f in "$OUT"/shards*/encode_np*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], d['shards_written'])" "$f"
done
