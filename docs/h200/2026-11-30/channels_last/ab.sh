#!/usr/bin/env bash
# Two H200s of one host, about 7 minutes; carry .carry/photos:  OUT=results bash docs/h200/2026-11-30/channels_last/ab.sh
# The whole GPU suite; then `regvq encode` with Pillow workers as the README runs it (batch 32, 15 workers) on the
# 20,000 JPEGs the CUDA-graph probe used (make_jpegs(..., 20000)), NCHW and channels-last alternating, and the
# tokens of the two layouts compared.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
python3 -m pytest -q -m gpu tests -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -25 > "$OUT/gpu_suite.txt"
tail -3 "$OUT/gpu_suite.txt"
J=/tmp/regvq-probe-jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from bench_encode import make_jpegs; make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
python3 -m regvq_cli -q encode $J -o /tmp/warm --limit 256 > /dev/null
for v in nchw cl nchw2 cl2; do
  rm -rf /tmp/p_$v
  python3 -m regvq_cli -q encode $J -o /tmp/p_$v --workers 15 --json $([[ $v == nchw* ]] && echo --no-channels-last) > "$OUT/pillow_$v.json"
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/pillow_$v.json"
done
python3 docs/h200/2026-11-30/norm_silu/agree.py /tmp/p_nchw /tmp/p_cl
