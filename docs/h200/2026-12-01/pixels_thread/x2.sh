#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), under 10 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-12-01/pixels_thread/x2.sh   (GPUS=1 on one H200: the one-GPU run twice)
# With encode's pixels made by two threads: benchmarks/scaling.sh's encode of 100,000 JPEGs (nvjpeg + device
# resize, 8 workers a process) on 1 and 2 GPUs, each timed whole by the shell too; then the GPU tests other than
# the JPEG and encode ones (run.sh runs those), for what time is left.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
s=$(date +%s)
GPUS=${GPUS:-2} PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT/scaling" \
  ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh > "$OUT/scaling.log" 2>&1
grep '^encode' "$OUT/scaling.log" || tail -20 "$OUT/scaling.log"
for f in "$OUT"/scaling/encode_np*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], d.get('images_per_s_by_rank'))" "$f"
done
echo "scaling took $(( $(date +%s) - s )) s"
left=$(( 560 - $(date +%s) + s ))
timeout $left python3 -m pytest -q -m gpu tests -p no:warnings --tb=short --ignore tests/test_jpeg_gpu_path.py \
  --ignore tests/test_encode_decode.py 2>&1 | grep -v DEBUG | tail -15 | tee "$OUT/gpu_tests_rest.txt"
