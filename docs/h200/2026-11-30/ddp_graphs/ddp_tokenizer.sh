#!/usr/bin/env bash
# Tokenizer training on 2 H200s against one, on a fixed batch (bench_train.py), with the settings named in $RUNS:
#   one       one process
#   ddp       two processes, as regvq train-tokenizer runs them
#   noopt     two processes, compiled graphs not split at DDP's buckets (torch._dynamo.config.optimize_ddp = False)
#   ctas4     two processes, NCCL kernels limited to 4 CTAs (NCCL_MAX_CTAS=4)
#   noopt_ctas4  both
# OUT=results RUNS="ddp noopt" REGVQ_INCEPTION_WEIGHTS=... bash docs/h200/2026-11-30/ddp_graphs/ddp_tokenizer.sh
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
BT="benchmarks/bench_train.py tokenizer --preset vqgan-f16 --batch-size 32 --gan --compile --json ${EXTRA:-}"
W=docs/h200/2026-11-30/ddp_graphs/run_with.py
TR="python3 -m torch.distributed.run --standalone --nproc-per-node 2"
for r in ${RUNS:-one ddp noopt}; do
  t=$(date +%s)
  case $r in
    one) timeout ${T:-200} python3 $BT ;;
    ddp) timeout ${T:-200} $TR $BT ;;
    noopt) timeout ${T:-200} $TR $W --no-optimize-ddp $BT ;;
    ctas4) NCCL_MAX_CTAS=4 timeout ${T:-200} $TR $BT ;;
    noopt_ctas4) NCCL_MAX_CTAS=4 timeout ${T:-200} $TR $W --no-optimize-ddp $BT ;;
  esac > "$OUT/ddp_$r.json" 2> "$OUT/ddp_$r.err"
  rc=$?
  echo "$r rc=$rc $(( $(date +%s) - t )) s: $(python3 docs/h200/2026-11-30/ddp_graphs/rates.py "$OUT/ddp_$r.json")"
  tail -3 "$OUT/ddp_$r.err" | cut -c1-300
done
