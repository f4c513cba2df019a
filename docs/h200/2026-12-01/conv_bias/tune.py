"""Memory throughput of the channels-last inference kernels (add_biases_, GroupNorm's two passes, the padding) on
vqgan-f16's widest activation, [128, 128, 256, 256] bf16 (2.1 GB), for a few tile sizes and warp counts, against
PyTorch's copy of the same tensor: `python tune.py` prints TB/s (bytes read and written / time) per launch."""
import torch

from regvq_cli.engine.device import cdiv, next_power_of_two
from regvq_cli.tokenizer.bias_pad_kernel import add_biases_kernel, pad_right_bottom_kernel
from regvq_cli.tokenizer.norm_silu_kernel import channel_sums_kernel, scale_shift_kernel


def timed(fn, iters=20):
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters / 1e3


B, C, H, W = 128, 128, 256, 256
P, CP = H * W, next_power_of_two(C)
cl = torch.channels_last
x = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
s = torch.randn_like(x)
bias = torch.randn(C, device="cuda", dtype=torch.bfloat16)
n = x.numel() * 2  # bytes of one tensor
y = torch.empty_like(x)
print(f"torch copy_: {2 * n / timed(lambda: y.copy_(x)) / 1e12:.2f} TB/s")
print(f"torch add (x + s): {3 * n / timed(lambda: torch.add(x, s, out=y)) / 1e12:.2f} TB/s")
for tile in (2048, 4096, 8192, 16384):
    for warps in (4, 8, 16):
        BP = tile // CP
        t = timed(lambda: add_biases_kernel[(cdiv(B * P, BP),)](y, bias, s, bias, B * P, C, CP=CP, BP=BP, SKIP=True,
                                                               SKIP_BIAS=False, num_warps=warps))
        t2 = timed(lambda: add_biases_kernel[(cdiv(B * P, BP),)](y, bias, s, bias, B * P, C, CP=CP, BP=BP, SKIP=False,
                                                                SKIP_BIAS=False, num_warps=warps))
        scale = torch.rand(B, C, device="cuda")
        t3 = timed(lambda: scale_shift_kernel[(B, cdiv(P, BP))](x, bias, scale, scale, y, P, C, CP=CP, BP=BP, SILU=True,
                                                                 HAS_OFFSET=True, num_warps=warps))
        print(f"tile {tile:6d} warps {warps:2d}: add_biases_ with skip {3 * n / t / 1e12:.2f} TB/s, alone "
              f"{2 * n / t2 / 1e12:.2f}, scale_shift (offset, SiLU) {2 * n / t3 / 1e12:.2f}")
for bp in (16, 32, 64):
    for warps in (4, 8):
        for span in (1024, 4096):
            spans = cdiv(P, span)
            sums = torch.empty(B, spans, 2, C, device="cuda")
            t = timed(lambda: channel_sums_kernel[(B, spans)](x, bias, sums, P, C, span, spans, CP=CP, BP=bp,
                                                                HAS_OFFSET=True, num_warps=warps))
            print(f"channel_sums BP {bp} warps {warps} span {span}: {n / t / 1e12:.2f} TB/s")
yp = torch.empty(B, C, H + 1, W + 1, device="cuda", dtype=x.dtype).contiguous(memory_format=cl)
for block in (1024, 2048, 4096, 8192):
    for warps in (4, 8):
        t = timed(lambda: pad_right_bottom_kernel[(cdiv((W + 1) * C, block), H + 1, B)](x, yp, H, W, C, BLOCK=block,
                                                                                       num_warps=warps))
        print(f"pad block {block} warps {warps}: {(n + yp.numel() * 2) / t / 1e12:.2f} TB/s")
