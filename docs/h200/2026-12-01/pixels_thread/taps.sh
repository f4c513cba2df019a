#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:   OUT=results bash docs/h200/2026-12-01/pixels_thread/taps.sh
# The resize kernels making their taps themselves from the geometry rows: the JPEG GPU tests; stages.py over
# 40,000 JPEGs with Pillow workers decoding and the device resizing (batch 128, 15 workers), and with nvjpeg
# (8 workers), where `resize` is resize_batch's host time; then, last (it edits this copy of the tree), the GPU
# test of the pixel threads' streams run without the consumer's wait, which should fail.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/pixels_thread
python3 -m pytest -q -m gpu tests/test_jpeg_gpu_path.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -6 \
  | tee "$OUT/gpu_tests.txt"
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
python3 -m regvq_cli -q encode $J -o /tmp/warm --limit 512 --json --resize-on device > /dev/null
for opts in "device --workers 15" "nvjpeg --workers 8 --jpeg-decoder nvjpeg"; do
  set -- $opts; name=$1; shift
  rm -rf /tmp/t_$name
  python3 $D/stages.py -q encode $J -o /tmp/t_$name --batch-size 128 --resize-on device "$@" --json > "$OUT/$name.json"
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/$name.json"
done
sed -i 's/                here.wait_event(done)/                pass/' regvq_cli/engine/encode.py
python3 -m pytest -q -m gpu tests/test_encode_decode.py -k ahead_on_a_gpu -p no:warnings --tb=line 2>&1 | tail -3 \
  | tee "$OUT/without_wait.txt"
