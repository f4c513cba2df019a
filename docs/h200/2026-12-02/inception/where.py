"""Where the bf16 loss copy's input gradient parts from fp32's on a GPU (cos.py: about 0.87 on an H200 against 0.96-0.99
for the same copy on a CPU): the same perceptual-loss gradient, one pair at a time, for several forms of the copy,
and for each of the four feature layers alone.
    python docs/h200/2026-12-02/inception/where.py [--size 256]"""
import argparse
import contextlib

import torch
import torch.nn.functional as F

from regvq_cli.nets import build_feature_net
from regvq_cli.tokenizer import losses as L
from tests.test_train_speed_options import smooth_images

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=256)
a = ap.parse_args()
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def grad(net, recon, x, layers=None, ctx=contextlib.nullcontext):
    with ctx():
        r = recon.clone().requires_grad_(True)
        with torch.no_grad():
            ft = net.feature_maps(x, layers)
        L.perceptual_loss(net.feature_maps(r, layers), ft).backward()
    return r.grad.double().cpu()


def cos(u, v):
    return F.cosine_similarity(u.flatten(), v.flatten(), dim=0).item()


def no_cudnn():
    return torch.backends.cudnn.flags(enabled=False)


base = build_feature_net("inception")
x0 = smooth_images(2, a.size, 0)
pairs = {"near": (x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1),
         "white": torch.rand(x0.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1}
forms = {}
for device in ("cuda", "cpu"):
    net = build_feature_net("inception").to(device)
    forms[device] = {"fp32 file": (net, contextlib.nullcontext), "bf16 copy": (net.with_compute_dtype(torch.bfloat16),
                     contextlib.nullcontext)}
cuda = forms["cuda"]
cuda["fp32 copy"] = (cuda["fp32 file"][0].with_compute_dtype(torch.float32), contextlib.nullcontext)
cuda["fp16 copy"] = (cuda["fp32 file"][0].with_compute_dtype(torch.float16), contextlib.nullcontext)
nchw = cuda["fp32 file"][0].with_compute_dtype(torch.bfloat16)
nchw.memory_format = torch.contiguous_format
nchw.to(memory_format=torch.contiguous_format)
cuda["bf16 copy, NCHW"] = (nchw, contextlib.nullcontext)
cuda["bf16 copy, cuDNN off"] = (cuda["bf16 copy"][0], no_cudnn)
for name, recon in pairs.items():
    for device, fs in forms.items():
        x, r = x0.to(device), recon.to(device)
        ref = grad(fs["fp32 file"][0], r, x)
        for form, (net, ctx) in fs.items():
            if form == "fp32 file":
                continue
            g = grad(net, r, x, ctx=ctx)
            print(f"{name:<6} {device:<5} {form:<22} cos {cos(ref, g):.3f}  |g|/|ref| {g.norm() / ref.norm():.3f}",
                  flush=True)
        for layer in fs["fp32 file"][0].feature_layers:
            ref1 = grad(fs["fp32 file"][0], r, x, (layer,))
            g1 = grad(fs["bf16 copy"][0], r, x, (layer,))
            print(f"{name:<6} {device:<5} bf16 copy, {layer:<11} cos {cos(ref1, g1):.3f}", flush=True)
