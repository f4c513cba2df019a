#!/usr/bin/env bash
# One H200 (16 CPU cores), about 5 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-12-01/pixels_thread/run.sh [profile]
# encode's pixels made by a thread of their own (engine.encode._Ahead), nvjpeg's op loaded without importing
# torchvision: the JPEG and encode GPU tests; `regvq encode` of 40,000 JPEGs (nvjpeg + device resize, batch 128,
# 8 workers) as it is ("thread") and as before (before.py), alternating, timed whole by the shell as well, and
# their tokens compared; then stages.py's host timings with 8 and 14 workers. `profile`: kernels.py over 10,000
# JPEGs, both ways, instead. VARIANTS and STAGE_WORKERS pick the runs.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/pixels_thread
if [[ ${1:-} == profile ]]; then  # kernels.py over 10,000 of the JPEGs, as it is and as before
  J=/tmp/jpegs10k
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 10000)"
  A=(-q encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
  python3 -m regvq_cli "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
  mkdir -p "$OUT/thread" "$OUT/before"
  python3 $D/kernels.py "$OUT/thread" "${A[@]}" -o /tmp/p_thread | tee "$OUT/profile_thread.txt"
  python3 $D/kernels.py "$OUT/before" --before "${A[@]}" -o /tmp/p_before | tee "$OUT/profile_before.txt"
  rm -f "$OUT"/*/trace.json
  exit
fi
python3 -m pytest -q -m gpu tests/test_jpeg_gpu_path.py tests/test_encode_decode.py -p no:warnings --tb=short 2>&1 \
  | grep -v DEBUG | tail -8 | tee "$OUT/gpu_tests.txt"
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
A=(-q encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
python3 $D/before.py "${A[@]}" -o /tmp/warm2 --limit 512 > /dev/null
show() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], 'process', round(float(sys.argv[3]) - float(sys.argv[2]), 2), 's')" "$@"; }
for v in ${VARIANTS:-thread before thread2 before2}; do
  rm -rf /tmp/t_$v
  s=$(date +%s.%N)
  case $v in
    thread*) python3 -m regvq_cli "${A[@]}" -o /tmp/t_$v > "$OUT/enc_$v.json" ;;
    *) python3 $D/before.py "${A[@]}" -o /tmp/t_$v > "$OUT/enc_$v.json" ;;
  esac
  show "$OUT/enc_$v.json" $s "$(date +%s.%N)"
done
python3 docs/h200/2026-11-30/norm_silu/agree.py /tmp/t_thread /tmp/t_before
for w in ${STAGE_WORKERS:-8 14}; do
  rm -rf /tmp/s_$w
  s=$(date +%s.%N)
  python3 $D/stages.py "${A[@]}" --workers $w -o /tmp/s_$w > "$OUT/stages_w$w.json"
  show "$OUT/stages_w$w.json" $s "$(date +%s.%N)"
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
