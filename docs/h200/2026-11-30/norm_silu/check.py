"""GroupNorm + SiLU over channels-last activations (nets.group_norm_channels_last) on a GPU: against float64's
F.group_norm in bf16, and timed over the default tokenizer's widest activation at batch 128 against PyTorch's
GroupNorm and SiLU on the NCHW activation (the eager network's path before it)."""
import torch
import torch.nn.functional as F

from regvq_cli.tokenizer.nets import group_norm_channels_last

torch.manual_seed(0)
for B, C, H, W, G in ((4, 128, 64, 64, 32), (2, 512, 16, 16, 32), (3, 96, 37, 29, 24)):
    x = (torch.randn(B, C, H, W, device="cuda") * 2 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, device="cuda").bfloat16(), torch.randn(C, device="cuda").bfloat16()
    want = F.silu(F.group_norm(x.double(), G, w.double(), b.double(), 1e-6))
    got = group_norm_channels_last(x, G, w, b, 1e-6, silu=True)
    ref = F.silu(F.group_norm(x.contiguous(), G, w, b, 1e-6))  # PyTorch's, bf16
    print(f"{(B, C, H, W)}: max error {(got.double() - want).abs().max().item():.4f} (PyTorch's bf16 "
          f"{(ref.double() - want).abs().max().item():.4f}), channels-last {got.is_contiguous(memory_format=torch.channels_last)}")


def ms(fn, n=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


for C, R in ((128, 256), (256, 64)):
    x = torch.randn(128, C, R, R, device="cuda").bfloat16()
    cl = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(C, device="cuda").bfloat16(), torch.zeros(C, device="cuda").bfloat16()
    new = ms(lambda: group_norm_channels_last(cl, 32, w, b, 1e-6, silu=True))
    old = ms(lambda: F.silu(F.group_norm(x, 32, w, b, 1e-6)))
    floor = 3 * x.numel() * 2 / 4.3e12 * 1e3  # read twice, write once
    print(f"[128, {C}, {R}, {R}] bf16: channels-last kernels {new:.3f} ms, PyTorch NCHW GroupNorm + SiLU {old:.3f} ms, "
          f"bandwidth floor of the kernels' 3 passes {floor:.3f} ms")
