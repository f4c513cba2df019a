"""A tiny model type that follows the model convention, for checkpoint and resolver tests."""

import dataclasses

import torch


@dataclasses.dataclass
class TinyConfig:
    width: int = 4
    codebook_size: int = 16
    image_size: int = 8
    tied: bool = False


class Tiny(torch.nn.Module):
    """A Linear, optionally with a tied second one, and a buffer."""

    model_type = "tiny"
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.inp = torch.nn.Linear(config.width, config.width)
        self.out = torch.nn.Linear(config.width, config.width, bias=False)
        if config.tied:
            self.out.weight = self.inp.weight
        self.register_buffer("counts", torch.zeros(config.codebook_size))
