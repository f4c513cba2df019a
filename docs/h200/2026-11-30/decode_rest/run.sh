#!/usr/bin/env bash
# Staged for one H200, two calls (decode_variants.py says what each variant is):
#   OUT=results bash docs/h200/2026-11-30/decode_rest/run.sh suite     # about 5 minutes: the whole GPU suite (carry
#       models/regvq-tokenizer/model.safetensors), then eager decode at batch 128 as now and with eager_transposed
#   OUT=results bash docs/h200/2026-11-30/decode_rest/run.sh compiled  # about 5 minutes: compiled vqgan-f16 at batch
#       128 as now, with conv_out_gemm, with attn_contiguous, and with both, one after the other
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/docs/h200/2026-11-30"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --json)
bench() {  # bench NAME VARIANTS [extra bench options]
  local name=$1 variants=$2; shift 2
  REGVQ_DECODE_VARIANTS="$variants" python3 -c "import decode_rest.decode_variants as v; v.run()" "${B[@]}" "$@" \
    > "$OUT/tok_b128_$name.json"
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$OUT/tok_b128_$name.json"
}
case "${1:-}" in
  suite)
    python3 -m pytest -q -m gpu tests > "$OUT/gpu_suite.txt" 2>&1; tail -1 "$OUT/gpu_suite.txt"
    bench eager_as_now ""
    bench eager_transposed eager_transposed ;;
  compiled)
    bench compile_as_now "" --compile
    bench compile_conv_out_gemm conv_out_gemm --compile
    bench compile_attn_contiguous attn_contiguous --compile
    bench compile_both conv_out_gemm,attn_contiguous --compile ;;
  *) echo "usage: run.sh suite|compiled" >&2; exit 2 ;;
esac
