"""Architecture presets for the tokenizer. Any preset can be trained with any quantizer (a config field).

- ``vqgan-f16``: the paper's setting (256 px, 16x16 tokens, N = 1024), VQGAN's f16 autoencoder.
- ``vqgan-f8``: the f8 variant (256 px -> 32x32 tokens), VQGAN's f8 layout.
- ``small-f16``: a narrow f16 model for CPUs at 256 px: 32 channels at full resolution, doubling as the
  resolution halves (32-64-128-128-256), one residual block per level, attention only in the middle block.
- ``small-f8``: the same idea at f8, for small images (e.g. 64-128 px) on a CPU.
- ``tok-test``, ``tok-test-f8``: tiny models for the test suite (32 px).
"""

from __future__ import annotations

from .model import TokenizerConfig

PRESETS: dict[str, TokenizerConfig] = {
    "vqgan-f16": TokenizerConfig(image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                 attn_resolutions=(16,), z_channels=256, embed_dim=256, codebook_size=1024),
    "vqgan-f8": TokenizerConfig(image_size=256, ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2,
                                attn_resolutions=(32,), z_channels=256, embed_dim=256, codebook_size=1024),
    "small-f16": TokenizerConfig(image_size=256, ch=32, ch_mult=(1, 2, 4, 4, 8), num_res_blocks=1,
                                 attn_resolutions=(), z_channels=128, embed_dim=64, codebook_size=1024),
    "small-f8": TokenizerConfig(image_size=128, ch=32, ch_mult=(1, 2, 4, 8), num_res_blocks=1,
                                attn_resolutions=(), z_channels=128, embed_dim=64, codebook_size=1024),
    "tok-test": TokenizerConfig(image_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                                z_channels=16, embed_dim=16, codebook_size=64),
    "tok-test-f8": TokenizerConfig(image_size=32, ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
                                   attn_resolutions=(), z_channels=16, embed_dim=16, codebook_size=64),
}
