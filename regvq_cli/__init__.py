"""regvq: image tokenizers with Regularized Vector Quantization, token shards, and priors."""

__version__ = "0.1.0"
