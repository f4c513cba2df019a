#!/usr/bin/env bash
# One H200 start, after the decoder's inference forms went into the package (about 7 minutes):
#   OUT=results bash docs/h200/2026-11-30/decode_rest/run_landed.sh
# the GPU tests of the tokenizer's forms, then vqgan-f16 at batch 128 compiled as before (before.py) and as now,
# eager as now, and compiled as now at batch 64.
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/docs/h200/2026-11-30"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --dtype bf16 --json)
show() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"
}
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py tests/test_runtime.py tests/test_image_conv.py \
  > "$OUT/gpu_tests.txt" 2>&1; tail -1 "$OUT/gpu_tests.txt"
python3 -c "import decode_rest.before as b; b.run()" "${B[@]}" --batch-size 128 --compile > "$OUT/b128_compile_before.json"
show "$OUT/b128_compile_before.json"
python3 "${B[@]}" --batch-size 128 --compile > "$OUT/b128_compile_now.json"; show "$OUT/b128_compile_now.json"
python3 "${B[@]}" --batch-size 128 > "$OUT/b128_eager_now.json"; show "$OUT/b128_eager_now.json"
python3 "${B[@]}" --batch-size 64 --compile > "$OUT/b64_compile_now.json"; show "$OUT/b64_compile_now.json"
