"""The input gradient of the Inception blocks' pools, channels-last against NCHW on the GPU (fp32 and bf16), on
random maps and on ReLU outputs (exact zeros, so windows that tie).
    python docs/h200/2026-12-02/inception/pools.py"""
import torch
import torch.nn.functional as F

g = torch.Generator().manual_seed(0)
pools = {"max 3x3 s2": lambda x: F.max_pool2d(x, 3, 2),
         "avg 3x3 s1 p1 no pad count": lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
         "avg 3x3 s1 p1": lambda x: F.avg_pool2d(x, 3, 1, 1)}
for relu in (False, True):
    for name, pool in pools.items():
        x = torch.randn(2, 288, 35, 35, generator=g)
        x = x.relu() if relu else x
        up = torch.randn(pool(x).shape, generator=g)
        grads = {}
        for dtype in (torch.float32, torch.bfloat16):
            for fmt in (torch.contiguous_format, torch.channels_last):
                xi = x.to("cuda", dtype).contiguous(memory_format=fmt).requires_grad_(True)
                (pool(xi).float() * up.cuda()).sum().backward()
                grads[(dtype, fmt)] = xi.grad.double().cpu()
        xc = x.double().requires_grad_(True)
        (pool(xc) * up.double()).sum().backward()
        for (dtype, fmt), gr in grads.items():
            cos = F.cosine_similarity(gr.flatten(), xc.grad.flatten(), dim=0).item()
            err = ((gr - xc.grad).norm() / xc.grad.norm()).item()
            print(f"{'relu ' if relu else '':<5}{name:<27} {str(dtype)[6:]:<9} {'CL' if fmt == torch.channels_last else 'NCHW':<4}"
                  f" cos {cos:.5f}  rel err {err:.2e}", flush=True)

# the gradient the pool receives, by layout: NCHW-contiguous, channels-last-contiguous, or a channel slice of a
# larger channels-last tensor (as torch.cat's backward hands a branch); the input channels-last or NCHW
print("fp32, avg 3x3 s1 p1 no pad count by the received gradient's layout:")
pool = pools["avg 3x3 s1 p1 no pad count"]
x = torch.randn(2, 32, 35, 35, generator=g)
big = torch.randn(2, 96, 35, 35, generator=g)
ups = {"NCHW": big[:, 64:].contiguous(), "CL": big[:, 64:].contiguous(memory_format=torch.channels_last),
       "CL slice": big.contiguous(memory_format=torch.channels_last)[:, 64:], "NCHW slice": big[:, 64:]}
xc = x.double().requires_grad_(True)
(pool(xc) * big[:, 64:].double()).sum().backward()
for in_fmt, in_name in ((torch.channels_last, "CL"), (torch.contiguous_format, "NCHW")):
    for up_name, up in ups.items():
        xi = x.cuda().contiguous(memory_format=in_fmt).requires_grad_(True)
        pool(xi).backward(up.cuda())
        err = ((xi.grad.double().cpu() - xc.grad).norm() / xc.grad.norm()).item()
        print(f"input {in_name:<5} gradient {up_name:<11} rel err {err:.2e}", flush=True)
