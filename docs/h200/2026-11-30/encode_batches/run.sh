#!/usr/bin/env bash
# One H200, about 3 minutes; carry .carry/photos:   OUT=results bash docs/h200/2026-11-30/encode_batches/run.sh
# Where a batch's time goes in `regvq encode --jpeg-decoder nvjpeg --resize-on device` (60,000 JPEGs of 256-512 px,
# default tokenizer, batch 128, 8 workers): probe.py's per-batch stamps and device profile; then the device resize
# alone (bench_resize.py).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 60000)"
A=(encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli -q "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
python3 -m regvq_cli -q "${A[@]}" -o /tmp/t0 > "$OUT/plain.json"
python3 -c "import json; d = json.load(open('$OUT/plain.json')); print('plain', d['images_per_s'], d['seconds'], d['timings'])"
python3 docs/h200/2026-11-30/encode_batches/probe.py -q "${A[@]}" -o /tmp/t1 > "$OUT/probe_stdout.txt"
cat "$OUT/probe.json"
python3 benchmarks/bench_resize.py --device cuda --batch-size 128 --json > "$OUT/resize.json"; cat "$OUT/resize.json"
