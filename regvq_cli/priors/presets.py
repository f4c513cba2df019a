"""Architecture presets for the priors. Data-dependent fields (codebook_size, grid_size, cond, classes, text
encoder, tokenizer) are filled in from the token shards at training time with `dataclasses.replace`.

AR sizes follow LlamaGen (Sun et al. 2024): `ar-b` is its GPT-B (12 layers x 768), `ar-l` its GPT-L (24 x 1024).
With a 1024-code vocabulary they have 87M and 306M parameters (LlamaGen's 111M / 343M count its 16384-code
embedding and head). The diffusion presets mirror the widths and depths; their blocks add cross-attention and
adaLN modulation, so they are larger (132M, 461M). `ar-m` (27.0M parameters with text conditioning) is the
largest AR prior whose bf16 file stays under the shipped priors' 60 MB; `diffusion-m` (7 layers x 384, 27.5M with
text conditioning, 55 MB) is its diffusion counterpart, for comparing the two kinds at the size they can ship
(`diffusion-small`, 8 layers, is 31.2M: 62 MB).
"""

from __future__ import annotations

from regvq_cli.priors.ar import ARConfig
from regvq_cli.priors.diffusion import DiffusionConfig

PRESETS: dict[str, ARConfig | DiffusionConfig] = {
    # tiny, for tests: runs in milliseconds on a CPU
    "ar-test": ARConfig(codebook_size=16, grid_size=(4, 4), dim=32, n_layers=2, n_heads=2),
    "ar-small": ARConfig(dim=384, n_layers=8, n_heads=6),
    "ar-m": ARConfig(dim=512, n_layers=8, n_heads=8),
    "ar-b": ARConfig(dim=768, n_layers=12, n_heads=12),
    "ar-l": ARConfig(dim=1024, n_layers=24, n_heads=16),
    "diffusion-test": DiffusionConfig(codebook_size=16, grid_size=(4, 4), dim=32, n_layers=2, n_heads=2,
                                      num_timesteps=20),
    "diffusion-small": DiffusionConfig(dim=384, n_layers=8, n_heads=6),
    "diffusion-m": DiffusionConfig(dim=384, n_layers=7, n_heads=6),
    "diffusion-b": DiffusionConfig(dim=768, n_layers=12, n_heads=12),
    "diffusion-l": DiffusionConfig(dim=1024, n_layers=24, n_heads=16),
}


def preset(name: str):
    """The config of a preset (a fresh copy), or a RegvqError naming the known presets."""
    import dataclasses

    from regvq_cli.errors import RegvqError

    if name not in PRESETS:
        raise RegvqError(f"unknown prior preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def model_for(config):
    """Build the prior a config describes (ARPrior for ARConfig, DiffusionPrior for DiffusionConfig)."""
    from regvq_cli.priors.ar import ARPrior
    from regvq_cli.priors.diffusion import DiffusionPrior

    return (ARPrior if isinstance(config, ARConfig) else DiffusionPrior)(config)
