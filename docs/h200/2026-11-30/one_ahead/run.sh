#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos (the photos the JPEGs are cut from):
#   OUT=results bash docs/h200/2026-11-30/one_ahead/run.sh
# `regvq encode`'s loop with the next batch's pixels made in a thread (ahead) or in the loop (serial), alternating,
# with nvjpeg and the device resize, then with the Pillow workers; 20,000 JPEGs of 256-512 px, default tokenizer.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE  # bytecode caches, as an installed package has them
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
B=(--jpeg-dir $J --model regvq-tokenizer --batch-size 128 --workers 15 --json)
for run in nvjpeg_serial nvjpeg_ahead nvjpeg_serial2 nvjpeg_ahead2 pillow_serial pillow_ahead; do
  variant=${run#*_}; variant=${variant%2}
  extra=(); [[ $run == nvjpeg* ]] && extra=(--jpeg-decoder nvjpeg --resize-on device)
  python3 docs/h200/2026-11-30/one_ahead/probe.py "$variant" "${B[@]}" "${extra[@]}" > "$OUT/$run.json" 2> "$OUT/$run.err"
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); r = d['rows'][0] if 'rows' in d else d
print(sys.argv[2], {k: r[k] for k in r if 'per_s' in k or k in ('seconds', 'ms_per_image')})" "$OUT/$run.json" "$run" \
    || tail -3 "$OUT/$run.err"
done
