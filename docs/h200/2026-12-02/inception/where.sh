#!/usr/bin/env bash
# After `run.sh a` (the weights' first part), in a warm call carrying .carry/inc_b:
#   OUT=results bash docs/h200/2026-12-02/inception/where.sh
set -uo pipefail
cat /tmp/inception/a .carry/inc_b/part > /tmp/inception/default_1.pt
echo "$(cat .carry/inc_b/sha)  /tmp/inception/default_1.pt" | sha256sum -c - || exit 1
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD REGVQ_INCEPTION_WEIGHTS=/tmp/inception/default_1.pt
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
timeout 300 python3 docs/h200/2026-12-02/inception/where.py --size 256 2>&1 | tee "$OUT/where.txt"
