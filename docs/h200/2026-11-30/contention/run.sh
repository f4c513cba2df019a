#!/usr/bin/env bash
# Two H200s of one host (32 CPU cores), about 6 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/contention/run.sh
# Why each of two encode processes runs slower than one alone: the default tokenizer from tensors on one GPU
# alone and on both at once (two processes); `regvq encode` (nvjpeg + device resize, batch 128, 8 workers) of
# 30,000 JPEGs on one GPU alone and two independent runs at once (other files, other GPU), each free to use every
# core or held to half of them (pinned.py); then torchrun on 60,000 files with 1 and 2 processes, free and pinned.
# nvidia-smi dmon samples power, clocks and use once a second throughout.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
D=docs/h200/2026-11-30/contention
J=/tmp/jpegs
{ nproc; lscpu | grep -E 'Model name|Socket|NUMA|Thread|MHz'; nvidia-smi topo -m; } > "$OUT/host.txt" 2>&1
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 60000)"
find $J -name '*.jpg' | sort > /tmp/all.txt
head -30000 /tmp/all.txt > /tmp/a.txt; tail -30000 /tmp/all.txt > /tmp/b.txt
nvidia-smi dmon -s pucm -d 1 -o T > "$OUT/dmon.txt" 2>&1 &
DMON=$!
mark() { echo "$(date +%T) $*" | tee -a "$OUT/marks.txt"; }
tok() { CUDA_VISIBLE_DEVICES=$1 python3 benchmarks/bench_tokenizer.py --model regvq-tokenizer --batch-size 128 \
          --dtype bf16 --iters 150 --json > "$OUT/tok_$2.json"; }
show_tok() { python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
mark tok alone; tok 0 alone; show_tok "$OUT/tok_alone.json"
mark tok both; tok 0 both0 & p=$!; tok 1 both1; wait $p
show_tok "$OUT/tok_both0.json"; show_tok "$OUT/tok_both1.json"
E=(-q encode --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli -q encode $J -o /tmp/warm --limit 512 --batch-size 128 --jpeg-decoder nvjpeg --resize-on device > /dev/null
enc() {  # gpu, files, name, launcher...
  rm -rf /tmp/t_$3; CUDA_VISIBLE_DEVICES=$1 "${@:4}" "${E[@]}" --files-from $2 -o /tmp/t_$3 > "$OUT/enc_$3.json"
}
show() { for n in "$@"; do python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], d['images_per_s'], d['seconds'], d['timings'], d.get('images_per_s_by_rank'))" "$OUT/enc_$n.json"; done; }
mark enc alone; enc 0 /tmp/a.txt alone python3 -m regvq_cli; show alone
mark enc both; enc 0 /tmp/a.txt both0 python3 -m regvq_cli & p=$!; enc 1 /tmp/b.txt both1 python3 -m regvq_cli; wait $p
show both0 both1
mark enc alone pinned; enc 0 /tmp/a.txt alone_pinned env SLICE=0/2 python3 $D/pinned.py; show alone_pinned
mark enc both pinned; enc 0 /tmp/a.txt both0_pinned env SLICE=0/2 python3 $D/pinned.py & p=$!
enc 1 /tmp/b.txt both1_pinned env SLICE=1/2 python3 $D/pinned.py; wait $p; show both0_pinned both1_pinned
mark enc alone again; enc 0 /tmp/a.txt alone2 python3 -m regvq_cli; show alone2
TR=(python3 -m torch.distributed.run --standalone)
for v in np1 np2 np2_pinned np1_pinned; do
  mark torchrun $v
  case $v in
    np1) enc 0 /tmp/all.txt tr_$v "${TR[@]}" --nproc-per-node 1 -m regvq_cli ;;
    np2) enc 0,1 /tmp/all.txt tr_$v "${TR[@]}" --nproc-per-node 2 -m regvq_cli ;;
    np2_pinned) enc 0,1 /tmp/all.txt tr_$v "${TR[@]}" --nproc-per-node 2 $D/pinned.py ;;
    np1_pinned) enc 0 /tmp/all.txt tr_$v env SLICE=0/2 "${TR[@]}" --nproc-per-node 1 $D/pinned.py ;;
  esac
  show tr_$v
done
kill $DMON
mark done
