#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 2 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/cuda_graphs/omp.sh
# Whether the 2-GPU encode's per-rank slowdown is torchrun's OMP_NUM_THREADS=1 (it sets that for more than one
# process a node, not for one): benchmarks/scaling.sh's encode of 50,000 JPEGs (nvjpeg + device resize, 8 workers)
# on 1 and 2 GPUs as it is, then on 2 GPUs with OMP_NUM_THREADS=8.
set -uo pipefail
export PYTHONPATH=$PWD
enc() { GPUS=2 PHOTOS=.carry/photos N=50000 JOBS=encode W=8 OUT="$OUT/$1" \
  ENCODE_OPTS="--jpeg-decoder nvjpeg --resize-on device" bash benchmarks/scaling.sh 2>&1 | grep '^encode'
  for f in "$OUT/$1"/encode_np*.json; do
    python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d.get('images_per_s_by_rank'))" "$f"
  done
}
enc default
OMP_NUM_THREADS=8 NPS=2 enc omp8
