#!/usr/bin/env bash
# One H200, about 4 minutes:  OUT=results bash docs/h200/2026-12-01/conv_bias/last_layer.sh
# The decoder's last layer as nets.few_channels_conv: the tokenizer GPU tests; then the default tokenizer and
# vqgan-f16 from tensors at batch 128 (CUDA graphs), with the kernel ("on") and with cuDNN's layer ("off", ab2.py),
# alternating; one profile of vqgan-f16 with it, launched layer by layer. Prints only (the machine returns few files).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-12-01/conv_bias
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -15
T=(benchmarks/bench_tokenizer.py --batch-size 128 --dtype bf16 --json)
for model in "--model regvq-tokenizer" "--preset vqgan-f16"; do
  for v in on off on2 off2; do
    python3 $D/ab2.py ${v%2} "${T[@]}" $model > /tmp/tok.json 2> /tmp/tok.err
    python3 -c "import json, sys; d = json.load(open('/tmp/tok.json')); print(sys.argv[1], sys.argv[2], [(r['op'], r['images_per_s'], r['gpu_state']['clocks.sm'], r['gpu_state']['power.draw']) for r in d['rows']])" "$model" $v || tail -3 /tmp/tok.err
  done
done
python3 "${T[@]}" --preset vqgan-f16 --no-cuda-graphs --profile 12 > /tmp/ops.json 2> /dev/null
python3 -c "import json; d = json.load(open('/tmp/ops.json')); pr = d['profile']['decode']
print('vqgan-f16 decode', pr['ms_total'], 'ms of kernels')
for e in pr['top_kernels'][:12]:
    print(f\"  {e['ms']:>9.3f} ms {e['calls']:>5}x  {e['name']}\")"
