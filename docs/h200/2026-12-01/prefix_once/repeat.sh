# run.sh's fresh and kept calls again, CUDA graphs alone, three times each way alternating (same machine start).
#   OUT=results bash docs/h200/2026-12-01/prefix_once/repeat.sh
export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
S="benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 --cuda-graphs --attention triton --keep --json"
for k in 1 2 3; do for who in new old; do
  export PYTHONPATH=$PWD; if [ $who = old ]; then export PYTHONPATH=$PWD/old_pkg:$PWD; fi
  eval timeout 60 python3 $S > $OUT/repeat_${who}_$k.json 2> /dev/null
  python3 -c "
import json, sys
for r in json.load(open('$OUT/repeat_${who}_$k.json'))['rows']:
    if 'graph' in r['sampler']: print('$who', $k, r['sampler'], 'cfg', r['cfg'], r['ms_per_batch'], 'ms')"
done; done
