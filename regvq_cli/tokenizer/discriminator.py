"""PatchGAN discriminator (the "NLayer" discriminator of pix2pix, Isola et al. 2017, as used by VQGAN).

It maps an image to a grid of real/fake logits, one per overlapping receptive-field patch, so the adversarial
loss judges local texture rather than the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    ndf: int = 64  # width of the first layer; doubles per layer up to 8 * ndf
    n_layers: int = 3  # stride-2 layers after the first; 3 gives 70x70 patches
    norm: str = "batch"  # "batch" (as in VQGAN), "group", or "none"


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class NLayerDiscriminator(nn.Module):
    """images [B, C, H, W] -> patch logits [B, 1, H', W'] (about H / 2**n_layers)."""

    model_type = "patchgan"
    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        ndf, n = config.ndf, config.n_layers
        use_bias = config.norm == "none"  # a norm layer right after makes the conv bias redundant
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = ndf
        for i in range(1, n + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n else 1  # the last hidden layer keeps the resolution
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=use_bias),
                       _norm(config.norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # DCGAN-style init, as VQGAN does for this discriminator
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
