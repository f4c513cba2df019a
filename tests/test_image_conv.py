"""The encoder's first convolution as a Triton kernel (tokenizer/image_conv.py): F.conv2d's result, used only
where it can run and nothing needs a gradient."""

import importlib.util

import pytest
import torch

from regvq_cli.tokenizer import image_conv
from regvq_cli.tokenizer.image_conv import ImageConv
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import run_interpreted

KERNEL_CHECK = """
import torch, torch.nn.functional as F
from regvq_cli.tokenizer.image_conv import image_conv
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS

torch.manual_seed(0)
for C, CO, H, W in ((3, 16, 9, 13), (1, 32, 5, 70), (3, 128, 11, 8)):  # edges, one channel, blocks across rows
    x, w, b = torch.randn(2, C, H, W), torch.randn(CO, C, 3, 3), torch.randn(CO)
    want = F.conv2d(x, w, b, padding=1)
    got = image_conv(x, w, b)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max() < 1e-4, (C, CO, (got - want).abs().max())
    nchw = image_conv(x, w, b, block=32, channels_last=False)  # the other layout
    assert nchw.is_contiguous() and (nchw - want).abs().max() < 1e-4, C
    for other in (x.contiguous(memory_format=torch.channels_last), torch.randn(2, C, H, 2 * W)[..., ::2]):
        other_want = F.conv2d(other, w, b, padding=1)  # an input of other strides: channels-last, columns apart
        assert (image_conv(other, w, b) - other_want).abs().max() < 1e-4, C
    # in half precision: the products summed in float32, rounded once (fp16 here: the interpreter's dot of bf16
    # operands comes out wrong; the GPU test runs bf16)
    xh, wh, bh = x.half(), w.half(), b.half()
    want = F.conv2d(xh.float(), wh.float(), bh.float(), padding=1)
    assert (image_conv(xh, wh, bh).float() - want).abs().max() <= want.abs().max() / 512, C
# the encoder of a half-precision tokenizer without gradients runs its first layer through the kernel: NCHW
# eagerly, channels-last when compiled (here as if, which the interpreter cannot be) or with channels-last weights
model = Tokenizer(PRESETS["tok-test"]).eval().to(torch.float16)
images = torch.rand(2, 3, 32, 32, dtype=torch.float16) * 2 - 1
conv = model.encoder.conv_in
want = F.conv2d(images.float(), conv.weight.float(), conv.bias.float(), padding=1)
for compiling in (False, True):
    torch.compiler.is_compiling = lambda: compiling
    with torch.no_grad():
        assert conv.uses_kernel(images)
        got = conv(images)
    assert got.is_contiguous(memory_format=torch.channels_last) if compiling else got.is_contiguous()
    assert (got.float() - want).abs().max() <= want.abs().max() / 512
torch.compiler.is_compiling = lambda: False
conv.to(memory_format=torch.channels_last)
with torch.no_grad():
    got = conv(images)
assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
assert (got.float() - want).abs().max() <= want.abs().max() / 512
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_image_conv_kernel_is_conv2d():
    """The kernel, run by Triton's interpreter on the CPU (a process of its own): F.conv2d with padding 1 in float32
    (image edges, 1 or 3 channels, blocks of pixels across rows, a last block part outside, inputs of any strides),
    within a rounding of the output in fp16, the output channels-last or NCHW; an fp16 encoder's first layer takes
    it, writing NCHW eagerly and channels-last compiled or with its weight channels-last."""
    done = run_interpreted(KERNEL_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_image_conv_runs_the_kernel_only_for_half_precision_inference_where_it_can(monkeypatch):
    """ImageConv is nn.Conv2d (its state dict too), and takes the kernel only in half precision, with nothing
    needing a gradient, on a device the kernel runs on, eagerly or compiled; its shape limits hold."""
    monkeypatch.setattr(image_conv, "available", lambda device: True)
    conv = ImageConv(3, 128, 3, padding=1).bfloat16().requires_grad_(False)
    plain = torch.nn.Conv2d(3, 128, 3, padding=1)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    x = torch.zeros(2, 3, 8, 8, dtype=torch.bfloat16)
    assert conv.uses_kernel(x)  # eager (writing NCHW)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert conv.uses_kernel(x)  # compiled (writing channels-last)
    assert not conv.uses_kernel(x.float())  # float32: cuDNN's
    assert not conv.requires_grad_(True).uses_kernel(x)  # training: the kernel has no backward
    conv.requires_grad_(False)
    assert not conv.uses_kernel(x.clone().requires_grad_(True))
    with torch.no_grad():  # or under no_grad, whatever requires one
        assert conv.requires_grad_(True).uses_kernel(x.clone().requires_grad_(True))
    conv.requires_grad_(False)
    assert conv.uses_kernel(x[..., ::2]) and conv.uses_kernel(x.contiguous(memory_format=torch.channels_last))
    for other in (ImageConv(4, 128, 3, padding=1), ImageConv(3, 96, 3, padding=1), ImageConv(3, 512, 3, padding=1),
                  ImageConv(3, 128, 3, padding=1, stride=2), ImageConv(3, 128, 3, padding=0)):
        xc = torch.zeros(2, other.in_channels, 8, 8, dtype=torch.bfloat16)
        assert not other.bfloat16().requires_grad_(False).uses_kernel(xc)
    monkeypatch.setattr(image_conv, "available", lambda device: False)
    assert not conv.uses_kernel(x)


def test_triton_kernels_run_only_with_triton_on_cuda_or_its_interpreter(monkeypatch):
    """engine.device.triton_runs_on, which the image convolution and the decode attention both ask."""
    from regvq_cli.engine import device
    from regvq_cli.priors import decode_attention

    assert image_conv.available is device.triton_runs_on and decode_attention.available is device.triton_runs_on
    monkeypatch.setattr(device, "HAS_TRITON", True)
    monkeypatch.setattr(device, "TRITON_INTERPRETED", False)
    assert image_conv.available(torch.device("cuda")) and not image_conv.available(torch.device("cpu"))
    assert image_conv.available("cuda:0")
    monkeypatch.setattr(device, "TRITON_INTERPRETED", True)
    assert image_conv.available(torch.device("cpu"))
    monkeypatch.setattr(device, "HAS_TRITON", False)
    assert not image_conv.available(torch.device("cuda"))


@pytest.mark.gpu
def test_image_conv_on_a_gpu_is_cudnns_convolution_and_encodes_its_tokens(monkeypatch):
    """On a GPU in bf16: the kernel gives cuDNN's convolution within bf16 rounding, and a compiled bf16 runner, which
    takes it, encodes the tokens of one whose first layer is cuDNN's for nearly all positions."""
    pytest.importorskip("triton")
    import copy

    from regvq_cli.engine.runtime import prepare_tokenizer

    dev = torch.device("cuda")
    torch.manual_seed(0)
    x, w, b = (torch.randn(*shape, device=dev, dtype=torch.bfloat16) for shape in ((4, 3, 37, 50), (128, 3, 3, 3),
                                                                                     (128,)))
    want = torch.nn.functional.conv2d(x.float(), w.float(), b.float(), padding=1)
    for got in (image_conv.image_conv(x, w, b), torch.nn.functional.conv2d(x, w, b, padding=1)):
        assert (got.float() - want).abs().max() <= want.abs().max() / 64
    model = Tokenizer(PRESETS["tok-test"])
    images = torch.rand(16, 3, 32, 32, device=dev) * 2 - 1
    calls, kernel = [], image_conv.image_conv
    monkeypatch.setattr(image_conv, "image_conv", lambda *args, **kw: calls.append(1) or kernel(*args, **kw))
    fast = prepare_tokenizer(copy.deepcopy(model), dev, torch.bfloat16, compile=True).encode(images)
    assert calls  # traced into the compiled encoder
    monkeypatch.setattr(image_conv, "available", lambda device: False)
    plain = prepare_tokenizer(copy.deepcopy(model), dev, torch.bfloat16, compile=True).encode(images)
    assert (fast == plain).float().mean() > 0.9
    # compiled, the layer writes its output where inductor allocated it, without filling it first
    from torch._inductor.utils import run_and_get_code

    monkeypatch.undo()
    torch._dynamo.reset()
    conv = ImageConv(3, 128, 3, padding=1).to(dev, torch.bfloat16).requires_grad_(False)
    _, code = run_and_get_code(torch.compile(conv), images.to(torch.bfloat16))
    assert "image_conv_kernel" in "".join(code) and 'float("nan")' not in "".join(code)
