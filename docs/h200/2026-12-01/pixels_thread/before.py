"""`regvq` as encode ran before the pixels thread: each batch's pixels made in the loop's own thread, nvjpeg's op
loaded by importing torchvision (in the setup, as before), and nvjpeg's decoder and the resize called once before
the loop, beside the tokenizer's warm-up: `python before.py encode ...`."""
import io
import sys

import torch
from PIL import Image

from regvq_cli.engine import encode, jpeg


def nvjpeg_op():
    import torchvision.io  # noqa: F401

    return torch.ops.image.decode_jpegs_cuda


def warm_up(runner, device, size, rows):
    runner.encode_uint8(torch.zeros((rows, 3, size, size), dtype=torch.uint8, device=device))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buffer, format="JPEG")
    jpeg.decode_jpegs([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], device)
    jpeg.resize_batch([torch.full((3, 16, 16), 128, dtype=torch.uint8, device=device)], size, size)


def patch():
    jpeg._nvjpeg_op = nvjpeg_op
    encode._warm_up = warm_up
    encode._Ahead = lambda items, fn, device: (fn(item) for item in items)


if __name__ == "__main__":
    patch()
    from regvq_cli.cli import main

    main(sys.argv[1:])
