"""Decoder variants to time in the whole compiled network before any goes into the package, as patches applied in
the benchmark's process (vqgan-f16 decode was 1,730-1,748 images/s at batch 128 against its 1,800 target):

- conv_out_gemm: the decoder's last convolution (128 -> 3 channels) in compiled networks as a GEMM of each pixel's
  channels times every tap's weights, then the taps' partial sums shifted into place and added (alone at batch
  128: 1.11 ms against cuDNN's 2.68, probe_tok_rgb_convs.py's conv_out_gemm)
- attn_contiguous: the attention blocks' q, k, v made contiguous [B, 1, HW, C], so that the compiled decoder can
  take the memory-efficient kernel where inductor now lowers its attention to bmm + softmax (1.75 ms a call at
  batch 128; the encoder's, with channels-last q, k, v, takes the kernel)
- eager_transposed: the eager decoder's upsamplers as transposed convolutions too (the compiled ones are)

    REGVQ_DECODE_VARIANTS=conv_out_gemm,attn_contiguous PYTHONPATH=.:docs/h200/2026-11-30 python3 -c \
      "import decode_rest.decode_variants as v; v.run()" benchmarks/bench_tokenizer.py --preset vqgan-f16 ...
    PYTHONPATH=.:docs/h200/2026-11-30 python3 docs/h200/2026-11-30/decode_rest/decode_variants.py --check

All three went into the package after these runs (nets.conv3x3_to_few_channels, AttnBlock, Upsample; raw results
in results/); before.py patches the decoder as it was, for a "before" row (landed/, run_landed.sh).

The patched methods live in this module (not __main__), whose globals dynamo's guards can find under runpy.
"""
import os
import runpy
import sys

import torch
import torch.nn.functional as F

import regvq_cli.tokenizer.nets as nets
from probe_tok_rgb_convs import conv_out_gemm

PLAIN_DECODER_FORWARD = nets.Decoder.forward
PLAIN_UPSAMPLE_FORWARD = nets.Upsample.forward


def decoder_forward_gemm_out(self, z):
    if not torch.compiler.is_compiling():
        return PLAIN_DECODER_FORWARD(self, z)
    h = self.mid(self.conv_in(z))
    for level in self.levels:
        h = level(h)
    return conv_out_gemm(F.silu(self.norm_out(h)), self.conv_out.weight, self.conv_out.bias)


def attn_forward_contiguous(self, x):
    B, C, H, W = x.shape
    q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
    q, k, v = (t.reshape(B, 1, C, H * W).transpose(2, 3).contiguous() for t in (q, k, v))
    h = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(h.transpose(2, 3).reshape(B, C, H, W))


def upsample_forward_transposed(self, x):
    w = self.conv.weight
    if not nets.needs_grad(x, w):
        return F.conv_transpose2d(x, nets.upsampling_weight(w), self.conv.bias, stride=2, padding=1)
    return PLAIN_UPSAMPLE_FORWARD(self, x)


def apply(names):
    for name in names:
        if name == "conv_out_gemm":
            nets.Decoder.forward = decoder_forward_gemm_out
        elif name == "attn_contiguous":
            nets.AttnBlock.forward = attn_forward_contiguous
        elif name == "eager_transposed":
            nets.Upsample.forward = upsample_forward_transposed
        elif name:
            raise SystemExit(f"unknown variant {name!r}")


def run():
    """Apply REGVQ_DECODE_VARIANTS, then run sys.argv[1:] as a script."""
    apply(os.environ.get("REGVQ_DECODE_VARIANTS", "").split(","))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


def check():
    """Each variant against the plain decoder in float32 on the CPU (compiling faked, so the patched forms run)."""
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tok-test"]).eval()
    z = torch.randn(2, model.decoder.conv_in.in_channels, 8, 8)
    with torch.no_grad():
        want = model.decoder(z)
        torch.compiler.is_compiling = lambda: True
        apply(["conv_out_gemm", "attn_contiguous", "eager_transposed"])
        got = model.decoder(z)
    print("largest difference from the plain decoder (float32):", (got - want).abs().max().item())
    assert (got - want).abs().max() < 1e-4


if __name__ == "__main__":
    check()
