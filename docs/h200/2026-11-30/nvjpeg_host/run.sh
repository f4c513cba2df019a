#!/usr/bin/env bash
# One H200 (16 CPU cores), about 3 minutes; carry .carry/photos:
#   OUT=results bash docs/h200/2026-11-30/nvjpeg_host/run.sh
# Where the main process's time goes in `regvq encode --jpeg-decoder nvjpeg --resize-on device`: 20,000 JPEGs of
# 256-512 px, default tokenizer, batch 128, 8 workers; a plain run, then the same under cProfile (its overhead
# inflates the Python-heavy parts), the top functions by own time and by cumulative time.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
J=/tmp/jpegs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_encode import make_jpegs
make_jpegs(Path('.carry/photos'), Path('$J'), 20000)"
A=(encode $J --batch-size 128 --workers 8 --jpeg-decoder nvjpeg --resize-on device --json)
python3 -m regvq_cli -q "${A[@]}" -o /tmp/warm --limit 256 > /dev/null
python3 -m regvq_cli -q "${A[@]}" -o /tmp/t1 > "$OUT/plain.json"
python3 -m cProfile -o /tmp/prof.out -m regvq_cli -q "${A[@]}" -o /tmp/t2 > "$OUT/profiled.json"
python3 - "$OUT" <<'PY'
import io, json, pstats, sys
out = sys.argv[1]
for name in ("plain", "profiled"):
    d = json.load(open(f"{out}/{name}.json"))
    print(name, d["images_per_s"], d["seconds"], d["timings"])
for key in ("tottime", "cumulative"):
    s = io.StringIO()
    pstats.Stats("/tmp/prof.out", stream=s).sort_stats(key).print_stats(45)
    open(f"{out}/profile_{key}.txt", "w").write(s.getvalue())
    print(s.getvalue()[-6000:] if key == "tottime" else "")
PY
