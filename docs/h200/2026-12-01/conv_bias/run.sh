#!/usr/bin/env bash
# One H200 (16 CPU cores), about 8 minutes; carry .carry/photos:  OUT=results bash docs/h200/2026-12-01/conv_bias/run.sh
# Convolution biases folded into the passes that read their outputs next, and the downsampler's padding as a
# kernel (nets.folds_biases): the tokenizer GPU tests; the default tokenizer and vqgan-f16 from tensors at batch 128,
# eager with CUDA graphs (as regvq runs them), folded ("on") and as before ("off", ab.py), alternating; one profile
# each, folded, launched layer by layer; then `regvq encode` of 40,000 JPEGs (nvjpeg + device resize), on and off.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/conv_bias
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -8 \
  | tee "$OUT/gpu_tests.txt"
T=(benchmarks/bench_tokenizer.py --batch-size 128 --dtype bf16 --json)
for model in "--model regvq-tokenizer" "--preset vqgan-f16"; do
  name=$([[ $model == *vqgan* ]] && echo vqgan || echo default)
  for v in on off on2 off2; do
    python3 $D/ab.py ${v%2} "${T[@]}" $model > "$OUT/tok_${name}_$v.json" 2> "$OUT/tok_${name}_$v.err"
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], [(r['op'], r['images_per_s'], r.get('gpu_state')) for r in d['rows']])" "$OUT/tok_${name}_$v.json" || tail -3 "$OUT/tok_${name}_$v.err"
  done
  python3 "${T[@]}" $model --no-cuda-graphs --profile 16 > "$OUT/ops_${name}.json" 2> /dev/null
  python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
for op, pr in d['profile'].items():
    print(op, pr['ms_total'], 'ms of kernels')
    for e in pr['top'][:8]:
        print(f\"  {e['ms']:>9.3f} ms {e['share']:>6.1%} {e['calls']:>6}x  {e['name']}\")" "$OUT/ops_${name}.json"
done
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 40000)"
A=(-q encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli "${A[@]}" -o /tmp/warm --limit 512 > /dev/null
for v in on off on2 off2; do
  rm -rf /tmp/e_$v
  python3 $D/ab.py ${v%2} regvq_cli/__main__.py "${A[@]}" -o /tmp/e_$v > "$OUT/enc_$v.json"
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/enc_$v.json"
done
python3 docs/h200/2026-11-30/norm_silu/agree.py /tmp/e_on /tmp/e_off
