#!/usr/bin/env bash
# One H200 (16 CPU cores), about 4 minutes; carry as run.sh:  bash docs/h200/2026-12-01/train_workers/default.sh
# The training loader alone (loader.py: 2, 4, 8 and 15 workers), then `regvq train-tokenizer --preset small-f16
# --batch-size 32` with the default workers (every core but one for a GPU) against `--workers 2`, alternating.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc REGVQ_INCEPTION_WEIGHTS=$PWD/.carry/inception_fp16.pt
unset PYTHONDONTWRITEBYTECODE
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('/tmp/jpegs'), 8000)"
python3 docs/h200/2026-12-01/train_workers/loader.py /tmp/jpegs 2 4 8 15
for w in default 2 default 2; do
  rm -rf /tmp/run
  opt=""; [ $w = 2 ] && opt="--workers 2"
  timeout 240 python3 -m regvq_cli -q train-tokenizer /tmp/jpegs -o /tmp/run --preset small-f16 --batch-size 32 \
    --max-steps 150 --log-every 25 --sample-every 0 --checkpoint-every 1000000 $opt > /dev/null 2> /tmp/t.err || tail -3 /tmp/t.err
  python3 -c "import json, sys; rows = [json.loads(l) for l in open('/tmp/run/metrics.jsonl')]
print('small-f16 32 workers', sys.argv[1], [round(r['images_per_s'], 1) for r in rows][1:])" $w
done
