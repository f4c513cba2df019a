#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:  OUT=results bash docs/h200/2026-12-01/conv_bias/e2e.sh
# `regvq encode` end to end with the folded biases: benchmarks/scaling.sh's encode of 100,000 JPEGs on one GPU
# (nvjpeg + device resize, 8 workers), timed whole by the shell too; then the Pillow workers' path over the same
# files at the default batch of 32 and at 128 (15 workers).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
s=$(date +%s.%N)
GPUS=1 NPS=1 PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT/scaling" WORK=/tmp/regvq-scaling \
  ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh > "$OUT/scaling.log" 2>&1
grep '^encode' "$OUT/scaling.log" || tail -20 "$OUT/scaling.log"
for f in "$OUT"/scaling/encode_np*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$f"
done
echo "scaling (100,000 JPEGs made first) took $(python3 -c "print(round($(date +%s.%N) - $s, 1))") s"
for b in 32 128; do
  rm -rf /tmp/pil_$b
  s=$(date +%s.%N)
  python3 -m regvq_cli -q encode /tmp/regvq-scaling/jpegs -o /tmp/pil_$b --batch-size $b --workers 15 --json \
    > "$OUT/pillow_b$b.json"
  e=$(date +%s.%N)
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], 'from the shell', round(float(sys.argv[3]) - float(sys.argv[2]), 2), 's')" "$OUT/pillow_b$b.json" $s $e
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
