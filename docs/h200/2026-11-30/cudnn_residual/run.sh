#!/usr/bin/env bash
# Staged for one H200, one call of about 6 minutes; carry .whl holding cuDNN's frontend wheel (cudnn_graph.py says
# how to fetch it):
#   OUT=results bash docs/h200/2026-11-30/cudnn_residual/run.sh
# Token agreement with and without the op (eager), then compiled vqgan-f16 at batch 128 as now and with the op,
# twice each in turn, the last with a kernel profile.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/nvidia_cudnn_frontend-*.whl || exit 1
export PYTHONPATH="$PWD:$PWD/docs/h200/2026-11-30:/tmp/site"
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json)
python3 docs/h200/2026-11-30/cudnn_residual/residual_conv.py --agreement > "$OUT/agreement.txt" 2>&1
tail -1 "$OUT/agreement.txt"
for name in as_now residual_conv as_now_again residual_conv_again; do
  on=0; extra=()
  [[ $name == residual* ]] && on=1
  [[ $name == residual_conv_again ]] && extra=(--profile 25)
  REGVQ_RESIDUAL_CONV=$on python3 -c "import cudnn_residual.residual_conv as v; v.run()" "${B[@]}" "${extra[@]}" \
    > "$OUT/tok_b128_$name.json" 2> "$OUT/err_$name.txt"
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s'], r.get('gpu_state', {}).get('clocks.sm')) for r in d['rows']])" \
    "$OUT/tok_b128_$name.json" || tail -3 "$OUT/err_$name.txt"
done
