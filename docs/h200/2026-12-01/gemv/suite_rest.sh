# suite.sh's test run reached its own 380 s limit in the last test on a slower start (the trainer took the SIGTERM,
# checkpointed and stopped): that file's GPU tests again with room, then one image with and without guidance.
#   OUT=results bash docs/h200/2026-12-01/gemv/suite_rest.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD; unset PYTHONDONTWRITEBYTECODE
timeout 300 python3 -m pytest -q -m gpu tests/test_train_speed_options.py -p no:warnings --tb=short > $OUT/gpu_train_speed.txt 2>&1
timeout 150 python3 benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 --compile --cuda-graphs --attention triton --keep --json > $OUT/sample_b1.json 2> $OUT/sample_b1.err
grep -v DEBUG $OUT/gpu_train_speed.txt | tail -5
python3 - $OUT/sample_b1.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["images_per_s"], "img/s", r["ms_per_batch"], "ms")
PY
