"""Priors over token grids: an autoregressive transformer (ar.py) and VQ-Diffusion-style discrete diffusion
(diffusion.py), one conditioning interface for both (conditioning.py), samplers (sampling.py), architecture
presets (presets.py) and the training loop (training.py).

Importing this package does not import torch; the submodules do.
"""
