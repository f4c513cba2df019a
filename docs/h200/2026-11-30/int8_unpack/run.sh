#!/usr/bin/env bash
# On one H200, the int8 decode attention as it is ("own") against its variants: permute.py's conversion, dp4a.py's
# int8 query, and both. Checks each variant's output (own and permute bitwise equal; dp4a against its reference),
# times the kernel with each (ROUNDS rounds, alternating; default 2), then runs the guided batch-256 `ar-b` sampler
# with the variants in SAMPLE (default "own dp4a+permute"). Raw files in $OUT/int8_unpack.tar.gz.
#   OUT=results bash docs/h200/2026-11-30/int8_unpack/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
P=docs/h200/2026-11-30/int8_unpack/probe.py
R=$(mktemp -d)
flags() { case $1 in own) ;; permute) echo --permute ;; dp4a) echo --dp4a ;; dp4a+permute) echo --permute --dp4a ;; esac; }
A=(benchmarks/bench_attention.py --rows 512 --positions 64 128 256 --only-triton --kv-cache int8 --triton 64:1:2 --json)
S=(benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 256 --compile --cuda-graphs --attention triton
   --kv-cache int8 --keep --json)
for v in own permute dp4a dp4a+permute; do
  echo "$v: $(python3 $P $(flags $v) --output "$R/out_$v.pt" 2>&1 | tail -1)"
done
python3 -c "
import torch, sys; r = sys.argv[1]
a, b = torch.load(f'{r}/out_own.pt'), torch.load(f'{r}/out_permute.pt')
print('own and permute bitwise equal:', all(torch.equal(a[k], b[k]) for k in a))" "$R"
rm -f "$R"/*.pt
for r in $(seq "${ROUNDS:-2}"); do
  for v in own permute dp4a dp4a+permute; do python3 $P $(flags $v) "${A[@]}" > "$R/attention_${v}_$r.json"; done
done
python3 -c "
import json, sys
for f in sorted(sys.argv[1:]):
    d = json.load(open(f)); print(f.split('/')[-1], [(r['positions'], round(r['ms'] * 1e3, 1)) for r in d['results']])
" "$R"/attention_*.json
for v in ${SAMPLE:-own dp4a+permute}; do
  python3 $P $(flags $v) "${S[@]}" > "$R/sample_$v.json"
  python3 -c "
import json, sys
for r in json.load(open(sys.argv[1]))['rows']:
    if 'graph-compile' in r['sampler']: print(sys.argv[2], r['sampler'], r['cfg'], r['images_per_s'])
" "$R/sample_$v.json" "$v"
done
tar -czf "$OUT/int8_unpack.tar.gz" -C "$R" .
