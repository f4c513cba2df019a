#!/usr/bin/env bash
# One H200, about 5 minutes; carry .carry/photos:   OUT=results bash docs/h200/2026-11-30/norm_silu/run.sh
# Eager tokenizer inference with channels-last activations and GroupNorm + SiLU as Triton kernels: the kernels'
# error and time (check.py); the default tokenizer and vqgan-f16 from tensors at batch 128, NCHW and channels-last;
# `regvq encode` of 60,000 JPEGs (nvjpeg + device resize, batch 128, 8 workers) in both layouts and their tokens'
# agreement; the tokenizer's GPU tests.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-11-30/norm_silu
python3 $D/check.py 2>&1 | tee "$OUT/check.txt"
for m in "--model regvq-tokenizer" "--preset vqgan-f16"; do
  for cl in no channels-last; do
    name=$(echo "$m" | awk '{print $2}')_$cl
    python3 benchmarks/bench_tokenizer.py $m --batch-size 128 --dtype bf16 $([[ $cl == no ]] || echo --channels-last) \
      --json > "$OUT/tok_$name.json"
    python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], [(r['op'], r['images_per_s']) for r in d['rows']], d['peak_memory_gib'])" "$OUT/tok_$name.json"
  done
done
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 60000)"
A=(encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli -q "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
for v in nchw cl nchw2 cl2; do
  rm -rf /tmp/t_$v
  python3 -m regvq_cli -q "${A[@]}" -o /tmp/t_$v $([[ $v == cl* ]] && echo --channels-last) > "$OUT/enc_$v.json"
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/enc_$v.json"
done
python3 $D/agree.py /tmp/t_nchw /tmp/t_cl | tee "$OUT/agree.txt"
python3 $D/agree.py /tmp/t_nchw /tmp/t_nchw2 | tee -a "$OUT/agree.txt"
python3 $D/agree.py /tmp/t_cl /tmp/t_cl2 | tee -a "$OUT/agree.txt"
python3 -m pytest -q -m gpu tests/test_image_conv.py tests/test_tokenizer_model.py tests/test_runtime.py \
  tests/test_encode_decode.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -15 | tee "$OUT/gpu_tests.txt"
