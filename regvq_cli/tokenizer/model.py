"""The image tokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

The autoencoder is VQGAN's (Esser et al., CVPR 2021); the quantizer is a config field, so the same network can
be trained with deterministic VQ, taming-style Gumbel-VQ, or RegVQ (Zhang et al., CVPR 2023,
arXiv 2303.06424) for like-for-like comparisons.

Inference API (used by encode/decode and the priors): ``encode(images) -> indices``,
``decode(indices) -> images``, ``codebook_size``, ``downsample_factor``, ``grid_size(image_size)``.
Images are float [B, 3, H, W] in [-1, 1]; indices are long [B, h, w]. Call them under
``torch.inference_mode()`` (or ``no_grad``) when no gradients are wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import RegvqError
from .nets import Decoder, Encoder
from .quantizers import QUANTIZERS, GumbelQuantizer, QuantizerOutput, RegVQuantizer, VectorQuantizer


@dataclass
class TokenizerConfig:
    # autoencoder (VQGAN layout)
    image_size: int = 256  # training resolution; attention placement is defined relative to it
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # downsampling factor 2 ** (len - 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    dropout: float = 0.0
    # quantizer
    quantizer: str = "regvq"  # "vq" | "gumbel" | "regvq"
    codebook_size: int = 1024
    embed_dim: int = 256
    # vq options
    vq_ema: bool = False  # EMA codebook updates instead of the codebook loss
    vq_ema_decay: float = 0.99
    vq_l2_norm: bool = False  # cosine-similarity lookup on the unit sphere
    # gumbel / regvq sampling: temperature init * exp(-anneal * step), floored at temp_min
    straight_through: bool = True  # gumbel only: hard one-hot forward (regvq is always straight-through)
    temp_init: float = 1.0
    temp_min: float = 1.0 / 16
    temp_anneal: float = 0.0
    # regvq options
    logits: str = "linear"  # "linear" (1x1 projection) or "distance" (-||z - e||^2 / distance_temp)
    distance_temp: float = 1.0
    logit_init: float = 1.0  # linear logits: scale of the projection's initial weights (ours; 1: PyTorch's default)
    use_prior: bool = True  # prior distribution regularization (KL of the batch histogram to uniform)
    use_mask: bool = True  # stochastic mask regularization
    mask_ratio: float = 0.4
    mask_warmup: int = 0  # steps over which the mask ratio ramps linearly from 0 (0: the full ratio at once)

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if self.quantizer not in QUANTIZERS:
            raise RegvqError(f"unknown quantizer {self.quantizer!r}: choose one of {', '.join(QUANTIZERS)}")
        f = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % f:
            raise RegvqError(f"image size {self.image_size} is not a multiple of the downsampling factor {f}")


class Tokenizer(nn.Module):
    model_type = "tokenizer"
    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = c = config
        net_args = dict(ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks,
                        attn_resolutions=c.attn_resolutions, z_channels=c.z_channels, resolution=c.image_size,
                        dropout=c.dropout)
        self.encoder = Encoder(in_channels=c.in_channels, **net_args)
        self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
        if c.quantizer == "vq":
            self.quantizer = VectorQuantizer(c.codebook_size, c.embed_dim, use_ema=c.vq_ema,
                                             ema_decay=c.vq_ema_decay, l2_norm=c.vq_l2_norm)
        elif c.quantizer == "gumbel":
            self.quantizer = GumbelQuantizer(c.codebook_size, c.embed_dim, straight_through=c.straight_through,
                                             temp_init=c.temp_init, temp_min=c.temp_min, temp_anneal=c.temp_anneal)
        else:
            self.quantizer = RegVQuantizer(c.codebook_size, c.embed_dim, logits=c.logits,
                                           distance_temp=c.distance_temp, logit_init=c.logit_init,
                                           use_prior=c.use_prior, use_mask=c.use_mask, mask_ratio=c.mask_ratio,
                                           mask_warmup=c.mask_warmup, temp_init=c.temp_init, temp_min=c.temp_min,
                                           temp_anneal=c.temp_anneal)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)
        self.decoder = Decoder(out_channels=c.in_channels, **net_args)

    # ---- properties -------------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def grid_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) for images of ``image_size`` (an int for square images, or (H, W))."""
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        f = self.downsample_factor
        if H % f or W % f:
            raise RegvqError(f"image size {H}x{W} is not a multiple of the tokenizer's downsampling factor {f}")
        return H // f, W // f

    # ---- inference --------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, H, W] in [-1, 1] -> indices long [B, H/f, W/f] (deterministic)."""
        self.grid_size((images.shape[-2], images.shape[-1]))
        z = self.quant_conv(self.encoder(images))  # [B, embed_dim, h, w]
        return self.quantizer.encode(z)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """indices long [B, h, w] -> images float [B, 3, h*f, w*f] in [-1, 1]."""
        codes = self.quantizer.decode_indices(indices.long())  # [B, embed_dim, h, w]
        dtype = self.post_quant_conv.weight.dtype
        return self.decoder(self.post_quant_conv(codes.to(dtype))).clamp(-1.0, 1.0)

    # ---- training -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, QuantizerOutput]:
        """images [B, 3, H, W] -> (reconstruction [B, 3, H, W], unclamped; quantizer output)."""
        z = self.quant_conv(self.encoder(images))
        q = self.quantizer(z, step=step)
        recon = self.decoder(self.post_quant_conv(q.codes.to(z.dtype)))
        return recon, q

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.last_layer
