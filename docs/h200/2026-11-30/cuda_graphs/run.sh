#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 6 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/cuda_graphs/run.sh [tests] [probe] [probe32] [tok] [scaling] [scaling_rev]
# The tokenizer runner's CUDA graphs: their GPU tests; the default tokenizer from tensors at batch 128, launched
# eagerly and replayed, alternating; benchmarks/scaling.sh's encode of 100,000 JPEGs (nvjpeg + device resize, 8
# workers a process) on 1 and 2 GPUs with --no-cuda-graphs and with the graphs (the default), in that order, or
# with scaling_rev the other way round.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia_smi.txt"
steps=${*:-tests tok scaling}
scaling() {  # $1: a name, $2: extra encode options
  GPUS=2 PHOTOS=.carry/photos N=100000 JOBS=encode W=8 OUT="$OUT/$1" \
    ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device $2" bash benchmarks/scaling.sh > "$OUT/$1.log" 2>&1
  grep '^encode' "$OUT/$1.log" || tail -20 "$OUT/$1.log"
  for f in "$OUT/$1"/encode_np*.json; do
    python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], d.get('images_per_s_by_rank'))" "$f"
  done
}
for step in $steps; do
  case $step in
    tests) python3 -m pytest -q -m gpu tests/test_runtime.py tests/test_encode_decode.py tests/test_jpeg_gpu_path.py \
             tests/test_tokenizer_model.py -p no:warnings --tb=short 2>&1 | grep -v DEBUG | tail -40 | tee "$OUT/gpu_tests.txt"
           python3 docs/h200/2026-11-30/cuda_graphs/old_nvjpeg.py 2>&1 | tail -3 | tee "$OUT/old_nvjpeg.txt" ;;
    probe) VARIANTS="eager context" bash docs/h200/2026-11-30/cuda_graphs/probe_record.sh ;;
    tok) for b in 32 128; do
           for g in no-cuda-graphs cuda-graphs; do
             python3 benchmarks/bench_tokenizer.py --model regvq-tokenizer --batch-size $b --dtype bf16 --$g --json \
               > "$OUT/tok_default_b${b}_$g.json"
             python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], [(r['op'], r['images_per_s']) for r in d['rows']], d['peak_memory_gib'])" "$OUT/tok_default_b${b}_$g.json"
           done
         done ;;
    probe32) OUT=$OUT/nvjpeg_b32 OPTS="--jpeg-decoder nvjpeg --resize-on device --batch-size 32 --workers 8" \
               VARIANTS="eager context" bash docs/h200/2026-11-30/cuda_graphs/probe_record.sh
             OUT=$OUT/pillow_b32 OPTS="--batch-size 32 --workers 15" VARIANTS="eager context" \
               bash docs/h200/2026-11-30/cuda_graphs/probe_record.sh ;;
    scaling) scaling launched "--no-cuda-graphs"; scaling graphs "" ;;
    scaling_rev) scaling graphs_2 ""; scaling launched_2 "--no-cuda-graphs" ;;
  esac
done
