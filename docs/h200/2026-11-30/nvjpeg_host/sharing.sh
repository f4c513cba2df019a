#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/nvjpeg_host/sharing.sh
# The nvjpeg + device-resize encode of 20,000 JPEGs with torch's two tensor-sharing strategies, alternating, with
# 8 and 15 workers.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
J=/tmp/jpegs
[ -d $J ] || python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
for w in 8 15; do
  for s in file_descriptor file_system file_descriptor file_system; do
    rm -rf /tmp/t
    python3 docs/h200/2026-11-30/nvjpeg_host/sharing.py $s -q encode $J -o /tmp/t --batch-size 128 --workers $w \
      --jpeg-decoder nvjpeg --resize-on device --json > /tmp/r.json
    python3 -c "import json, sys; d = json.load(open('/tmp/r.json')); print(sys.argv[1], sys.argv[2], d['images_per_s'], d['seconds'])" $w $s | tee -a "$OUT/sharing.txt"
  done
done
