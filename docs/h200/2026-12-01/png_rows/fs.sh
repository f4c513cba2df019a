#!/usr/bin/env bash
# One H200 host, about 2 minutes:  bash docs/h200/2026-12-01/png_rows/fs.sh
# Where the files go: threads.py and `regvq decode` (bench_decode.py, default tokenizer, 8,192 grids, batch 128) in
# /tmp (the host's disk) and in /dev/shm (memory), and what filesystems those are. Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
df -hT /tmp /dev/shm
for dir in /dev/shm /tmp /dev/shm /tmp; do
  TMPDIR=$dir python3 benchmarks/bench_decode.py --model regvq-tokenizer --n 8192 --batch-size 128 --json \
    > /tmp/dec.json 2> /tmp/dec.err
  python3 -c "import json, sys; d = json.load(open('/tmp/dec.json')); print(sys.argv[1], d['end_to_end_images_per_s'], d['model_only_images_per_s'])" $dir || tail -3 /tmp/dec.err
done
for dir in /tmp /dev/shm; do echo "threads.py in $dir"; TMPDIR=$dir python3 docs/h200/2026-12-01/png_rows/threads.py .carry/photos; done
