# The whole GPU suite at this commit, then the AR sampler at batch 256 (the layers' own path, which lost four
# kernels a layer with the attention kernel's offset), on one H200.
#   OUT=results bash docs/h200/2026-12-01/gemv/suite.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD; unset PYTHONDONTWRITEBYTECODE
timeout 380 python3 -m pytest -q -m gpu tests -p no:warnings --tb=short > $OUT/gpu_suite.txt 2>&1
timeout 150 python3 benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 256 --compile --cuda-graphs --attention triton --kv-cache int8 --keep --json > $OUT/sample_b256_int8.json 2> $OUT/sample_b256.err
grep -v DEBUG $OUT/gpu_suite.txt | tail -25
python3 - $OUT/sample_b256_int8.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["images_per_s"], "img/s", r["ms_per_batch"], "ms", r["peak_memory_gib"], "GiB")
PY
