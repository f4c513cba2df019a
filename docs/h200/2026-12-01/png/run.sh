#!/usr/bin/env bash
# One H200 (16 CPU cores), about 2 minutes:  bash docs/h200/2026-12-01/png/run.sh
# `regvq decode` to PNG files with the default tokenizer (benchmarks/bench_decode.py, 8,192 random grids, batch 128),
# the PNGs Huffman-coded as now and deflated at level 1 as before (ab.py), alternating. Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
for v in huffman level1 huffman2 level12; do
  python3 docs/h200/2026-12-01/png/ab.py ${v%2} benchmarks/bench_decode.py --model regvq-tokenizer --n 8192 \
    --batch-size 128 --json > /tmp/dec.json 2> /tmp/dec.err
  python3 -c "import json, sys; d = json.load(open('/tmp/dec.json')); print(sys.argv[1], d['end_to_end_images_per_s'], d['model_only_images_per_s'])" $v || tail -3 /tmp/dec.err
done
