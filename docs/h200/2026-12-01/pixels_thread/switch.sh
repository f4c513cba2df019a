#!/usr/bin/env bash
# One H200 (16 CPU cores), about 2 minutes; carry .carry/photos:   OUT=results bash docs/h200/2026-12-01/pixels_thread/switch.sh
# The device paths of `regvq encode` (40,000 JPEGs, batch 128) with Python's switch interval at its default 5 ms
# and at 0.5 ms (switch.py), alternating: Pillow workers decoding with the device resizing (15 workers), and nvjpeg
# (8 workers).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/pixels_thread
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
python3 -m regvq_cli -q encode $J -o /tmp/warm --limit 512 --json --resize-on device > /dev/null
for opts in "device --workers 15 --resize-on device" "nvjpeg --workers 8 --resize-on device --jpeg-decoder nvjpeg"; do
  set -- $opts; name=$1; shift
  for run in 0.005_1 0.0005_1 0.005_2 0.0005_2; do
    rm -rf /tmp/sw
    SWITCH=${run%_*} python3 $D/switch.py -q encode $J -o /tmp/sw --batch-size 128 "$@" --json > "$OUT/${name}_$run.json"
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'])" "$OUT/${name}_$run.json"
  done
done
