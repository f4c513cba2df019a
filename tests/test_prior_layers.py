"""The transformer pieces the priors share: RMSNorm and rotary embedding against their formulas."""

import math

import pytest
import torch

from regvq_cli.priors.layers import CPU_FEW_ROWS, Linear, RMSNorm, apply_rope, rope_cos_sin


def reference_rms_norm(x, weight, eps):
    """x / rms(x) in float32, cast back to x's dtype, times the gain (type promotion as PyTorch does)."""
    y = x.float()
    y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y * weight if weight is not None else y


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.float32, None)])
def test_rms_norm_is_the_formula(x_dtype, w_dtype):
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5, affine=w_dtype is not None)
    if norm.weight is not None:
        norm.weight.data = torch.randn(48).to(w_dtype)
    x = (3 * torch.randn(2, 5, 48)).to(x_dtype)
    want = reference_rms_norm(x, norm.weight, norm.eps)
    got = norm(x)
    assert got.dtype == want.dtype and torch.equal(got, want)  # bf16 x with an fp32 gain (autocast) promotes


def test_rms_norm_in_bf16_is_close_to_fp32():
    torch.manual_seed(1)
    norm = RMSNorm(64)
    norm.weight.data.normal_()
    x = torch.randn(4, 64)
    full = norm(x)
    half = norm.to(torch.bfloat16)(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.02)
    assert norm(torch.zeros(1, 64, dtype=torch.bfloat16)).abs().max() == 0  # eps keeps zero rows finite


def test_rope_is_the_pairwise_rotation():
    """Feature i and i + hd/2 form a pair, rotated by the angle position * theta^(-2i/hd)."""
    torch.manual_seed(3)
    hd, positions = 8, torch.tensor([0, 1, 5, 300])
    x = torch.randn(2, 3, 4, hd)
    cos, sin = rope_cos_sin(positions, hd)
    got = apply_rope(x, cos, sin)
    want = torch.empty_like(x)
    for j, p in enumerate(positions.tolist()):
        for i in range(hd // 2):
            a = p * 10000.0 ** (-2 * i / hd)
            x1, x2 = x[..., j, i], x[..., j, i + hd // 2]
            want[..., j, i] = x1 * math.cos(a) - x2 * math.sin(a)
            want[..., j, i + hd // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_rope_rotates_q_and_k_together_as_separately_and_keeps_dot_products_relative():
    torch.manual_seed(2)
    hd = 8
    qk = torch.randn(2, 1, 2, 3, hd)  # [q/k, B, H, n, hd]
    cos, sin = rope_cos_sin(torch.tensor([4, 5, 6]), hd)
    together = apply_rope(qk, cos, sin)
    assert torch.equal(together[0], apply_rope(qk[0], cos, sin)) and torch.equal(together[1], apply_rope(qk[1], cos, sin))
    # a rotation: norms kept; <R(p) q, R(p') k> depends only on p - p'
    torch.testing.assert_close(together.norm(dim=-1), qk.norm(dim=-1))
    q, k = torch.randn(hd), torch.randn(hd)

    def dot(p_q, p_k):
        cq, sq = rope_cos_sin(torch.tensor([p_q]), hd)
        ck, sk = rope_cos_sin(torch.tensor([p_k]), hd)
        return (apply_rope(q[None], cq, sq) * apply_rope(k[None], ck, sk)).sum().item()

    assert math.isclose(dot(7, 3), dot(14, 10), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(dot(7, 3), dot(7, 4), rel_tol=1e-3)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_is_nn_linear_whichever_way_it_multiplies(bias):
    """Linear on a CPU computes 2 to CPU_FEW_ROWS rows as W @ x^T and others as F.linear: the same results (to
    float32 rounding) for any leading shape, a contiguous output, gradients included, and under bf16 autocast."""
    torch.manual_seed(0)
    ours, ref = Linear(48, 40, bias=bias), torch.nn.Linear(48, 40, bias=bias)
    ref.load_state_dict(ours.state_dict())
    for shape in ((1, 48), (2, 1, 48), (CPU_FEW_ROWS, 48), (CPU_FEW_ROWS + 1, 48), (3, 5, 48)):
        x = torch.randn(shape, requires_grad=True)
        y, want = ours(x), ref(x)
        assert y.shape == want.shape and y.is_contiguous()
        torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
        g, = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(g, torch.autograd.grad(want.sum(), x)[0], atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(2, 1, 48)
        y = ours(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref(x).float(), atol=0.05, rtol=0.02)
