#!/usr/bin/env bash
# One H200, about 4 minutes:  OUT=results bash docs/h200/2026-12-01/conv_bias/sums.sh
# The channel sums add_biases_ leaves for the next GroupNorm: the tokenizer GPU tests (the folded network against
# PyTorch's adds, bit for bit); then the default tokenizer and vqgan-f16 from tensors at batch 128 (CUDA graphs),
# the sums taken ("on") and dropped ("off", sums.py), alternating. Prints only.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
D=docs/h200/2026-12-01/conv_bias
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -15
T=(benchmarks/bench_tokenizer.py --batch-size 128 --dtype bf16 --json)
for model in "--preset vqgan-f16" "--model regvq-tokenizer"; do
  for v in on off on2 off2; do
    python3 $D/sums.py ${v%2} "${T[@]}" $model > /tmp/tok.json 2> /tmp/tok.err
    python3 -c "import json, sys; d = json.load(open('/tmp/tok.json')); print(sys.argv[1], sys.argv[2], [(r['op'], r['images_per_s'], r['gpu_state']['clocks.sm'], r['gpu_state']['power.draw']) for r in d['rows']])" "$model" $v || tail -3 /tmp/tok.err
  done
done
