# The few-rows decode path on one H200: its GPU tests, the linear kernel's launch sweep, and the sampler at
# batch 1 and 2 beside the previous commit's (old_pkg: `git archive f2669fa regvq_cli`), on one machine start.
#   OUT=results bash docs/h200/2026-12-01/gemv/run.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
timeout 170 python3 -m pytest -q -m gpu tests/test_priors_ar_static.py tests/test_sampling.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -12
timeout 100 python3 benchmarks/bench_decode_linear.py --preset ar-b --rows 1 2 4 8 --configs 4:256:4 2:256:4 8:256:4 4:512:4 4:128:4 4:256:8 2:256:2 1:256:4 > $OUT/linear.txt 2>&1
cat $OUT/linear.txt
S="benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 2 --compile --cuda-graphs --attention triton --keep --profile 10 --json"
for who in new old; do
  if [ $who = old ]; then export PYTHONPATH=$PWD/old_pkg:$PWD; fi
  eval timeout 150 python3 $S > $OUT/sample_$who.json 2> $OUT/sample_$who.err
  python3 - $OUT/sample_$who.json $who <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(sys.argv[2], r["sampler"], "b", r["batch"], "cfg", r["cfg"], r["images_per_s"], "img/s", r["ms_per_batch"], "ms")
for p in d.get("profiles", []):
    print(sys.argv[2], "profile", p["sampler"], "b", p["batch"], p.get("cfg"), "kernel ms", p["ms_total"], "kernels per token", p.get("per_token"))
    for e in p.get("top_kernels", [])[:6]:
        print("     ", e["ms"], "ms", e["calls"], "x", e["name"][:70])
PY
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
