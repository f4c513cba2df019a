"""Quantizers, one file each: ``vq`` (deterministic, VQGAN), ``gumbel`` (taming Gumbel-VQ), ``regvq`` (the paper)."""

from .base import QuantizerOutput
from .gumbel import GumbelQuantizer
from .regvq import RegVQuantizer
from .vq import VectorQuantizer

QUANTIZERS = {"vq": VectorQuantizer, "gumbel": GumbelQuantizer, "regvq": RegVQuantizer}

__all__ = ["QUANTIZERS", "QuantizerOutput", "VectorQuantizer", "GumbelQuantizer", "RegVQuantizer"]
