"""`regvq encode` with its pixels thread timed on the host: per batch, how long the thread waited for the loader's
next batch, how long it took to make the pixels (of which nvjpeg's decode call and resize_batch), how long the loop
waited for them, and the loop's time from one batch to the next (medians and totals, ms):
`python stages.py encode ...` (the device paths, where encode makes the pixels in a thread)."""
import statistics
import sys
import time

from regvq_cli.engine import encode, jpeg

times = {k: [] for k in ("loader", "pixels", "decode", "resize", "waited", "loop")}


def timed(name, fn):
    def call(*args, **kw):
        t = time.perf_counter()
        out = fn(*args, **kw)
        times[name].append(time.perf_counter() - t)
        return out
    return call


jpeg.decode_jpegs = timed("decode", jpeg.decode_jpegs)
jpeg.resize_batch = timed("resize", jpeg.resize_batch)


class Timed(encode._Ahead):
    def __init__(self, items, fn, device):
        def loader():
            it = iter(items)
            while True:
                t = time.perf_counter()
                item = next(it, None)
                if item is None:
                    return
                times["loader"].append(time.perf_counter() - t)
                yield item
        super().__init__(loader(), timed("pixels", fn), device)

    def __iter__(self):
        it, last = super().__iter__(), None
        while True:
            t = time.perf_counter()
            got = next(it, None)
            if got is None:
                return
            now = time.perf_counter()
            times["waited"].append(now - t)
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
                   for k, v in times.items() if v), file=sys.stderr)
