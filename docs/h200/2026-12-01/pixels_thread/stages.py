"""`regvq encode` with its pixel threads timed on the host (encode._Ahead: thread 1 decodes, thread 2 resizes):
per batch, how long each thread waited for its items (`in1` the loader's batches, `in2` thread 1's), how long its
step took (`step1`, of which nvjpeg's call `decode`; `step2`, of which `resize`), how long the loop waited for
thread 2 (`out2`), and the loop's time from one batch to the next (medians and totals, ms):
`python stages.py encode ...` (the device paths, where encode makes the pixels in threads)."""
import collections
import statistics
import sys
import time

from regvq_cli.engine import encode, jpeg

times = collections.defaultdict(list)


def timed(name, fn):
    def call(*args, **kw):
        t = time.perf_counter()
        out = fn(*args, **kw)
        times[name].append(time.perf_counter() - t)
        return out
    return call


jpeg.decode_jpegs = timed("decode", jpeg.decode_jpegs)
jpeg.resize_batch = timed("resize", jpeg.resize_batch)
made = 0


class Timed(encode._Ahead):
    def __init__(self, items, fn, device):
        global made
        made += 1
        self.k = made

        def waited_for(items):
            it = iter(items)
            while True:
                t = time.perf_counter()
                item = next(it, None)
                if item is None:
                    return
                times[f"in{self.k}"].append(time.perf_counter() - t)
                yield item
        super().__init__(waited_for(items), timed(f"step{self.k}", fn), device)

    def __iter__(self):
        it, last = super().__iter__(), None
        while True:
            t = time.perf_counter()
            got = next(it, None)
            if got is None:
                return
            now = time.perf_counter()
            if self.k == 2:
                times["out2"].append(now - t)
                if last is not None:
                    times["loop"].append(now - last)
                last = now
            yield got


encode._Ahead = Timed
from regvq_cli.cli import main  # noqa: E402

try:
    main(sys.argv[1:])
finally:
    print(" ".join(f"{k} {1e3 * statistics.median(v):.2f} ({1e3 * sum(v):.0f} in {len(v)})"
                   for k, v in sorted(times.items()) if v), file=sys.stderr)
