"""The decoder as it was before this directory's measurements went into the package (commit cb346b7), patched into
the benchmark's process for a "before" row on the same machine start: attention over strided q, k, v, the last
convolution through cuDNN, the upsamplers' transposed form only when compiled.

    PYTHONPATH=.:docs/h200/2026-11-30 python3 -c "import decode_rest.before as b; b.run()" \
      benchmarks/bench_tokenizer.py --preset vqgan-f16 ...

The patched methods live in this module (not __main__), whose globals dynamo's guards can find under runpy.
"""
import runpy
import sys

import torch
import torch.nn.functional as F

import regvq_cli.tokenizer.nets as nets


def attn_forward(self, x):
    B, C, H, W = x.shape
    q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
    q, k, v = (t.reshape(B, 1, C, H * W).transpose(2, 3) for t in (q, k, v))
    h = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(h.transpose(2, 3).reshape(B, C, H, W))


def decoder_forward(self, z):
    h = self.mid(self.conv_in(z))
    for level in self.levels:
        h = level(h)
    return self.conv_out(F.silu(self.norm_out(h)))


def upsample_forward(self, x):
    w = self.conv.weight
    if torch.compiler.is_compiling() and x.device.type in nets.FAST_FORMS_ON and not nets.needs_grad(x, w):
        return F.conv_transpose2d(x, nets.upsampling_weight(w), self.conv.bias, stride=2, padding=1)
    return self.conv(nets.upsample_nearest_2x(x))


def run():
    """Patch the three methods, then run sys.argv[1:] as a script."""
    nets.AttnBlock.forward, nets.Decoder.forward, nets.Upsample.forward = attn_forward, decoder_forward, upsample_forward
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
