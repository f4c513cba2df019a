"""VGG-16/19 feature extractors (Simonyan & Zisserman 2015), our own definition, for perceptual and
contrastive losses; and the LPIPS variant (Zhang et al., CVPR 2018: VGG-16 features with learned per-channel
weights).

No weights ship with regvq and none can be downloaded here: the user supplies them.

- ``vgg16`` / ``vgg19``: a torchvision ImageNet state dict (``vgg16-397923af.pth``; read with
  ``torch.load(weights_only=True)``) or a ``.safetensors`` file with the same ``features.N.*`` keys.
  Inputs are normalised with the ImageNet mean and std.
- ``lpips``: the VGG-16 weights above plus the LPIPS linear layers (``vgg.pth`` of the lpips package, keys
  ``linK.model.1.weight``), given as two files or as one file holding both (an ``lpips.LPIPS`` state dict,
  whose ``net.sliceK.N.*`` keys are understood too). Inputs get LPIPS's shift and scale.

The module keeps the layer indices of torchvision's ``features`` so the keys line up, and stops after the
last tapped ReLU.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import RegvqError

CONFIGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}
# indices in `features` of relu1_2, relu2_2, relu3_3 (relu3_4), relu4_3 (relu4_4), relu5_3 (relu5_4)
TAPS = {"vgg16": (3, 8, 15, 22, 29), "vgg19": (3, 8, 17, 26, 35)}
TAP_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' ScalingLayer, for inputs in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a PyTorch state dict file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise RegvqError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them, corrupt files
        raise RegvqError(f"cannot read {path} as a plain PyTorch state dict ({type(e).__name__}): "
                         "give a .safetensors file or a torchvision/lpips .pth state dict") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise RegvqError(f"{path} does not hold a state dict")
    return sd


class VGGFeatures(nn.Module):
    """Frozen VGG features. ``feature_maps``: images [B, 3, H, W] in [-1, 1] -> the five tapped ReLU maps."""

    def __init__(self, arch: str = "vgg16", lpips: bool = False):
        super().__init__()
        if arch not in CONFIGS:
            raise RegvqError(f"unknown VGG {arch!r}: choose vgg16 or vgg19")
        if lpips and arch != "vgg16":
            raise RegvqError("LPIPS weights exist for vgg16 only")
        self.arch, self.lpips = arch, lpips
        self.taps = TAPS[arch]
        layers: list[nn.Module] = []
        ch = 3
        for v in CONFIGS[arch]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU()]
                ch = v
        self.features = nn.Sequential(*layers[: self.taps[-1] + 1])
        if lpips:
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
            shift, scale = torch.tensor(LPIPS_SHIFT), torch.tensor(LPIPS_SCALE)
        else:  # [-1, 1] -> [0, 1] -> ImageNet normalisation, folded into one affine map
            std = torch.tensor(IMAGENET_STD)
            shift = (torch.tensor(IMAGENET_MEAN) - 0.5) * 2
            scale = std * 2
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)

    @property
    def channel_weights(self) -> list[torch.Tensor] | None:
        """LPIPS' per-channel weights of each tapped layer ([C] each), or None for plain VGG."""
        if not self.lpips:
            return None
        return [lin.weight.reshape(-1) for lin in self.lins]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def load_weights(self, paths: list[str | Path]) -> None:
        """Load from one or more files (see the module docstring); every parameter must be provided."""
        ours = dict(self.state_dict())
        found: dict[str, torch.Tensor] = {}
        for path in paths:
            for key, value in read_state_dict(path).items():
                name = self._map_key(key)
                if name in ours:
                    found[name] = value
        missing = sorted(set(ours) - set(found))
        if missing:
            raise RegvqError(f"the {self.arch}{' LPIPS' if self.lpips else ''} weights lack {', '.join(missing[:6])}"
                             f"{' ...' if len(missing) > 6 else ''}: check the weights file(s)")
        for name, value in found.items():
            if value.shape != ours[name].shape:
                raise RegvqError(f"weight {name} has shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
        self.load_state_dict(found, strict=True)

    @staticmethod
    def _map_key(key: str) -> str:
        m = re.fullmatch(r"net\.slice\d+\.(\d+)\.(weight|bias)", key)  # lpips.LPIPS backbone
        if m:
            return f"features.{m.group(1)}.{m.group(2)}"
        m = re.fullmatch(r"(?:net\.)?lin(\d)\.model\.1\.weight", key)  # lpips linear layers
        if m:
            return f"lins.{m.group(1)}.weight"
        return key
