#!/usr/bin/env bash
# One H200 (16 CPU cores), about 4 minutes:  bash docs/h200/2026-12-01/png_rows/run.sh [MODES...]
# `regvq decode` to PNG files with the default tokenizer (benchmarks/bench_decode.py, 8,192 random grids, batch 128),
# alternating the writers of ab.py (default: scanlines filtered on the GPU as now, Pillow's writer as before, now with
# a 0.5 ms switch interval); then the host's CPU alone (threads.py). zlib-ng is imported where .whl/ holds its wheel.
# Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
whl=$(ls .whl/zlib_ng-*cp312*.whl 2>/dev/null | head -1)
[ -n "$whl" ] && python3 -m zipfile -e "$whl" /tmp/zng && export PYTHONPATH=$PYTHONPATH:/tmp/zng
modes=${*:-rows pillow rows_si}
for v in $modes $(for m in $modes; do echo ${m}2; done); do
  python3 docs/h200/2026-12-01/png_rows/ab.py ${v%2} benchmarks/bench_decode.py --model regvq-tokenizer --n 8192 \
    --batch-size 128 --json > /tmp/dec.json 2> /tmp/dec.err
  python3 -c "import json, sys; d = json.load(open('/tmp/dec.json')); print(sys.argv[1], d['end_to_end_images_per_s'], d['model_only_images_per_s'])" $v || tail -3 /tmp/dec.err
done
python3 docs/h200/2026-12-01/png_rows/threads.py .carry/photos
