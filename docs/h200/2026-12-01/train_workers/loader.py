"""The crops/s that `regvq train-tokenizer`'s loader makes alone (no training step), for a few worker counts: the
trainer's own DataLoader (`TokenizerTrainer._loader`), batches of 32 pinned for the GPU, timed over 100 batches
after the first.  python3 docs/h200/2026-12-01/train_workers/loader.py JPEGS 2 15"""

import sys
import tempfile
import time

from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig

data, counts = sys.argv[1], [int(w) for w in sys.argv[2:]]
for workers in counts:
    with tempfile.TemporaryDirectory() as run:
        cfg = TrainTokenizerConfig(preset="small-f16", batch_size=32, num_workers=workers, sample_every=0)
        trainer = TokenizerTrainer([data], run, cfg)
        batches = trainer._loader(workers)
        next(batches)
        t0 = time.perf_counter()
        for _ in range(100):
            next(batches)
        s = time.perf_counter() - t0
        print(f"workers {workers}: {100 * 32 / s:.0f} crops/s ({s / 100 * 1e3:.1f} ms a batch of 32)", flush=True)
        del batches
