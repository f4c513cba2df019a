#!/usr/bin/env bash
# On one H200: the image-convolution kernel's GPU test, then vqgan-f16 encode/decode at batch 128 with the encoder's
# first layer through the kernel and through cuDNN (the kernel switched off in-process), compiled and eager. The
# eager pair was measured while ImageConv also took the kernel eagerly; since, eager encoders keep cuDNN (slower
# with the kernel), so that pair now runs the same code twice.
#   OUT=results bash docs/h200/2026-11-30/image_conv/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_image_conv.py > "$OUT/gpu_tests.txt" 2>&1; tail -1 "$OUT/gpu_tests.txt"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --json)
off() {  # the bench with the kernel unavailable: cuDNN's convolution, as before
  python3 -c "import runpy, sys; import regvq_cli.tokenizer.image_conv as m; m.available = lambda device: False
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"
}
show() { python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
python3 "${B[@]}" --compile > "$OUT/tok_b128_compile_kernel.json"; show "$OUT/tok_b128_compile_kernel.json"
python3 "${B[@]}" > "$OUT/tok_b128_eager_kernel.json"; show "$OUT/tok_b128_eager_kernel.json"
off "${B[@]}" > "$OUT/tok_b128_eager_cudnn.json"; show "$OUT/tok_b128_eager_cudnn.json"
off "${B[@]}" --compile > "$OUT/tok_b128_compile_cudnn.json"; show "$OUT/tok_b128_compile_cudnn.json"
