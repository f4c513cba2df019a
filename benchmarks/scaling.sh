#!/usr/bin/env bash
# One GPU against several on one host, through torchrun: `regvq encode` of N JPEGs with the default tokenizer,
# `regvq train-prior` (ar-b, unconditional) on the tokens, and `regvq train-tokenizer` (vqgan-f16, compiled, with
# the discriminator, perceptual loss and PCL) on the JPEGs. Prints images/s and samples/s for each and writes the
# raw results under $OUT.
#
#   OUT=results GPUS=2 PHOTOS=../shared/data/photos bash benchmarks/scaling.sh
#
# N JPEGs (default 40000) of 256-512 px are made from PHOTOS first (kept in WORK for the next run); W decoding workers
# per process (default 15); STEPS prior steps (default 120) at BS grids per process (default 64); TOK_STEPS tokenizer
# steps (default 60) of the TOK_PRESET preset (default vqgan-f16) at TOK_BS images per process (default 32). JOBS
# picks the jobs (default "encode prior tokenizer"; prior needs encode's tokens), NPS the process counts
# (default "1 GPUS"). DEV="--device cpu" runs it on a CPU. ENCODE_OPTS, TRAIN_OPTS and TOK_OPTS add options to the encode,
# train-prior and train-tokenizer commands (e.g. ENCODE_OPTS="--jpeg-decoder nvjpeg", which decodes the JPEGs on each
# process's GPU instead of the host's shared CPU cores; TRAIN_OPTS=--compile; TOK_OPTS=--no-compile).
set -euo pipefail
OUT=${OUT:-results}; GPUS=${GPUS:-2}; PHOTOS=${PHOTOS:-../shared/data/photos}
N=${N:-40000}; STEPS=${STEPS:-120}; W=${W:-15}; PRESET=${PRESET:-ar-b}; BS=${BS:-64}; WORK=${WORK:-/tmp/regvq-scaling}
TOK_STEPS=${TOK_STEPS:-60}; TOK_PRESET=${TOK_PRESET:-vqgan-f16}; TOK_BS=${TOK_BS:-32}
JOBS=${JOBS:-encode prior tokenizer}; NPS=${NPS:-1 $GPUS}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
# Bytecode caches, as an installed package has them: where Python may not write them (PYTHONDONTWRITEBYTECODE, a
# read-only site-packages) every process compiles torch's sources again, 3-4 s of each command's start-up on an
# H200 host (docs/performance.md); they go under WORK, filled by a small encode before anything is timed.
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$WORK/pycache}
mkdir -p "$OUT" "$WORK"
run() { python3 -m torch.distributed.run --standalone --nproc-per-node "$1" -m regvq_cli -q "${@:2}"; }
if [[ $(find "$WORK/jpegs" -name '*.jpg' 2>/dev/null | wc -l) != "$N" ]]; then  # else: made by an earlier run
  rm -rf "$WORK/jpegs"
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))" "$PHOTOS" "$WORK/jpegs" "$N"
fi
rate() {  # metrics.jsonl, its rate key, job name, processes: the mean rate after the first log window
  python3 -c 'import json,sys; r=[json.loads(l)[sys.argv[2]] for l in open(sys.argv[1])]; r = r[1:] or r
print(f"{sys.argv[3]}, {sys.argv[4]} process(es): {sum(r) / len(r):.1f} {sys.argv[2]} (after the first log window)")' "$@"
}
rm -rf "$WORK/warm-up"
python3 -m regvq_cli -q encode "$WORK/jpegs" -o "$WORK/warm-up" --limit 64 --workers 1 ${DEV:-} ${ENCODE_OPTS:-}
for np in $NPS; do
  [[ " $JOBS " == *" encode "* ]] || break
  rm -rf "$WORK/tokens$np"
  start=$(date +%s.%N)
  run "$np" encode "$WORK/jpegs" -o "$WORK/tokens$np" --batch-size 128 --workers "$W" --json ${DEV:-} ${ENCODE_OPTS:-} > "$OUT/encode_np$np.json"
  python3 -c 'import json,sys,time; d=json.load(open(sys.argv[1])); whole = time.time() - float(sys.argv[3])
print("encode,", sys.argv[2], "process(es):", d["images_per_s"], "images/s,", d["seconds"], "s,", round(whole, 2),
      "s from the shell (torchrun, imports, the process group)")' "$OUT/encode_np$np.json" "$np" "$start"
done
for np in $NPS; do
  [[ " $JOBS " == *" prior "* ]] || break
  rm -rf "$WORK/prior$np"
  run "$np" train-prior "$WORK/tokens1" -o "$WORK/prior$np" --kind ar --cond none --preset "$PRESET" --batch-size "$BS" \
    --max-steps "$STEPS" --log-every 20 --sample-every 0 --checkpoint-every 1000000 --json ${DEV:-} ${TRAIN_OPTS:-} > /dev/null
  cp "$WORK/prior$np/metrics.jsonl" "$OUT/prior_np$np.jsonl"
  rate "$OUT/prior_np$np.jsonl" samples_per_s train-prior "$np"
done
for np in $NPS; do
  [[ " $JOBS " == *" tokenizer "* ]] || break
  rm -rf "$WORK/tokenizer$np"
  run "$np" train-tokenizer "$WORK/jpegs" -o "$WORK/tokenizer$np" --preset "$TOK_PRESET" --batch-size "$TOK_BS" \
    --compile --gan-start 0 --max-steps "$TOK_STEPS" --log-every 10 --sample-every 0 --checkpoint-every 1000000 \
    --workers "$W" --json ${DEV:-} ${TOK_OPTS:-} > /dev/null
  cp "$WORK/tokenizer$np/metrics.jsonl" "$OUT/tokenizer_np$np.jsonl"
  rate "$OUT/tokenizer_np$np.jsonl" images_per_s train-tokenizer "$np"
done
