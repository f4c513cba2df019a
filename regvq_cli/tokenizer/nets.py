"""Convolutional encoder and decoder of the VQGAN family.

The layout follows the first-stage autoencoder of VQGAN (Esser, Rombach, Ommer, "Taming Transformers for
High-Resolution Image Synthesis", CVPR 2021), which RegVQ (Zhang et al., CVPR 2023, arXiv 2303.06424) uses
unchanged: a stack of resolution levels, each with residual blocks (GroupNorm + SiLU + 3x3 conv), optional
single-head self-attention at chosen resolutions, and a stride-2 down/up-sampling between levels, with a
middle block (res, attn, res) at the lowest resolution.

With ``ch_mult`` of length L the spatial downsampling factor is ``2 ** (L - 1)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from regvq_cli.engine.device import cdiv, needs_grad, next_power_of_two, stored_channels_last, triton_runs_on
from regvq_cli.tokenizer.image_conv import ImageConv

# Device types where the networks take the forms measured faster there (docs/performance.md). Compiled: GroupNorm
# from statistics per channel (group_norm_by_channels; on the CPU inductor's code for it was slower than for
# F.group_norm). For inference, compiled: attention over contiguous q, k, v (AttnBlock) and the decoder's last
# convolution as a GEMM (conv3x3_to_few_channels). For eager inference over channels-last activations: GroupNorm +
# SiLU as Triton kernels (group_norm_channels_last), each convolution's bias added by the pass that reads its output
# next and the downsampler's padding as a kernel of its own (folds_biases).
FAST_FORMS_ON = {"cuda"}
# For inference, eager or compiled: upsampling as one transposed convolution (Upsample), faster on both.
TRANSPOSED_UPSAMPLING_ON = {"cuda", "cpu"}


def inference_form(x: torch.Tensor, *params: torch.Tensor, compiled: bool = True, devices=None) -> bool:
    """Whether to take an inference-only form: x on a device in `devices` (default FAST_FORMS_ON), nothing among x
    and params needing a gradient, and, for forms measured only in compiled networks (compiled=True), under
    torch.compile."""
    if compiled and not torch.compiler.is_compiling():
        return False
    return x.device.type in (FAST_FORMS_ON if devices is None else devices) and not needs_grad(x, *params)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict) that keeps a bf16 or fp16 input's dtype under autocast, and can
    apply SiLU to its output (`silu=True`: F.silu(norm(x)), the blocks' pattern) in the same pass where it has one.

    CUDA autocast runs group_norm in float32: in bf16 training every norm copied its input (a convolution's bf16
    output) up to float32, normalised it, SiLU ran in float32, and the next convolution copied the result back
    down, each a pass over a full-resolution activation, forward and backward. PyTorch's kernels accumulate the
    statistics of a bf16 input in float32 anyway, so under autocast this normalises in the input's dtype (the gain
    and bias cast to it) and the block stays in bf16. Outside autocast it is nn.GroupNorm. Compiled on CUDA it
    computes its statistics per channel (group_norm_by_channels), which inductor turns into faster code. For
    eager inference on a GPU over a channels-last activation it is two Triton kernels that keep that layout
    (group_norm_channels_last), where PyTorch's kernel would copy it to NCHW.

    `offset` [C] (a preceding convolution's bias) normalises x + offset instead of x; the kernels add it as they read
    x, elsewhere it is a sum of its own.
    """

    def forward(self, x: torch.Tensor, silu: bool = False, offset: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last_form(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps, silu=silu,
                                            offset=offset)
        if offset is not None:
            x = x + offset.to(x.dtype)[:, None, None]
        if torch.compiler.is_compiling() and self.affine and x.dim() == 4 and x.device.type in FAST_FORMS_ON:
            y = group_norm_by_channels(x, self.num_groups, self.weight, self.bias, self.eps)
        elif x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                y = F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        else:
            y = super().forward(x)
        return F.silu(y) if silu else y

    def channels_last_form(self, x: torch.Tensor) -> bool:
        """Whether forward takes group_norm_channels_last: an affine norm of x [B, C, H, W] where eager inference
        takes the channels-last kernels (eager_channels_last)."""
        return self.affine and x.dim() == 4 and eager_channels_last(x, self.weight, self.bias)


def eager_channels_last(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether a layer reading x takes regvq's channels-last Triton kernels (GroupNorm's, and with folds_biases
    the bias sums and padding): eager inference (nothing among x and params needing a gradient, not compiling)
    on a device in FAST_FORMS_ON where Triton runs, x stored channels-last."""
    return (not torch.compiler.is_compiling() and stored_channels_last(x) and inference_form(x, *params, compiled=False)
            and triton_runs_on(x.device))


# group_norm_channels_last's launches: pixels a program of the statistics sums (a fixed count, so that a picture's
# statistics are summed in the same order whatever the batch), and values in a program's tile ([pixels, channels])
NORM_SPAN, NORM_TILE = 1024, 4096


def sums_launch(P: int, C: int) -> tuple[int, int, int]:
    """(CP, BP, spans) of a pass that sums each channel over P pixels as channel_sums_kernel does: C rounded up to a
    power of two, pixels a tile, programs a picture (spans of NORM_SPAN pixels)."""
    CP = next_power_of_two(C)
    return CP, min(max(1, NORM_TILE // CP), next_power_of_two(P)), cdiv(P, NORM_SPAN)


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                             silu: bool = False, offset: torch.Tensor | None = None) -> torch.Tensor:
    """F.group_norm of x [B, C, H, W] stored channels-last (and F.silu of that with `silu`), in x's dtype and layout:
    two Triton kernels, for inference on a GPU. With `offset` [C], of x + offset (rounded to x's dtype), added as
    the kernels read x. Without it, where add_biases_ wrote x, the sums it left on x stand for the first kernel's.

    Eagerly, PyTorch's GroupNorm copies a channels-last input to NCHW, and cuDNN's half-precision convolutions read
    and write channels-last, so an NCHW network spends two conversions a convolution (the default tokenizer's encode
    at batch 128 on an H200: 5 of 29.5 ms of kernels a batch of `regvq encode`). These keep the activations
    channels-last: one pass reads x for each channel's shifted sums over its pixels (as channel_var_mean; the group's
    statistics then follow as in group_norm_by_channels), one pass normalises it, with SiLU, in float32.
    """
    from regvq_cli.tokenizer.norm_silu_kernel import channel_sums_kernel, scale_shift_kernel

    B, C, H, W = x.shape
    P = H * W
    CP, sums_bp, spans = sums_launch(P, C)
    has_offset = offset is not None
    offset_in = offset if has_offset else x  # an unread pointer without it
    sums = None if has_offset else getattr(x, "regvq_channel_sums", None)  # left by add_biases_
    if sums is None:
        sums = torch.empty((B, spans, 2, C), dtype=torch.float32, device=x.device)
        channel_sums_kernel[(B, spans)](x, offset_in, sums, P, C, NORM_SPAN, spans, CP=CP, BP=sums_bp,
                                        HAS_OFFSET=has_offset)
    mean_d, mean_d2 = (sums.sum(1) / P).unbind(1)  # [B, C] each: the means of d and d * d, d = x - x[:, :, 0, 0]
    first = x[:, :, 0, 0] + offset.to(x.dtype) if has_offset else x[:, :, 0, 0]
    var_c, mean_c = shifted_var_mean(first.float(), mean_d, mean_d2)
    scale, shift = group_norm_scale_shift(var_c, mean_c, groups, weight, bias, eps)
    y = torch.empty_like(x)  # channels-last, as x
    BP = max(1, NORM_TILE // CP)  # pixels a tile
    scale_shift_kernel[(B, cdiv(P, BP))](x, offset_in, scale, shift, y, P, C, CP=CP, BP=BP, SILU=silu,
                                         HAS_OFFSET=has_offset)
    return y


def group_norm_by_channels(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """F.group_norm of x [B, C, H, W] from statistics per channel, for torch.compile.

    Inductor stores a compiled tokenizer's activations channels-last, and its own GroupNorm reduces each group's
    H*W*C/G values as one row: a few channels at a time with a stride of C between them, which reads the
    activation at a fraction of the memory bandwidth. Reduced over H*W per (sample, channel) instead, neighbouring
    channels are neighbouring threads and every read is contiguous; a group's mean and variance then follow
    exactly from its channels' (equal counts: the mean of the means, and the mean of the variances plus the
    spread of the means). Computed in float32 and returned in x's dtype, as F.group_norm does. Used on the
    devices in FAST_FORMS_ON. Where nothing needs a gradient the statistics come from shifted sums
    (channel_var_mean); training keeps torch.var_mean.
    """
    B, C = x.shape[:2]
    if needs_grad(x, weight, bias):
        var_c, mean_c = torch.var_mean(x.float(), dim=(2, 3), correction=0)  # [B, C] each
    else:
        var_c, mean_c = channel_var_mean(x)
    scale, shift = group_norm_scale_shift(var_c, mean_c, groups, weight, bias, eps)
    return (x.float() * scale.view(B, C, 1, 1) + shift.view(B, C, 1, 1)).to(x.dtype)


def channel_var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance and mean of x [B, C, H, W] over H and W, [B, C] float32 each, in one pass of sums.

    torch.var_mean compiles to Welford's update, a division an element, and over vqgan-f16's widest activation
    that pass took 0.90 ms where reading it takes 0.5; these sums took 0.55 on an H200 (docs/performance.md).
    Each channel is shifted by its own first value before summing d and d * d, so the sum of squares does not
    cancel where the mean is far from zero (as plain sums of x and x * x do): the variance is as close to
    float64's as Welford's.
    """
    x = x.float()
    n = x.shape[2] * x.shape[3]
    first = x[:, :, 0, 0]  # [B, C]
    d = x - first[:, :, None, None]
    return shifted_var_mean(first, d.sum((2, 3)) / n, (d * d).sum((2, 3)) / n)


def shifted_var_mean(first: torch.Tensor, mean_d: torch.Tensor,
                     mean_d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance and mean of each channel from the means of d and d * d, d its values less `first` (its first value):
    the shift keeps the difference of the two from cancelling where the mean is far from zero."""
    return (mean_d2 - mean_d * mean_d).clamp_min(0), first + mean_d


def group_norm_scale_shift(var_c: torch.Tensor, mean_c: torch.Tensor, groups: int, weight: torch.Tensor,
                           bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as x * scale + shift per (sample, channel), from each channel's variance and mean [B, C]: the
    two [B, C] float32 tensors.

    Written as tensor operations, inductor inlines this small computation into the normalising pass and repeats
    it for every element of the activation, a group's rsqrt included: with SiLU's exp and division, three
    special-function instructions an element, which made that pass take twice the time of its memory traffic on an
    H200 (docs/performance.md). Where nothing needs a gradient and Triton runs on the device, a kernel of its own
    computes them once (a launch inductor keeps apart), and the pass only multiplies and adds.
    """
    B, C = var_c.shape
    K = C // groups  # channels a group
    if not needs_grad(var_c, mean_c, weight, bias) and triton_runs_on(var_c.device):
        from regvq_cli.tokenizer.group_norm_kernel import group_norm_scale_shift_kernel

        scale, shift = torch.empty_like(var_c), torch.empty_like(var_c)
        group_norm_scale_shift_kernel[(B,)](var_c, mean_c, weight, bias, scale, shift, eps, G=groups, K=K,
                                            GP=next_power_of_two(groups), KP=next_power_of_two(K))
        return scale, shift
    var_c, mean_c = var_c.view(B, groups, K), mean_c.view(B, groups, K)
    mean = mean_c.mean(-1, keepdim=True)  # [B, G, 1]
    var = (var_c + (mean_c - mean).square()).mean(-1, keepdim=True)
    scale = torch.rsqrt(var + eps) * weight.float().view(groups, K)  # [B, G, K]
    shift = bias.float().view(groups, K) - mean * scale
    return scale.view(B, C), shift.view(B, C)


def group_norm(channels: int) -> GroupNorm:
    # 32 groups as in VQGAN (for its widths, 128 channels and up). Narrow models get fewer groups so that every
    # group keeps at least 4 channels: one channel per group would be instance norm, which wipes out the mean
    # colour of flat regions.
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return GroupNorm(groups, channels, eps=1e-6, affine=True)


def folds_biases(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether a layer reading x leaves its convolution's bias to the pass that reads its output next (add_biases_,
    GroupNorm's offset), and the downsampler pads with pad_right_bottom: where GroupNorm takes its channels-last
    kernels too (eager_channels_last). A switch of its own, so that a run can compare it with PyTorch's adds.

    There PyTorch adds a convolution's bias as a pass of its own after cuDNN's, with a kernel that does not
    vectorise its loads (the bias is broadcast over the pixels), and pads by zeroing a new tensor and copying x
    into it the same way. At batch 128 on an H200 the bias adds alone took a third of the eager encoder's kernel
    time (4.0 of 12.2 ms for the default tokenizer, 19.3 of 63.7 for vqgan-f16); folded, the default tokenizer
    encodes 17,000 images/s instead of 10,500 (docs/performance.md). The results are the same bit for bit: the
    sums are taken and rounded as PyTorch's are.
    """
    return eager_channels_last(x, *params)


def unbiased(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) without the convolution's bias (for a later pass to add)."""
    return conv._conv_forward(x, conv.weight, None)


def add_biases_(h: torch.Tensor, h_bias: torch.Tensor, skip: torch.Tensor | None = None,
                skip_bias: torch.Tensor | None = None) -> torch.Tensor:
    """(h + h_bias) + (skip + skip_bias), written into h and returned: h [B, C, H, W] a convolution's output less
    its bias h_bias [C], `skip` a residual of h's shape, itself a convolution's output less its bias where skip_bias
    is given. Each sum is taken in float32 and rounded to h's dtype, as PyTorch's adds are.

    Where h (and skip) are stored channels-last and Triton runs, one kernel reads each once, and as it writes the
    result also sums each of its channels over the pixels exactly as group_norm_channels_last's first kernel would
    (the same order, the same values): it leaves those sums on the result (`regvq_channel_sums`), and the
    GroupNorm that reads it next (the next block's first, or the final one) skips that pass. Otherwise PyTorch's
    adds."""
    tensors = (h,) if skip is None else (h, skip)
    if (all(stored_channels_last(t) for t in tensors) and triton_runs_on(h.device)
            and (skip is None or (skip.shape == h.shape and skip.dtype == h.dtype))):
        from regvq_cli.tokenizer.bias_pad_kernel import add_biases_kernel

        B, C, H, W = h.shape
        CP, BP, spans = sums_launch(H * W, C)
        # the result's first pixel, which the sums are taken from (the kernel overwrites h): the same sums, rounded
        # alike, as torch operations on [B, C]
        first = h[:, :, 0, 0] + h_bias.to(h.dtype)
        if skip is not None:
            first = first + (skip[:, :, 0, 0] if skip_bias is None else skip[:, :, 0, 0] + skip_bias.to(h.dtype))
        sums = torch.empty((B, spans, 2, C), dtype=torch.float32, device=h.device)
        add_biases_kernel[(B, spans)](h, h_bias, h if skip is None else skip,
                                      h_bias if skip_bias is None else skip_bias, first.float(), sums, H * W, C,
                                      NORM_SPAN, spans, CP=CP, BP=BP, SKIP=skip is not None,
                                      SKIP_BIAS=skip_bias is not None)
        h.regvq_channel_sums = sums
        return h
    h.add_(h_bias.to(h.dtype)[:, None, None])
    if skip is not None:
        h.add_(skip if skip_bias is None else skip + skip_bias.to(skip.dtype)[:, None, None])
    return h


# pad_right_bottom's launch: values of an output row a program
PAD_BLOCK = 2048


def pad_right_bottom(x: torch.Tensor) -> torch.Tensor:
    """F.pad(x, (0, 1, 0, 1)) of x [B, C, H, W] stored channels-last: [B, C, H + 1, W + 1], channels-last, zero in
    the last row and column; one Triton kernel that reads x once and writes each value once."""
    from regvq_cli.tokenizer.bias_pad_kernel import pad_right_bottom_kernel

    B, C, H, W = x.shape
    y = torch.empty((B, C, H + 1, W + 1), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    pad_right_bottom_kernel[(cdiv((W + 1) * C, PAD_BLOCK), H + 1, B)](x, y, H, W, C, BLOCK=PAD_BLOCK)
    return y


class ResnetBlock(nn.Module):
    """x -> norm, silu, conv3x3 -> norm, silu, dropout, conv3x3 -> + skip(x); the skip is a 1x1 conv when
    the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_biases(x, self.conv1.weight) and not (self.training and self.dropout.p > 0):
            # each convolution's bias added by the pass that reads its output next: norm2's, the residual sum
            h = unbiased(self.conv1, self.norm1(x, silu=True))  # [B, C_out, H, W], less conv1's bias
            h = unbiased(self.conv2, self.norm2(h, silu=True, offset=self.conv1.bias))
            if isinstance(self.skip, nn.Conv2d):
                return add_biases_(h, self.conv2.bias, unbiased(self.skip, x), self.skip.bias)
            return add_biases_(h, self.conv2.bias, x)
        h = self.conv1(self.norm1(x, silu=True))  # [B, C_out, H, W]
        h = self.conv2(self.dropout(self.norm2(h, silu=True)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)  # each [B, C, H, W]
        # [B, 1, HW, C]: one head of width C over HW tokens
        q, k, v = (t.reshape(B, 1, C, H * W).transpose(2, 3) for t in (q, k, v))
        if inference_form(x, self.qkv.weight):
            # Compiled, inductor lowered the decoder's attention over these strided views to bmm + softmax (1.75 ms
            # of a vqgan-f16 decode at batch 128 on an H200); over contiguous copies it takes the memory-efficient
            # kernel (decode 3% faster; encode, whose attention took the kernel already, unchanged).
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        h = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        h = h.transpose(2, 3).reshape(B, C, H, W)
        if folds_biases(x, self.proj.weight):
            return add_biases_(unbiased(self.proj, h), self.proj.bias, x)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv; pad right/bottom only so that even sizes halve exactly."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_biases(x, self.conv.weight):
            return add_biases_(unbiased(self.conv, pad_right_bottom(x)), self.conv.bias)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling followed by a 3x3 conv.

    For inference on the devices in TRANSPOSED_UPSAMPLING_ON, compiled or not, it runs as the same map written as
    one stride-2 transposed convolution (upsampling_weight): 4 multiply-adds per output value and input channel
    instead of 9, and the 4x larger upsampled input never written. On an H200 the decoder's largest upsampler took
    3.6 ms instead of 5.8 at batch 128, and vqgan-f16 decoded 3% faster eagerly, 10% compiled; on a 2-core CPU
    the default tokenizer decoded 8-21% faster eagerly, 16-27% compiled.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if folds_biases(x, w):
            return add_biases_(F.conv_transpose2d(x, upsampling_weight(w), stride=2, padding=1), self.conv.bias)
        if inference_form(x, w, compiled=False, devices=TRANSPOSED_UPSAMPLING_ON):
            return F.conv_transpose2d(x, upsampling_weight(w), self.conv.bias, stride=2, padding=1)
        return self.conv(upsample_nearest_2x(x))


def upsampling_weight(w: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel w [out, in, 3, 3] of a convolution after nearest 2x upsampling as the [in, out, 4, 4] kernel
    of a stride-2, padding-1 transposed convolution computing the same map.

    Along each axis an even output row is w0 * x[i - 1] + (w1 + w2) * x[i] and an odd one (w0 + w1) * x[i] + w2 *
    x[i + 1]; conv_transpose2d takes those four taps as (w2, w1 + w2, w0 + w1, w0). Summed in float32 and rounded
    once to w's dtype.
    """
    def taps(v: torch.Tensor, dim: int) -> torch.Tensor:  # 3 taps along dim -> the 4 above
        v0, v1, v2 = v.unbind(dim)
        return torch.stack([v2, v1 + v2, v0 + v1, v0], dim)

    # from w's own values, no constant copied from the host: the same in a CUDA graph
    return taps(taps(w.float(), 2), 3).transpose(0, 1).to(w.dtype)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W], every value repeated over a 2x2 block: F.interpolate(x, scale_factor=2,
    mode="nearest"), bit for bit, written as a broadcast. Its backward is then a sum over each 2x2 block (a
    reduction) where interpolate's, compiled, scattered the gradient into a zeroed float32 buffer with one atomic
    add per output value (about 6 ms a step in vqgan-f16 training on an H200). A channels-last input gives a
    channels-last output, as interpolate does."""
    B, C, H, W = x.shape
    if C > 1 and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C], contiguous
        return x[:, :, None, :, None].expand(B, H, 2, W, 2, C).reshape(B, 2 * H, 2 * W, C).permute(0, 3, 1, 2)
    return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)


def conv3x3_to_few_channels(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F.conv2d(x, w, b, padding=1) for x [B, C, H, W] and a 3x3 kernel w [O, C, 3, 3] with 9 * O <= 32 (the
    decoder's last layer, to RGB), as one GEMM and a pass of shifted sums.

    The GEMM multiplies every pixel's C channels by all 9 taps' weights at once, [B*H*W, C] @ [C, 32] (the 9 * O
    columns padded to 32); output pixel (h, w) then adds tap (i, j)'s column of the pixel at (h + i - 1, w + j - 1),
    in float32. cuDNN spends its tiles on an output of 3 channels: at batch 128 of vqgan-f16 on an H200 the
    convolution took 2.68 ms, this 1.11. Each tap's partial sum comes out of the GEMM rounded to x's dtype, so in
    bf16 it is a little less exact than one rounding of the whole sum (on the shipped tokenizer's images 7.4% of
    8-bit values one step off float32's where cuDNN gives 6.3%).
    """
    B, C, H, W = x.shape
    O = w.shape[0]
    taps = F.pad(w.permute(1, 2, 3, 0).reshape(C, 9 * O), (0, 32 - 9 * O))  # [C, 32]: (tap i, tap j, output o)
    y = x.permute(0, 2, 3, 1).reshape(B * H * W, C) @ taps  # [B*H*W, 32]
    y = y.float().view(B, H, W, 32)[..., :9 * O].reshape(B, H, W, 3, 3, O)
    y = F.pad(y, (0, 0, 0, 0, 0, 0, 1, 1, 1, 1))  # [B, H + 2, W + 2, 3, 3, O], zero around
    out = sum(y[:, i:i + H, j:j + W, i, j] for i in range(3) for j in range(3)) + b.float()  # [B, H, W, O]
    return out.to(x.dtype).permute(0, 3, 1, 2)


class Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then a resampler."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, attn: bool, dropout: float, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        for i in range(num_blocks):
            self.blocks.append(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout))
            self.attns.append(AttnBlock(out_ch) if attn else nn.Identity())
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.blocks, self.attns):
            x = attn(block(x))
        return self.resample(x)


class MidBlock(nn.Module):
    """res -> attn -> res at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, dropout)
        self.attn = AttnBlock(channels)
        self.block2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    """images [B, in_channels, R, R] -> latents [B, z_channels, R / f, R / f] with f = 2 ** (len(ch_mult) - 1).

    ``attn_resolutions`` are spatial sizes (at training resolution ``resolution``) where every residual block
    is followed by self-attention.
    """

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, attn_resolutions: tuple[int, ...],
                 z_channels: int, resolution: int, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        self.conv_in = ImageConv(in_channels, ch, 3, padding=1)  # nn.Conv2d; a Triton kernel for GPU inference
        self.levels = nn.ModuleList()
        res = resolution
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            last = i == len(ch_mult) - 1
            self.levels.append(Level(block_in, block_out, num_res_blocks, res in attn_resolutions, dropout,
                                     None if last else Downsample(block_out)))
            block_in = block_out
            if not last:
                res //= 2
        self.mid = MidBlock(block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, R, R]
        for level in self.levels:
            h = level(h)  # channels ch * mult, halved size after every level but the last
        h = self.mid(h)  # [B, ch * ch_mult[-1], R/f, R/f]
        return self.conv_out(self.norm_out(h, silu=True))  # [B, z_channels, R/f, R/f]


class Decoder(nn.Module):
    """latents [B, z_channels, R / f, R / f] -> images [B, out_channels, R, R] (unbounded; the caller clamps).

    Mirrors the encoder: each level has ``num_res_blocks + 1`` residual blocks, levels run from the widest
    multiplier down, and every level but the first-resolution one ends with an upsampler.
    """

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, attn_resolutions: tuple[int, ...],
                 z_channels: int, resolution: int, out_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, dropout)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            first = i == 0
            self.levels.append(Level(block_in, block_out, num_res_blocks + 1, res in attn_resolutions, dropout,
                                     None if first else Upsample(block_out)))
            block_in = block_out
            if not first:
                res *= 2
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B, ch * ch_mult[-1], R/f, R/f]
        for level in self.levels:
            h = level(h)  # doubled size after every level but the last
        h = self.norm_out(h, silu=True)  # [B, ch * ch_mult[0], R, R]
        w, b = self.conv_out.weight, self.conv_out.bias
        if 9 * w.shape[0] <= 32 and inference_form(h, w, b):
            return conv3x3_to_few_channels(h, w, b)
        return self.conv_out(h)  # [B, out_channels, R, R]

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the GAN's adaptive weight measures gradient norms at."""
        return self.conv_out.weight
