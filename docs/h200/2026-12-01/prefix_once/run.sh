# A pass recorded on its second run (89d5b9d) against the commit before (old_pkg: `git archive bc9b0ba regvq_cli`),
# one after the other on one machine start: ar-b at batch 1, then the AR and diffusion GPU tests.
#   OUT=results bash docs/h200/2026-12-01/prefix_once/run.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader
S="benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 --compile --cuda-graphs --attention triton --keep --json"
for who in new old; do
  export PYTHONPATH=$PWD; if [ $who = old ]; then export PYTHONPATH=$PWD/old_pkg:$PWD; fi
  eval timeout 140 python3 $S > $OUT/sample_b1_$who.json 2> $OUT/sample_b1_$who.err
done
export PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -m gpu tests/test_priors_ar_static.py tests/test_sampling.py tests/test_prior_cli.py -p no:warnings --tb=short > $OUT/gpu_tests.txt 2>&1
for who in new old; do
  python3 - $OUT/sample_b1_$who.json $who <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "no json", e); sys.exit()
for r in d["rows"]:
    if "graph" in r["sampler"]:
        print(sys.argv[2], r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["ms_per_batch"], "ms")
PY
done
grep -v DEBUG $OUT/gpu_tests.txt | tail -12
