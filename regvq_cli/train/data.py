"""Training data: a deterministic, resumable, rank-sharded stream of batches, and an augmenting image dataset.

``ShardedBatchSampler`` turns a dataset of n items into an endless stream of global batches. Epoch e is a
permutation of range(n) drawn from torch.Generator(seed + e) (repeated if n is smaller than one global
batch; the tail that does not fill a global batch is dropped). Global batch b holds batch_size * world items;
rank r takes its slice [r * batch_size, (r + 1) * batch_size). Every item also gets an augmentation seed
that depends only on (seed, epoch, position), so the stream is the same whatever the number of DataLoader
workers, and a run resumed at batch k sees exactly what an uninterrupted run would have seen from batch k
on. The position to resume from is simply the number of batches consumed.

``AugmentedImages``: images from an input listing (regvq_cli.data.inputs), decoded with
regvq_cli.data.images (every Pillow mode to RGB, alpha composited on white, EXIF orientation applied),
randomly scaled (shorter side = size * s, s uniform in ``scale_range``), randomly cropped to size x size,
and flipped left-right with probability 1/2. Files that cannot be decoded are skipped: the item is replaced
by the next decodable file (in listing order, however many bad files lie in between), and the skipped
positions come back with the batch so the trainer can count them. ``center_batch`` gives un-augmented centre crops (for reconstruction grids).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import RegvqError
from ..data.images import ImageSkip, load_image
from ..data.inputs import Inputs

MAX_ASPECT = 2.0  # wider images are centre-cropped to this aspect ratio before the random crop


class ShardedBatchSampler:
    """Endless batches of (index, augmentation seed) for one rank; see the module docstring."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_batch: int = 0):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world_size, seed
        self.start_batch = start_batch
        self.global_batch = batch_size * world_size
        reps = -(-self.global_batch // n)  # repeat the permutation when n < one global batch
        self.batches_per_epoch = (n * reps) // self.global_batch
        self.epoch_len = n * reps

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        reps = self.epoch_len // self.n
        return torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])

    def item_seed(self, epoch: int, position: int) -> int:
        return ((self.seed * 1_000_003 + epoch) * 2_654_435_761 + position) & 0x7FFFFFFF

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        epoch, order = -1, None
        while True:
            e, k = divmod(b, self.batches_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            start = k * self.global_batch + self.rank * self.batch_size
            idx = order[start : start + self.batch_size].tolist()
            # seed per (epoch, position in the epoch): independent of rank count and worker count
            yield [(i, self.item_seed(e, start + j)) for j, i in enumerate(idx)]
            b += 1


def _exif_size(path: str) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except Exception:
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0)


class AugmentedImages(Dataset):
    """item (index, seed) -> (image float [3, size, size] in [-1, 1], skipped list of listing positions)."""

    def __init__(self, inputs: Inputs, size: int, scale_range: tuple[float, float] = (1.0, 1.25),
                 hflip: bool = True, max_tries: int | None = None):
        self.inputs, self.size = inputs, size
        # files tried for one item before giving up (None: all of them, so that any run of bad files is skipped)
        self.scale_range, self.hflip, self.max_tries = tuple(scale_range), hflip, max_tries

    def __len__(self) -> int:
        return len(self.inputs)

    def _load(self, i: int, rng: random.Random) -> np.ndarray:
        path = self.inputs.path(i)
        wh = _exif_size(path)
        if wh is None:
            raise ImageSkip("not an image")
        w, h = wh
        s = self.size * rng.uniform(*self.scale_range)
        short, long_ = min(w, h), min(max(w, h), MAX_ASPECT * min(w, h))
        tw, th = (long_, short) if w >= h else (short, long_)  # aspect-capped box, then scaled
        k = s / short
        out_w, out_h = max(self.size, round(tw * k)), max(self.size, round(th * k))
        img = load_image(path, (out_h, out_w), resize="shorter-crop")  # [out_h, out_w, 3]
        top = rng.randint(0, out_h - self.size)
        left = rng.randint(0, out_w - self.size)
        img = img[top : top + self.size, left : left + self.size]
        if self.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
        return np.ascontiguousarray(img)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
        i, seed = key
        rng = random.Random(seed)
        skipped = []
        tries = len(self.inputs) if self.max_tries is None else min(self.max_tries, len(self.inputs))
        for t in range(tries):
            j = (i + t) % len(self.inputs)
            try:
                return to_tensor(self._load(j, rng)), skipped
            except ImageSkip:
                skipped.append(j)
        raise RegvqError(f"{len(skipped)} images in a row could not be decoded, starting at "
                           f"{self.inputs.path(i)}; check the data")

    def skip_reason(self, i: int) -> str:
        """Why file ``i`` was skipped (it is read again: skipped files are rare, and reported once)."""
        try:
            self._load(i, random.Random(0))
        except ImageSkip as e:
            return e.reason
        return "could not be read"  # readable now: it changed, or failed for a passing reason

    def first_decodable(self) -> int | None:
        """The listing position of the first file that decodes, or None when none does (checked before training, in
        this process: an error raised in a DataLoader worker reaches the user wrapped in the worker's traceback)."""
        for i in range(len(self.inputs)):
            try:
                self._load(i, random.Random(0))
                return i
            except ImageSkip:
                continue
        return None

    def center_batch(self, count: int) -> tuple[torch.Tensor, int]:
        """The first ``count`` decodable images, centre-cropped to size x size: ([k, 3, S, S], k)."""
        out = []
        for i in range(len(self.inputs)):
            if len(out) == count:
                break
            try:
                out.append(to_tensor(load_image(self.inputs.path(i), self.size, resize="shorter-crop")))
            except ImageSkip:
                continue
        if not out:
            return torch.zeros(0, 3, self.size, self.size), 0
        return torch.stack(out), len(out)


def collate(items: list[tuple[torch.Tensor, list[int]]]) -> tuple[torch.Tensor, list[int]]:
    return torch.stack([x for x, _ in items]), [j for _, s in items for j in s]
