"""A class-conditional AR prior with random weights, over the default tokenizer's codes, saved where `regvq sample -m`
loads it: `python make_prior.py OUT [PRESET]` (default ar-b, LlamaGen's GPT-B size). Its samples are noise-like
token grids; what is timed is the command around them."""
import dataclasses
import sys

import torch

from regvq_cli.engine.checkpoint import save_model
from regvq_cli.priors.presets import model_for, preset

out, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ar-b"
torch.manual_seed(0)
config = dataclasses.replace(preset(name), cond="class", num_classes=10, codebook_size=1024, grid_size=(16, 16),
                             tokenizer="regvq-tokenizer")
print(save_model(model_for(config), out))
