#!/usr/bin/env bash
# One H200 (16 CPU cores), about 1.5 minutes; carry .carry/photos:  bash docs/h200/2026-12-01/workers/run.sh
# `regvq encode` of 20,000 JPEGs of 256-512 px (bench_encode.make_jpegs) with the default tokenizer on the default
# path (Pillow workers decode and resize, batch 32), `--workers 8` (the old default) against the new default
# (every core but one: 15), alternating. Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
nproc
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('/tmp/jpegs'), 20000)"
python3 -m regvq_cli -q encode /tmp/jpegs -o /tmp/warm --limit 64 --workers 1  # bytecode caches, cuDNN's choices
for w in 8 default 8 default; do
  rm -rf /tmp/tokens
  opt=""; [ $w = 8 ] && opt="--workers 8"
  python3 -m regvq_cli -q encode /tmp/jpegs -o /tmp/tokens $opt --json > /tmp/e.json 2> /tmp/e.err
  python3 -c "import json, sys; d = json.load(open('/tmp/e.json')); print('workers', sys.argv[1], d['images_per_s'], 'images/s', d['seconds'], 's, input_wait', d['input_wait'])" $w || tail -3 /tmp/e.err
done
