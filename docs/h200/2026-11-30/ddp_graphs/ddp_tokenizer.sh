#!/usr/bin/env bash
# Tokenizer training on 2 H200s against one, on a fixed batch (bench_train.py), with the settings named in $RUNS:
#   one       one process
#   ddp       two processes, as regvq train-tokenizer ran them when this was measured (graphs split at DDP's
#             buckets; since then the trainer keeps them whole itself, so at later commits this is noopt)
#   noopt     two processes, compiled graphs not split at DDP's buckets (torch._dynamo.config.optimize_ddp = False,
#             through no_optimize_ddp/sitecustomize.py)
#   ctas4     two processes, NCCL kernels limited to 4 CTAs (NCCL_MAX_CTAS=4)
#   noopt_ctas4  both
# OUT=results RUNS="ddp noopt" REGVQ_INCEPTION_WEIGHTS=... bash docs/h200/2026-11-30/ddp_graphs/ddp_tokenizer.sh
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
BT="benchmarks/bench_train.py tokenizer --preset vqgan-f16 --batch-size 32 --gan --compile --json ${EXTRA:-}"
NOOPT="PYTHONPATH=$PWD/docs/h200/2026-11-30/ddp_graphs/no_optimize_ddp:$PWD"
TR="python3 -m torch.distributed.run --standalone --nproc-per-node 2"
for r in ${RUNS:-one ddp noopt}; do
  t=$(date +%s)
  case $r in
    one) timeout ${T:-200} python3 $BT ;;
    ddp) timeout ${T:-200} $TR $BT ;;
    noopt) env $NOOPT timeout ${T:-200} $TR $BT ;;
    ctas4) NCCL_MAX_CTAS=4 timeout ${T:-200} $TR $BT ;;
    noopt_ctas4) env $NOOPT NCCL_MAX_CTAS=4 timeout ${T:-200} $TR $BT ;;
  esac > "$OUT/ddp_$r.json" 2> "$OUT/ddp_$r.err"
  rc=$?
  echo "$r rc=$rc $(( $(date +%s) - t )) s: $(python3 docs/h200/2026-11-30/ddp_graphs/rates.py "$OUT/ddp_$r.json")"
  tail -3 "$OUT/ddp_$r.err" | cut -c1-300
done
