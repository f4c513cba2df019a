"""benchmarks/kv_cache_quality.py with the query quantized too, wherever the cache is int8: each query vector (one
position of one head) as ar.quantize rounds a key, attended as dequantized. That is what a key product of int8
query and int8 key (dp4a, four products an instruction) would compute, up to float32 rounding; this measures what
it costs in the predictions before any kernel does it.

    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/query_int8_quality.py [--quantize-query] \\
        --model regvq-seg2img --scenes 16 -n 2 --json
"""
import sys

import torch

sys.path.insert(0, "benchmarks")
import regvq_cli.priors.ar as ar  # noqa: E402

int8_cache = {"on": False}  # whether the attention running now reads an int8 cache
attention_forward = ar.Attention.forward


def forward(self, x, cos, sin, mask, is_causal, cache, layer, pos0, window=None):
    int8_cache["on"] = cache is not None and cache.k_scale is not None
    return attention_forward(self, x, cos, sin, mask, is_causal, cache, layer, pos0, window)


class QuantizedQueryF:
    """torch.nn.functional, with scaled_dot_product_attention quantizing the query under an int8 cache."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def scaled_dot_product_attention(self, q, k, v, **kw):
        if int8_cache["on"]:
            q = ar.dequantize(*ar.quantize(q), q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)


if "--quantize-query" in sys.argv:
    sys.argv.remove("--quantize-query")
    ar.F = QuantizedQueryF()
    ar.Attention.forward = forward
import kv_cache_quality  # noqa: E402

sys.exit(kv_cache_quality.main(sys.argv[1:]))
