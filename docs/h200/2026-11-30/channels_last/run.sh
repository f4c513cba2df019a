#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 5 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/channels_last/run.sh [tok] [scaling] [pillow]
# With the eager tokenizer channels-last by default and encode's warm-up before its loop: the default tokenizer from
# tensors at batch 32 and 128 and vqgan-f16 eagerly at 128; benchmarks/scaling.sh's encode of 100,000 JPEGs
# (nvjpeg + device resize, 8 workers a process) on 1 and 2 GPUs; `regvq encode` of 20,000 JPEGs as the README
# runs it (Pillow workers, batch 32, 15 workers).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
for step in ${*:-tok scaling pillow}; do
  case $step in
    tok) for m in "--model regvq-tokenizer --batch-size 32" "--model regvq-tokenizer --batch-size 128" \
                  "--preset vqgan-f16 --batch-size 128"; do
           name=$(echo "$m" | awk '{print $2 "_b" $4}')
           python3 benchmarks/bench_tokenizer.py $m --dtype bf16 --json > "$OUT/tok_$name.json"
           python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], [(r['op'], r['images_per_s'], r.get('floor_fraction')) for r in d['rows']], d['peak_memory_gib'], d['channels_last'])" "$OUT/tok_$name.json"
         done ;;
    scaling) GPUS=2 PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT/scaling" \
               ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh > "$OUT/scaling.log" 2>&1
             grep '^encode' "$OUT/scaling.log" || tail -20 "$OUT/scaling.log"
             for f in "$OUT"/scaling/encode_np*.json; do
               python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], d.get('images_per_s_by_rank'))" "$f"
             done ;;
    pillow) J=/tmp/regvq-scaling/jpegs  # made by the scaling step; 20,000 of them listed
            find $J -name '*.jpg' | sort | head -20000 > /tmp/p20k.txt
            for v in 1 2; do
              rm -rf /tmp/pil$v
              python3 -m regvq_cli -q encode --files-from /tmp/p20k.txt -o /tmp/pil$v --workers 15 --json > "$OUT/pillow_b32_$v.json"
              python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'])" "$OUT/pillow_b32_$v.json"
            done ;;
  esac
done
