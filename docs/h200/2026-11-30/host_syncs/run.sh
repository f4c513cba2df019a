#!/usr/bin/env bash
# One H200 (16 CPU cores), about 4 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/host_syncs/run.sh
# The GPU test that batch_pixels never waits for the device, against the code before (expected to fail) and now;
# then the nvjpeg + device-resize encode of 20,000 JPEGs (default tokenizer, batch 128, 8 workers) before and
# now, alternating, three rounds.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
D=docs/h200/2026-11-30/host_syncs
T=tests/test_jpeg_gpu_path.py::test_device_pixels_do_not_make_the_host_wait
cp regvq_cli/engine/jpeg.py /tmp/jpeg_now.py
python3 docs/h200/2026-11-30/jpeg_at.py a75e41c > /tmp/jpeg_before.py && cp /tmp/jpeg_before.py regvq_cli/engine/jpeg.py
python3 -m pytest -q -m gpu $T 2>&1 | grep -E 'passed|failed|Error' | tail -3 | sed 's/^/before: /' | tee "$OUT/gpu_test.txt"
cp /tmp/jpeg_now.py regvq_cli/engine/jpeg.py
python3 -m pytest -q -m gpu $T 2>&1 | tail -1 | sed 's/^/now: /' | tee -a "$OUT/gpu_test.txt"
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
python3 $D/probe.py now -q encode $J -o /tmp/warm --limit 256 --jpeg-decoder nvjpeg --resize-on device > /dev/null
for round in 1 2 3; do
  for v in before now; do
    rm -rf /tmp/t
    python3 $D/probe.py $v -q encode $J -o /tmp/t --batch-size 128 --workers 8 --jpeg-decoder nvjpeg \
      --resize-on device --json > /tmp/r.json
    python3 -c "import json, sys; d = json.load(open('/tmp/r.json')); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" $v | tee -a "$OUT/encode.txt"
  done
done
