"""Where a GPU's time goes in `regvq encode` (nvjpeg + device resize): the CLI run in this process under
torch.profiler, then from its trace the loop's GPU kernels by stream and by name, and how much of the loop's wall
time some kernel was running (the union of their intervals): `python kernels.py OUT [--before] encode ...`
(--before: as encode ran before the pixels thread, before.py)."""
import collections
import json
import sys

import torch

from regvq_cli.cli import main

out, args = sys.argv[1], sys.argv[2:]
if args[0] == "--before":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import before

    before.patch()
    args = args[1:]
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:  # the GPU's side only
    try:
        main(args)
    except SystemExit:
        pass
prof.export_chrome_trace(f"{out}/trace.json")
events = json.load(open(f"{out}/trace.json"))["traceEvents"]
kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
start = min(e["ts"] for e in kernels)
end = max(e["ts"] + e["dur"] for e in kernels)
# the loop: from the last tokenizer warm-up onwards is hard to find; take the second half of the GPU's active span
lo = start + (end - start) / 2
loop = [e for e in kernels if e["ts"] >= lo]
spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in loop)
busy, cur_s, cur_e = 0.0, None, None
for s, e in spans:
    if cur_e is None or s > cur_e:
        if cur_e is not None:
            busy += cur_e - cur_s
        cur_s, cur_e = s, e
    else:
        cur_e = max(cur_e, e)
busy += cur_e - cur_s
wall = end - lo
print(f"second half of the GPU's span: {wall / 1e3:.1f} ms, some kernel running {busy / 1e3:.1f} ms "
      f"({100 * busy / wall:.1f}%)")
by_stream = collections.Counter()
by_name = collections.Counter()
count = collections.Counter()
for e in loop:
    by_stream[(e.get("args", {}).get("stream"), e["cat"])] += e["dur"]
    name = e["name"][:90]
    by_name[name] += e["dur"]
    count[name] += 1
for k, v in by_stream.most_common():
    print(f"stream {k}: {v / 1e3:.1f} ms")
for k, v in by_name.most_common(25):
    print(f"{v / 1e3:9.1f} ms {count[k]:6d}x  {k}")
