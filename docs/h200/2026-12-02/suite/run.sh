#!/usr/bin/env bash
# One H200, about 8 minutes: every GPU test on the current code (the AR sampler's CUDA-graph runner changed
# after its last GPU run), then one image from ar-b with guidance, a fresh sampler and a kept one.
#   OUT=results bash docs/h200/2026-12-02/suite/run.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD; unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__)" >> "$OUT/gpu.txt"
timeout 440 python3 -m pytest -q -m gpu tests -p no:warnings --tb=short \
  --deselect tests/test_train_speed_options.py > "$OUT/gpu_suite.txt" 2>&1
grep -v DEBUG "$OUT/gpu_suite.txt" | tail -6
timeout 120 python3 benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 --cuda-graphs \
  --attention triton --keep --json > "$OUT/sample_b1.json" 2> "$OUT/sample_b1.err"
python3 - "$OUT/sample_b1.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    print(r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["images_per_s"], "img/s", r["ms_per_batch"], "ms")
PY
