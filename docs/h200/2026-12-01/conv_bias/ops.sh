#!/usr/bin/env bash
# One H200, about 3 minutes:  OUT=results bash docs/h200/2026-12-01/conv_bias/ops.sh
# Which operators launch the eager tokenizer's kernels (launched layer by layer, no CUDA graph, so the profiler
# sees each one): the default tokenizer and vqgan-f16, channels-last, bf16, batch 128; then the JPEG and encode
# GPU tests.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
B=(python3 benchmarks/bench_tokenizer.py --batch-size 128 --dtype bf16 --channels-last --no-cuda-graphs --profile 40)
"${B[@]}" --model regvq-tokenizer --json > "$OUT/ops_default.json" 2> "$OUT/ops_default.err"
"${B[@]}" --preset vqgan-f16 --json > "$OUT/ops_vqgan.json" 2> "$OUT/ops_vqgan.err"
for f in "$OUT"/ops_*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], [(r['op'], r['images_per_s']) for r in d['rows']])
for op, pr in d['profile'].items():
    print(op, pr['ms_total'], 'ms')
    for kind in ('top', 'top_kernels'):
        for e in pr[kind][:22]:
            print(f\"  {kind[4:]:8s}{e['ms']:>9.3f} ms {e['share']:>6.1%} {e['calls']:>6}x  {e['name']}\")" "$f" || tail -5 "${f%.json}.err"
done
python3 -m pytest -q -m gpu tests/test_jpeg_gpu_path.py tests/test_encode_decode.py -p no:warnings --tb=short 2>&1 \
  | grep -v DEBUG | tail -8 | tee "$OUT/gpu_tests.txt"
