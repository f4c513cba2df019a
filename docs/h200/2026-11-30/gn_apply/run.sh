#!/usr/bin/env bash
# One H200, about 6 minutes: the GPU tests of the GroupNorm scale/shift kernel and the image convolution, then
# compiled vqgan-f16 at batch 128 three ways, one after the other: as before (the group's scale and shift inlined
# into the normalising pass, inductor's exact exp), with the scale/shift kernel and inductor's use_fast_math (as
# the package runs now, profiled), and with the kernel alone.
#   OUT=results bash docs/h200/2026-11-30/gn_apply/run.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_tokenizer_model.py tests/test_image_conv.py > "$OUT/gpu_tests.txt" 2>&1
tail -1 "$OUT/gpu_tests.txt"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json)
bench_as() {  # run the bench as SETTING: "before" (no kernel, no fast math) or "kernel" (no fast math)
  python3 -c "
import runpy, sys
import regvq_cli.engine.runtime as runtime, regvq_cli.tokenizer.nets as nets
runtime.compile_options = lambda: {}
if sys.argv[1] == 'before':
    nets.triton_runs_on = lambda device: False
sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"
}
show() { python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
bench_as before "${B[@]}" > "$OUT/tok_b128_before.json"; show "$OUT/tok_b128_before.json"
python3 "${B[@]}" --profile 25 > "$OUT/tok_b128_kernel_fast_math.json"; show "$OUT/tok_b128_kernel_fast_math.json"
bench_as kernel "${B[@]}" > "$OUT/tok_b128_kernel.json"; show "$OUT/tok_b128_kernel.json"
