"""The encoder's first layer, a 3x3 convolution of the RGB image, as a Triton kernel for inference on a GPU.

That layer reads a small image and writes a wide activation (vqgan-f16: 3 -> 128 channels, 50 MB in and 2.1 GB out
at batch 128), and cuDNN's kernels for a 3-channel input are slow at it: 5.4-6.5 ms at batch 128 on an H200, where
writing its output takes 0.5 ms. As a GEMM it is small: each pixel's 27 neighbourhood values (3 channels x 3 x 3
taps, zero outside the image, padded to 32) times the [32, out] weight. The kernel gathers those values straight
from the image, one block of pixels a program, multiplies on the tensor cores with float32 accumulation and writes
the activation channels-last, the layout the compiled network's next layers read, or NCHW, the layout eager
layers read fastest: 0.71 ms for the same batch either way, the compiled vqgan-f16 encoder 5-6% faster and the
eager one 5% (docs/performance.md). ImageConv uses it only where nothing needs a gradient (the kernel has no
backward).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from regvq_cli.engine.device import cdiv, needs_grad, stored_channels_last
from regvq_cli.engine.device import triton_runs_on as available  # whether the kernel can run on a device

# pixels a program; measured on an H200 at batch 128: 0.71 ms with 128 in both layouts, 0.74 (channels-last) and
# 0.86 (NCHW) with 64, 0.92-1.14 with 256 or 8 warps
BLOCK_PIXELS = 128


def image_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, block: int = BLOCK_PIXELS,
               num_warps: int = 4, channels_last: bool = True) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1) for x [B, C, H, W] (any strides) and weight [CO, C, 3, 3] with C * 9
    <= 32 and CO a power of two, all in one dtype; the result [B, CO, H, W] in that dtype, laid out channels-last
    (or NCHW-contiguous). `block` (pixels a program) and `num_warps` tune the launch."""
    from regvq_cli.tokenizer.image_conv_kernel import image_conv_kernel

    B, C, H, W = x.shape
    CO = weight.shape[0]
    wt = torch.zeros(32, CO, device=x.device, dtype=weight.dtype)  # [tap, out]: the weight as the GEMM's B
    wt[:C * 9] = weight.reshape(CO, C * 9).t()
    # strides given, not a memory format: inductor's lowering of torch.empty drops the format, and compiled code
    # then filled a contiguous buffer with NaN and copied it to the layout asked for (0.6 ms at batch 128)
    stride = (H * W * CO, 1, W * CO, CO) if channels_last else (CO * H * W, H * W, W, 1)
    y = torch.empty_strided((B, CO, H, W), stride, device=x.device, dtype=x.dtype)
    image_conv_kernel[(cdiv(H * W, block), B)](  # (pixel blocks, images)
        x, wt, bias, y, H, W, x.stride(0), x.stride(1), x.stride(2), x.stride(3), C=C, CO=CO, BM=block,
        CHANNELS_LAST=channels_last, num_warps=num_warps)
    return y


class ImageConv(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) of the encoder's first layer, which runs as `image_conv`'s
    kernel where it can: a 3x3 convolution with padding 1 of at most 3 channels into a power of two up to 256,
    input, weight and bias in one half-precision dtype on a device `available` accepts, and nothing needing a
    gradient. Its output is channels-last in a network torch.compile is compiling or whose weights are
    channels-last (the layout the next layers then read), and NCHW otherwise, as cuDNN's would be. Elsewhere
    (training, the CPU, float32) it is nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_kernel(x):
            channels_last = torch.compiler.is_compiling() or stored_channels_last(self.weight)
            return image_conv(x, self.weight, self.bias, channels_last=channels_last)
        return super().forward(x)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        co = self.out_channels
        return (self.kernel_size == (3, 3) and self.padding == (1, 1)
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1 and self.bias is not None
                and self.in_channels * 9 <= 32 and co & (co - 1) == 0 and co <= 256
                and x.dtype in (torch.bfloat16, torch.float16) and self.weight.dtype == x.dtype
                and self.bias.dtype == x.dtype and x.dim() == 4
                and not needs_grad(x, self.weight, self.bias) and available(x.device))
