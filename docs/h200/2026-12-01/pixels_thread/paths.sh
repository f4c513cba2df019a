#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-12-01/pixels_thread/paths.sh
# `regvq encode` of 40,000 JPEGs of 256-512 px with the default tokenizer by each path, with the pixel threads:
# Pillow workers resizing (the default, batch 32 and 128, 15 workers), Pillow workers decoding and the device
# resizing (--resize-on device, batch 128, 15 workers; under stages.py), nvjpeg and the device (batch 128,
# 8 workers).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/pixels_thread
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
python3 -m regvq_cli -q encode $J -o /tmp/warm --limit 512 --json > /dev/null
show() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], 'process', round(float(sys.argv[3]) - float(sys.argv[2]), 2), 's')" "$@"; }
run() {  # name, then the command's options
  local name=$1; shift
  rm -rf /tmp/p_$name
  local s=$(date +%s.%N)
  python3 "$@" -o /tmp/p_$name --json > "$OUT/$name.json"
  show "$OUT/$name.json" $s "$(date +%s.%N)"
}
run pillow_b32 -m regvq_cli -q encode $J --workers 15
run pillow_b128 -m regvq_cli -q encode $J --workers 15 --batch-size 128
run device_resize_b128 $D/stages.py -q encode $J --workers 15 --batch-size 128 --resize-on device
run nvjpeg_b128 -m regvq_cli -q encode $J --workers 8 --batch-size 128 --jpeg-decoder nvjpeg --resize-on device
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
