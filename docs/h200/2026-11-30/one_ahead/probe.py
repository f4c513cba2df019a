"""`benchmarks/bench_encode.py` with the encode loop's pixels (`jpeg.batch_pixels`: nvjpeg decoding, the device
resize) made one batch ahead in a thread, or in the loop as the package does: the first argument picks, `ahead` or
`serial`; the rest go to bench_encode.

    PYTHONPATH=. python docs/h200/2026-11-30/one_ahead/probe.py ahead --jpeg-dir JPEGS --model regvq-tokenizer ...

(The measured run had `one_ahead` inside the package's loop, `for batch, (images, ok, reasons) in
one_ahead(loader, pixels, device)`; not kept, so this file applies the same function from outside: the loader's
batches come with their pixels made in the thread, and the loop's `jpeg.batch_pixels` hands them over.)
"""
import contextlib
import runpy
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import torch

_END = object()


def one_ahead(items, fn, device):
    """(item, fn(item)) for each item, the next one drawn and made in a thread while the caller uses this one."""
    it = iter(items)

    def make():
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            item = next(it, _END)
            return item if item is _END else (item, fn(item))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make)
        while (got := pending.result()) is not _END:
            pending = pool.submit(make)
            yield got


def patch_ahead():
    import regvq_cli.engine.encode as encode
    from regvq_cli.engine import jpeg

    make_batches = encode.image_batches

    class Ahead:
        def __init__(self, loader, args):
            self.loader, self.dataset, self.args = loader, loader.dataset, args

        def __iter__(self):
            for batch, px in one_ahead(self.loader, lambda b: jpeg.batch_pixels(b, *self.args), self.args[0]):
                yield {**batch, "_pixels": px}

    def image_batches(listing, todo, opts, size, segmap_size=None, pin_memory=False):
        device = torch.device("cuda", torch.cuda.current_device()) if pin_memory else torch.device("cpu")
        args = (device, (size, size), opts.resize, opts.background, opts.max_pixels)
        return Ahead(make_batches(listing, todo, opts, size, segmap_size, pin_memory), args)

    encode.image_batches = image_batches
    encode.jpeg = types.SimpleNamespace(pick_decoder=jpeg.pick_decoder, batch_pixels=lambda batch, *a: batch["_pixels"])


variant = sys.argv.pop(1)
if variant == "ahead":
    patch_ahead()
elif variant != "serial":
    raise SystemExit(f"unknown variant {variant!r}: ahead or serial")
sys.argv = ["benchmarks/bench_encode.py", *sys.argv[1:]]
runpy.run_path("benchmarks/bench_encode.py", run_name="__main__")
