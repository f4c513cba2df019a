#!/usr/bin/env bash
# One H200 start (about 5 minutes): compiled vqgan-f16 at batch 128 with inductor's realize_reads_threshold at its
# default (4), at 1 and at 2, one after the other, then the default again.
#   OUT=results bash docs/h200/2026-11-30/realize/run.sh
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/docs/h200/2026-11-30"
for r in "" 1 2 ""; do
  name=${r:-default}; [ -e "$OUT/tok_b128_$name.json" ] && name=${name}_again
  REGVQ_REALIZE_READS="$r" python3 -c "import realize.realize as m; m.run()" benchmarks/bench_tokenizer.py \
    --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json > "$OUT/tok_b128_$name.json"
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$OUT/tok_b128_$name.json"
done
