"""`regvq encode` with each batch's host time stamped (when the loop finished it), the host time of nvjpeg's call,
of `resize_batch` and of launching the tokenizer, and a torch profile of batches PROFILE_FROM..+10: the device's
time per batch by kernel. `python probe.py encode ...` (the command's own arguments); writes probe.json (OUT)."""
import json
import os
import sys
import time
from collections import defaultdict

import torch

from regvq_cli.engine import encode, jpeg, runtime

stamps, host = [], defaultdict(list)
FROM = int(os.environ.get("PROFILE_FROM", "100"))
prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])


def timed(owner, name):
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        host[name].append(time.perf_counter() - t)
        return out
    setattr(owner, name, wrapper)


timed(jpeg, "decode_jpegs")
timed(jpeg, "resize_batch")
timed(runtime.TokenizerRunner, "encode_uint8")
add = encode._Progress.add


def stamped(self, done, skipped):
    stamps.append(time.perf_counter())
    if len(stamps) == FROM:
        torch.cuda.synchronize()
        prof.start()
    if len(stamps) == FROM + 10:
        torch.cuda.synchronize()
        prof.stop()
    add(self, done, skipped)


encode._Progress.add = stamped
from regvq_cli.cli import main  # noqa: E402

try:
    main(sys.argv[1:])
except SystemExit:
    pass
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
steady = sorted(gaps[30:])
report = {
    "batches": len(stamps), "first_gaps_ms": [round(g * 1e3, 1) for g in gaps[:30]],
    "median_gap_ms": round(steady[len(steady) // 2] * 1e3, 2) if steady else None,
    "mean_gap_ms_after_30": round(sum(steady) / len(steady) * 1e3, 2) if steady else None,
    "first30_s": round(sum(gaps[:30]), 3), "loop_s": round(stamps[-1] - stamps[0], 3),
    "host_ms_median": {k: round(sorted(v)[len(v) // 2] * 1e3, 2) for k, v in host.items()},
    "host_ms_first3": {k: [round(x * 1e3, 1) for x in v[:3]] for k, v in host.items()},
}
rows = defaultdict(float)
for e in prof.key_averages() if len(stamps) >= FROM + 10 else []:
    rows[e.key] += e.device_time_total / 10 / 1e3  # ms per batch
report["device_ms_per_batch"] = round(sum(rows.values()), 2)
report["top_kernels_ms_per_batch"] = {k[:90]: round(v, 3) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])[:30]}
print(json.dumps(report, indent=1))
json.dump(report, open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w"), indent=1)
