"""vqgan-f16's widest level (two residual blocks at 256 x 256, 128 channels, batch 128, bf16, H200) as the compiled
network runs it, against the same blocks with Triton convolutions that do more in their epilogue: add the bias and
the residual, and write each tile's per-channel mean and sum of squared deviations, from which the next GroupNorm's
statistics follow exactly (Chan's combination) without a pass over the activation. Inductor's normalising pass
(x * scale + shift, SiLU) stays between them. Input: a random activation as the first convolution makes it.
    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/prologue_conv/fused_level.py
    TRITON_INTERPRET=1 PYTHONPATH=. python docs/h200/2026-11-30/prologue_conv/fused_level.py --check   # CPU"""
import json
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from regvq_cli.tokenizer.nets import ResnetBlock, channel_var_mean, group_norm_scale_shift


@triton.jit
def conv_epilogue_kernel(XD, WD, BIAS, R, Y, PMEAN, PM2, H, W, CI: tl.constexpr, CO: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RESIDUAL: tl.constexpr,
                         STATS: tl.constexpr, STAGES: tl.constexpr):
    # y = conv3x3(x) + bias (+ r), x [B, H, W, CI] through the descriptor XD ([1, 1, BM, BK] blocks: a program's
    # BM pixels are a stretch of one row; taps outside the image read zeros), WD over the weight as [9 * CI, CO].
    # With STATS each program writes its tile's mean and sum of squared deviations per channel, of y as stored
    # (bf16): PMEAN, PM2 [B, H * W / BM, CO] float32.
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    tiles_w = W // BM
    tiles = H * tiles_w
    b, r = pid_m // tiles, pid_m % tiles
    h, w0 = r // tiles_w, (r % tiles_w) * BM
    n = pid_n * BN + tl.arange(0, BN)
    KC: tl.constexpr = CI // BK
    acc = tl.zeros((BM, BN), tl.float32)
    for it in tl.range(0, 9 * KC, num_stages=STAGES):
        tap = it // KC
        c0 = (it % KC) * BK
        a = XD.load([b, h + tap // 3 - 1, w0 + tap % 3 - 1, c0]).reshape(BM, BK)
        acc = tl.dot(a, WD.load([tap * CI + c0, pid_n * BN]), acc)
    m = (b * H + h) * W + w0 + tl.arange(0, BM)
    out = m[:, None] * CO + n[None, :]
    acc += tl.load(BIAS + n).to(tl.float32)[None, :]
    if RESIDUAL:
        acc += tl.load(R + out).to(tl.float32)
    y = acc.to(Y.dtype.element_ty)
    tl.store(Y + out, y)
    if STATS:
        v = y.to(tl.float32)
        mean = tl.sum(v, 0) / BM  # [BN]
        d = v - mean[None, :]
        tl.store(PMEAN + pid_m * CO + n, mean)
        tl.store(PM2 + pid_m * CO + n, tl.sum(d * d, 0))


@triton.jit
def combine_kernel(PMEAN, PM2, VAR, MEAN, T, BM: tl.constexpr, C: tl.constexpr, CB: tl.constexpr):
    # Per image and block of CB channels: the mean and variance over T tiles of BM pixels each, from the tiles'
    # means and sums of squared deviations (equal counts: the mean of the means; M2 = sum of M2 + BM * the spread).
    b, c = tl.program_id(0), tl.program_id(1) * CB + tl.arange(0, CB)
    base = b * T * C
    total = tl.zeros((CB,), tl.float32)
    for t in range(T):
        total += tl.load(PMEAN + base + t * C + c)
    mean = total / T
    m2 = tl.zeros((CB,), tl.float32)
    for t in range(T):
        d = tl.load(PMEAN + base + t * C + c) - mean
        m2 += tl.load(PM2 + base + t * C + c) + BM * d * d
    tl.store(VAR + b * C + c, m2 / (T * BM))
    tl.store(MEAN + b * C + c, mean)


def conv_epilogue(x, weight, bias, residual=None, stats=True, bm=128, bk=64, warps=4, stages=3):
    """(y, var_c, mean_c): y = conv2d(x, weight, bias, padding=1) (+ residual), channels-last like x, and y's
    per-channel variance and mean [B, C] float32 (None without stats)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, CI, H, W = x.shape
    CO = weight.shape[0]
    bm, bk = min(bm, W), min(bk, CI)
    x = x.contiguous(memory_format=torch.channels_last)  # a no-op for the compiled normalising pass's output
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    assert W % bm == 0 and CI % bk == 0
    wt = weight.permute(2, 3, 1, 0).reshape(9 * CI, CO).contiguous()
    xd = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1), [1, 1, bm, bk])
    wd = TensorDescriptor.from_tensor(wt, [bk, CO])
    y = torch.empty_strided((B, CO, H, W), (H * W * CO, 1, W * CO, CO), device=x.device, dtype=x.dtype)
    T = H * W // bm
    pm = torch.empty(B, T, CO, device=x.device, dtype=torch.float32) if stats else y
    p2 = torch.empty_like(pm) if stats else y
    conv_epilogue_kernel[(B * T, 1)](xd, wd, bias, residual if residual is not None else y, y, pm, p2, H, W,
                                     CI=CI, CO=CO, BM=bm, BN=CO, BK=bk, RESIDUAL=residual is not None,
                                     STATS=stats, STAGES=stages, num_warps=warps)
    if not stats:
        return y, None, None
    var, mean = torch.empty(B, CO, device=x.device), torch.empty(B, CO, device=x.device)
    cb = min(CO, 64)
    combine_kernel[(B, CO // cb)](pm, p2, var, mean, T, BM=bm, C=CO, CB=cb)
    return y, var, mean


def make_apply(compile):
    def apply(x, s, t):
        return F.silu(x.float() * s[:, :, None, None] + t[:, :, None, None]).to(x.dtype)
    return torch.compile(apply, dynamic=False) if compile else apply


def fused_blocks(blocks, x, var, mean, apply, stats_pass=None):
    """The residual blocks as conv_epilogue and `apply` run them; var, mean: x's per-channel statistics. With
    `stats_pass` the statistics come from that function's pass over each convolution's output instead."""
    def conv(*args, **kwargs):
        if stats_pass is None:
            return conv_epilogue(*args, **kwargs)
        y = conv_epilogue(*args, stats=False, **kwargs)[0]
        return (y, *stats_pass(y))

    for blk in blocks:
        s, t = group_norm_scale_shift(var, mean, blk.norm1.num_groups, blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        h, var, mean = conv(apply(x, s, t), blk.conv1.weight, blk.conv1.bias)
        s, t = group_norm_scale_shift(var, mean, blk.norm2.num_groups, blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        x, var, mean = conv(apply(h, s, t), blk.conv2.weight, blk.conv2.bias, residual=x)
    return x, var, mean


def setup(B, C, H, dtype, device):
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([ResnetBlock(C, C), ResnetBlock(C, C)]).eval().requires_grad_(False)
    for p in blocks.parameters():  # trained-looking norms: gains and biases away from 1 and 0
        if p.dim() == 1:
            p.add_(torch.randn_like(p) * 0.2)
    blocks.to(device, dtype)
    x = (torch.randn(B, C, H, H, device=device) * 0.7 + 0.3).to(dtype).contiguous(memory_format=torch.channels_last)
    return blocks, x


def check():
    blocks, x = setup(2, 32, 8, torch.float32, "cpu")
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    y, v2, m2 = fused_blocks(blocks, x, var, mean, make_apply(False))
    ref = blocks[1](blocks[0](x))
    print("largest difference", (y - ref).abs().max().item(),
          "stats", (v2 - torch.var(ref, dim=(2, 3), correction=0)).abs().max().item(),
          (m2 - ref.mean((2, 3))).abs().max().item())


def main():
    sys.path.insert(0, "benchmarks")
    from bench_tokenizer import busy_gpu_state, timed

    from regvq_cli.engine.runtime import compile_options

    out = os.environ.get("OUT", "results")
    os.makedirs(out, exist_ok=True)
    dev = torch.device("cuda")
    B, C, H = 128, 128, 256
    blocks, x = setup(B, C, H, torch.bfloat16, dev)
    rows = []

    def row(name, seconds, **extra):
        rows.append({"variant": name, "ms": round(seconds * 1000, 3), **extra})
        print(json.dumps(rows[-1]), flush=True)
        json.dump({"torch": torch.__version__, "triton": triton.__version__, "batch": B, "size": H, "channels": C,
                   "rows": rows}, open(f"{out}/fused_level.json", "w"), indent=1)

    with torch.inference_mode():
        stats = torch.compile(channel_var_mean, dynamic=False, options=compile_options())
        plain = torch.compile(lambda x: blocks[1](blocks[0](x)), dynamic=False, options=compile_options())
        apply = make_apply(True)
        fused = lambda x: fused_blocks(blocks, x, *stats(x), apply)  # noqa: E731
        by_pass = lambda x: fused_blocks(blocks, x, *stats(x), apply, stats_pass=stats)  # noqa: E731
        ref, got = plain(x), fused(x)[0]
        diff = (got.float() - ref.float()).abs()
        summary = dict(largest_difference=diff.max().item(), mean_difference=diff.mean().item(),
                       share_differing=(diff > 0).float().mean().item())
        for name, fn in (("compiled blocks (as the network runs them)", plain),
                         ("Triton convolutions with epilogue statistics", fused),
                         ("Triton convolutions, statistics by a pass", by_pass),
                         ("compiled blocks, again", plain), ("Triton, again", fused)):
            row(name, timed(fn, x, dev, 20, 5), gpu_state=busy_gpu_state(fn, x, dev))
        row("difference", 0.0, **summary)
        from bench_sample import profiled
        for name, fn in (("compiled blocks", plain), ("Triton", fused), ("Triton, statistics by a pass", by_pass)):
            row(f"profile, {name}", 0.0, profile=profiled(lambda: fn(x), dev, 12, B))


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
