#!/usr/bin/env bash
# One H200 host, about 3 minutes:  bash docs/h200/2026-12-01/png_rows/sample.sh OLD_TREE
# `regvq sample` of 4,096 pictures to PNG files in /dev/shm (a random-weight ar-b class prior, make_prior.py; the
# default tokenizer; batch 256) with this tree's code and OLD_TREE's (`git archive 7681626 regvq_cli benchmarks |
# tar -x -C OLD_TREE`), alternating. Prints the command's images/s and seconds.
set -uo pipefail
old=$1 here=$PWD
export PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
PYTHONPATH=$here python3 docs/h200/2026-12-01/png_rows/make_prior.py /dev/shm/prior > /dev/null
for tree in new old new old; do
  root=$here; [ $tree = old ] && root=$old
  rm -rf /dev/shm/samples
  t=$(date +%s.%N)
  (cd "$root" && PYTHONPATH=$root python3 -m regvq_cli sample -m /dev/shm/prior --tokenizer $here/models/regvq-tokenizer \
    --class 3 -n 4096 --batch-size 256 --seed 0 -o /dev/shm/samples --json > /tmp/s.json 2> /tmp/s.err)
  wall=$(python3 -c "import time, sys; print(round(time.time() - float(sys.argv[1]), 1))" $t)
  python3 -c "import json, sys; d = json.load(open('/tmp/s.json')); print(sys.argv[1], d['images_per_s'], d['seconds'], 'shell', sys.argv[2], 's;', len(d['files']), 'files')" $tree $wall || tail -3 /tmp/s.err
  ls /dev/shm/samples | wc -l
done
