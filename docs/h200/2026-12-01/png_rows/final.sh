#!/usr/bin/env bash
# One H200 host, about 5 minutes:  bash docs/h200/2026-12-01/png_rows/final.sh OLD_TREE
# `regvq decode` to PNG files (bench_decode.py) at the final code and at OLD_TREE's (`git archive 7681626 regvq_cli
# benchmarks | tar -x -C OLD_TREE`), alternating: the default tokenizer (8,192 grids, batch 128) with the files in
# /dev/shm (memory) and in /tmp (the host's disk), and vqgan-f16 (4,096 grids, batch 64) in /tmp. Prints only.
set -uo pipefail
old=$1
export PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
here=$PWD
bench() {  # TREE DIR ARGS...
  local tree=$1 dir=$2 root=$here; shift 2
  [ "$tree" = old ] && root=$old
  (cd "$root" && TMPDIR=$dir PYTHONPATH=$root python3 benchmarks/bench_decode.py "$@" --json > /tmp/dec.json 2> /tmp/dec.err)
  python3 -c "import json, sys; d = json.load(open('/tmp/dec.json')); print(*sys.argv[1:], d['end_to_end_images_per_s'], d['model_only_images_per_s'], d['peak_memory_gib'])" "$tree" "$dir" "$1 $2" || tail -3 /tmp/dec.err
}
echo "tree folder model end_to_end model_alone peak_gib"
bench new /dev/shm --model $here/models/regvq-tokenizer --n 8192 --batch-size 128  # warms the machine
for dir in /dev/shm /tmp; do
  for tree in new old new old new; do
    bench $tree $dir --model $here/models/regvq-tokenizer --n 8192 --batch-size 128
  done
done
for tree in new old; do bench $tree /tmp --preset vqgan-f16 --n 4096 --batch-size 64; done
