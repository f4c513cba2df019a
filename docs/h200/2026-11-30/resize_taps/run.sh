#!/usr/bin/env bash
# One H200, about 4 minutes; carry .carry/photos:   OUT=results bash docs/h200/2026-11-30/resize_taps/run.sh [scaling]
# resize_batch as two Triton kernels: the JPEG GPU tests; the resize alone against the matrix products
# (compare.py); `regvq encode` of 40,000 JPEGs (nvjpeg + device resize, batch 128, 8 workers) with the kernels and
# with the matrix products (matrices.py), alternating, and their tokens compared. `scaling` (on the 2-H200 host):
# channels_last/run.sh's 1- and 2-GPU encode of 100,000 JPEGs instead.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-11-30/resize_taps
if [[ ${1:-} == scaling ]]; then  # on the 2-H200 host: benchmarks/scaling.sh's encode on 1 and 2 GPUs
  OUT=$OUT bash docs/h200/2026-11-30/channels_last/run.sh scaling
  exit
fi
python3 -m pytest -q -m gpu tests/test_jpeg_gpu_path.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -8 | tee "$OUT/gpu_tests.txt"
python3 $D/compare.py 2>&1 | tail -3 | tee "$OUT/compare.txt"
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
A=(-q encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
for v in taps matrices taps2 matrices2; do
  rm -rf /tmp/t_$v
  case $v in
    taps*) python3 -m regvq_cli "${A[@]}" -o /tmp/t_$v > "$OUT/enc_$v.json" ;;
    *) python3 $D/matrices.py "${A[@]}" -o /tmp/t_$v > "$OUT/enc_$v.json" ;;
  esac
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/enc_$v.json"
done
python3 docs/h200/2026-11-30/norm_silu/agree.py /tmp/t_taps /tmp/t_matrices
