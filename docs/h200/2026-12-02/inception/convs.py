"""The input gradient of single convolutions, channels-last against NCHW on the GPU and against the CPU, in fp32
(TF32 off) and bf16, for the kernel shapes of the Inception blocks (random weights, shapes of 17 x 17 maps).
    python docs/h200/2026-12-02/inception/convs.py"""
import torch
import torch.nn.functional as F

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator().manual_seed(0)
shapes = [("3x3 pad 1", 192, 192, (3, 3), (1, 1), 35), ("1x1", 768, 192, (1, 1), (0, 0), 17),
          ("1x7 pad (0,3)", 160, 160, (1, 7), (0, 3), 17), ("7x1 pad (3,0)", 160, 192, (7, 1), (3, 0), 17),
          ("3x3 stride 2", 192, 320, (3, 3), (0, 0), 17)]


def in_grad(x, w, up, pad, stride, device, dtype, fmt, cudnn=True):
    with torch.backends.cudnn.flags(enabled=cudnn, allow_tf32=False):
        x = x.to(device, dtype).contiguous(memory_format=fmt).requires_grad_(True)
        w = w.to(device, dtype).contiguous(memory_format=fmt)
        y = F.conv2d(x, w, None, stride, pad)
        (y.float() * up.to(device)).sum().backward()
    return x.grad.double().cpu()


def cos(u, v):
    return F.cosine_similarity(u.flatten(), v.flatten(), dim=0).item()


for name, cin, cout, k, pad, hw in shapes:
    stride = 2 if "stride" in name else 1
    x = torch.randn(2, cin, hw, hw, generator=g)
    w = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1]) ** 0.5
    oh = (hw + 2 * pad[0] - k[0]) // stride + 1
    ow = (hw + 2 * pad[1] - k[1]) // stride + 1
    up = torch.randn(2, cout, oh, ow, generator=g)
    ref = in_grad(x, w, up, pad, stride, "cpu", torch.float64, torch.contiguous_format)
    for dtype in (torch.float32, torch.bfloat16):
        for fmt, fname in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "CL")):
            for cudnn in (True, False):
                gr = in_grad(x, w, up, pad, stride, "cuda", dtype, fmt, cudnn)
                err = ((gr - ref).norm() / ref.norm()).item()
                print(f"{name:<14} {str(dtype)[6:]:<9} {fname:<4} cudnn={int(cudnn)}  cos {cos(gr, ref):.5f}  rel err {err:.2e}",
                      flush=True)
