#!/usr/bin/env bash
# One H200 host, about 3 minutes:  bash docs/h200/2026-12-01/png_rows/old_new.sh OLD_TREE
# `regvq decode` to PNG files (bench_decode.py, default tokenizer, 8,192 grids, batch 128) with this tree's code and
# with OLD_TREE's (`git archive 7681626 regvq_cli benchmarks | tar -x -C OLD_TREE`), alternating, the files in
# /dev/shm (memory) and in /tmp (the host's disk). Prints only.
set -uo pipefail
old=$1
export PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
for dir in /dev/shm /tmp; do
  for tree in new old new old; do
    root=$PWD; [ $tree = old ] && root=$old
    (cd "$root" && TMPDIR=$dir PYTHONPATH=$root python3 benchmarks/bench_decode.py --model "$OLDPWD/models/regvq-tokenizer" \
      --n 8192 --batch-size 128 --json > /tmp/dec.json 2> /tmp/dec.err)
    python3 -c "import json, sys; d = json.load(open('/tmp/dec.json')); print(sys.argv[1], sys.argv[2], d['end_to_end_images_per_s'], d['model_only_images_per_s'])" $dir $tree || tail -3 /tmp/dec.err
  done
done
