# The few-rows decode path with the norm's scale applied after the products: the linear kernel's launch sweep, the
# sampler at batch 1 beside the previous commit's (old_pkg: `git archive f2669fa regvq_cli`) on one machine start,
# and the GPU tests of the AR sampler.
#   OUT=results bash docs/h200/2026-12-01/gemv/run2.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
export PYTHONPATH=$PWD
timeout 90 python3 benchmarks/bench_decode_linear.py --preset ar-b --rows 1 2 4 --configs 4:512:4 2:512:4 8:512:4 4:256:4 2:256:2 4:512:8 > $OUT/linear2.txt 2>&1
S="benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 --compile --cuda-graphs --attention triton --keep --json"
for who in new old; do
  if [ $who = old ]; then export PYTHONPATH=$PWD/old_pkg:$PWD; fi
  eval timeout 140 python3 $S > $OUT/sample2_$who.json 2> $OUT/sample2_$who.err
done
export PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -m gpu tests/test_priors_ar_static.py tests/test_sampling.py -p no:warnings --tb=short > $OUT/gpu_tests.txt 2>&1
grep -E 'torch|triton 4:512:4|triton 2:512:4' $OUT/linear2.txt
for who in new old; do
  python3 - $OUT/sample2_$who.json $who <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "no json", e); sys.exit()
for r in d["rows"]:
    if "graph" in r["sampler"]:
        print(sys.argv[2], r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["images_per_s"], "img/s", r["ms_per_batch"], "ms")
PY
done
grep -v DEBUG $OUT/gpu_tests.txt | tail -15
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
