"""Each JSON object in a file (one per process of a torchrun bench_train.py): images/s, ms per step, MFU."""
import json, sys

text, dec, i, out = open(sys.argv[1]).read(), json.JSONDecoder(), 0, []
while (j := text.find("{", i)) >= 0:
    try:
        d, i = dec.raw_decode(text, j)
    except ValueError:
        i = j + 1
        continue
    out.append(f"{d.get('per_s')}/s {d.get('ms_per_step')} ms mfu {d.get('mfu')}")
print(" | ".join(out))
