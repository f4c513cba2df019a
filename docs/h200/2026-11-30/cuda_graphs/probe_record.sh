#!/usr/bin/env bash
# One H200 host, about 2 minutes; carry .carry/photos:  OUT=results bash docs/h200/2026-11-30/cuda_graphs/probe_record.sh
# 20,000 JPEGs encoded (OPTS: nvjpeg + device resize, batch 128, 8 workers) once eagerly, then with each way of
# recording (VARIANTS: see probe_record.py).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
J=/tmp/regvq-probe-jpegs
[[ $(find $J -name '*.jpg' 2>/dev/null | wc -l) == 20000 ]] || python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from bench_encode import make_jpegs; make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
OPTS=${OPTS:-"--jpeg-decoder nvjpeg --resize-on device --batch-size 128 --workers 8"}
for v in ${VARIANTS:-eager context manual manual_host context_global}; do
  timeout 120 python3 docs/h200/2026-11-30/cuda_graphs/probe_record.py $J $v $OPTS 2> "$OUT/probe_$v.err" | tee -a "$OUT/probe_record.jsonl"
  grep -m3 "Assertion\|Error" "$OUT/probe_$v.err" | cut -c1-300
done
