#!/usr/bin/env bash
# On one H200, the kernel's own int8 conversion against permute.py's: outputs compared bitwise on fixed inputs,
# the kernel timed with each (two rounds, alternating), then the guided batch-256 `ar-b` sampler with each.
#   OUT=results bash docs/h200/2026-11-30/int8_unpack/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
P=docs/h200/2026-11-30/int8_unpack/probe.py
A=(benchmarks/bench_attention.py --rows 512 --positions 64 128 256 --only-triton --kv-cache int8 --triton 64:1:2 --json)
S=(benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 256 --cfg 4 --compile --cuda-graphs
   --attention triton --kv-cache int8 --keep --json)
python3 $P --output /tmp/own.pt && python3 $P --permute --output /tmp/permute.pt && python3 -c "
import torch; a, b = torch.load('/tmp/own.pt'), torch.load('/tmp/permute.pt')
print('bitwise equal:', {k: torch.equal(a[k], b[k]) for k in a})"
for r in 1 2; do
  python3 $P "${A[@]}" > "$OUT/attention_own_$r.json"
  python3 $P --permute "${A[@]}" > "$OUT/attention_permute_$r.json"
done
python3 -c "
import json, sys
for f in sys.argv[1:]:
    d = json.load(open(f)); print(f.split('/')[-1], [(r['positions'], round(r['ms'] * 1e3, 1)) for r in d['results']])
" "$OUT"/attention_*.json
for c in own permute; do
  python3 $P $([ $c = permute ] && echo --permute) "${S[@]}" > "$OUT/sample_$c.json"
  python3 -c "
import json, sys
for r in json.load(open(sys.argv[1]))['rows']: print(sys.argv[2], r['sampler'], r['cfg'], r['images_per_s'])
" "$OUT/sample_$c.json" $c
done
