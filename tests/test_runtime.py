"""The engine's tokenizer runner gives the plain model's tokens: bitwise in fp32 on the CPU, and with a stated
agreement rate under bf16 on a GPU."""

import copy

import pytest
import torch

from regvq_cli.engine.runtime import prepare_tokenizer
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS


def smooth_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


def test_fp32_cpu_runner_matches_the_model_bitwise():
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tok-test"]).eval()
    images = smooth_images(6, 32)
    with torch.inference_mode():
        want_tokens = model.encode(images)
        want_images = model.decode(want_tokens)
    runner = prepare_tokenizer(model, "cpu", torch.float32)
    assert torch.equal(runner.encode(images), want_tokens)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(runner.encode_uint8(pixels), runner.encode(pixels.float() / 127.5 - 1))
    assert torch.equal(runner.decode(want_tokens), want_images)
    assert runner.decode_uint8(want_tokens).shape == (6, 32, 32, 3)


@pytest.mark.gpu
def test_bf16_gpu_runner_agrees_with_fp32():
    """bf16 networks with an fp32 quantizer: at least 95% of tokens equal to the fp32 model's (paper preset)."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["vqgan-f16"]).eval()
    images = smooth_images(16, 256)
    want = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.float32).encode(images)  # the runner casts in place
    got = prepare_tokenizer(model, "cuda", torch.bfloat16).encode(images)
    agreement = (got == want).float().mean().item()
    print(f"bf16 token agreement with fp32: {agreement:.4f}")
    assert agreement >= 0.95
