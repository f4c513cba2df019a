"""The GPU test `test_nvjpeg_never_writes_memory_queued_kernels_still_read` against `nvjpeg_decode` as it was
before it made its outputs on a stream of its own (torchvision's decode_jpeg called directly): prints whether the
test fails there, as it should.   PYTHONPATH=. python docs/h200/2026-11-30/cuda_graphs/old_nvjpeg.py"""

from torchvision.io import ImageReadMode, decode_jpeg

from regvq_cli.engine import jpeg
from tests import test_jpeg_gpu_path as t

jpeg.nvjpeg_decode = lambda datas, device: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
try:
    t.test_nvjpeg_never_writes_memory_queued_kernels_still_read()
    print("old nvjpeg_decode: the test passed (it should have failed)")
except AssertionError:
    print("old nvjpeg_decode: the test failed, as it should")
