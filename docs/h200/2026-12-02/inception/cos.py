"""How far the bf16 loss copy's input gradient is from the fp32 network's, against how far the fp32 gradient moves
under input noise of 1e-3, pixel by pixel and over k x k blocks (the perceptual loss, as the GPU test computes it).
    python docs/h200/2026-12-02/inception/cos.py [--device cuda] [--size 256]"""
import argparse

import torch
import torch.nn.functional as F

from regvq_cli.nets import build_feature_net
from regvq_cli.tokenizer import losses as L
from tests.test_train_speed_options import _loss_and_grad, smooth_images

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--size", type=int, default=256)
a = ap.parse_args()
torch.backends.cudnn.allow_tf32 = False
net = build_feature_net("inception").to(a.device)
half = net.with_compute_dtype(torch.bfloat16)
x = smooth_images(2, a.size, 0).to(a.device)
noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(a.device)
pairs = {"near": (x + 0.1 * noise).clamp(-1, 1), "far": smooth_images(2, a.size, 2).to(a.device),
         "white": torch.rand(x.shape, generator=torch.Generator().manual_seed(3)).to(a.device) * 2 - 1}
wobble = 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(a.device)
print("pair   block  cos(fp32, bf16)  cos(fp32, fp32 at input + 1e-3 noise)")
for name, recon in pairs.items():
    _, g32 = _loss_and_grad(net, recon, x, L.perceptual_loss)
    _, g16 = _loss_and_grad(half, recon, x, L.perceptual_loss)
    _, gw = _loss_and_grad(net, recon + wobble, x, L.perceptual_loss)
    for k in (1, 4, 8):
        def cos(u, v):
            return F.cosine_similarity(F.avg_pool2d(u, k).flatten(), F.avg_pool2d(v, k).flatten(), dim=0).item()
        print(f"{name:<6} {k:>5}  {cos(g32, g16):15.3f}  {cos(g32, gw):15.3f}")
