"""The quantizers' math: RegVQ's prior KL and stochastic mask, straight-through estimators, VQ losses and EMA."""

import math

import pytest
import torch
import torch.nn.functional as F

from regvq_cli.tokenizer.quantizers import GumbelQuantizer, RegVQuantizer, VectorQuantizer
from regvq_cli.tokenizer.quantizers.base import all_reduce_sum_with_grad, straight_through_one_hot, temperature_at
from regvq_cli.tokenizer.quantizers.regvq import kl_to_uniform


def distance_regvq(codebook, **kw):
    """A RegVQ quantizer with distance logits and a given codebook [N, D] (so choices are controllable)."""
    kw.setdefault("distance_temp", 0.01)
    q = RegVQuantizer(codebook.shape[0], codebook.shape[1], logits="distance", **kw)
    with torch.no_grad():
        q.embedding.weight.copy_(codebook)
    return q


def grid_of(codebook, idx):
    """Latents [1, D, 1, len(idx)] placed exactly on the codes idx."""
    return codebook[torch.tensor(idx)].t()[None, :, None, :].clone()


def test_kl_to_uniform_extremes():
    n = 16
    assert kl_to_uniform(torch.full((n,), 1.0 / n)).item() == pytest.approx(0.0, abs=1e-6)
    one = torch.zeros(n)
    one[3] = 1.0
    assert kl_to_uniform(one).item() == pytest.approx(math.log(n), rel=1e-6)
    half = torch.zeros(n)
    half[:2] = 0.5
    assert kl_to_uniform(half).item() == pytest.approx(math.log(n) - math.log(2), rel=1e-6)  # log N - H


def test_prior_kl_uses_the_batch_histogram_not_positions():
    torch.manual_seed(0)
    N = 4
    codebook = torch.eye(N) * 3
    q = distance_regvq(codebook, use_mask=False).train()
    # every position is certain of its code, but the batch uses all codes equally: batch KL = 0 ...
    z = grid_of(codebook, [0, 1, 2, 3, 0, 1, 2, 3])
    out = q(z)
    assert out.losses["prior_kl"].item() == pytest.approx(0.0, abs=1e-5)
    # ... while a per-position KL to uniform (taming's form) is near its maximum log N
    probs = F.softmax(out.logits, dim=1)
    per_position = (probs * torch.log(probs * N + 1e-10)).sum(1).mean()
    assert per_position.item() > 0.9 * math.log(N)
    # one code for the whole batch: KL = log N
    z_same = grid_of(codebook, [2] * 8)
    assert q(z_same).losses["prior_kl"].item() == pytest.approx(math.log(N), rel=1e-4)
    # two codes used equally: log N - log 2
    assert q(grid_of(codebook, [0, 1] * 4)).losses["prior_kl"].item() == pytest.approx(math.log(2), rel=1e-4)


def test_prior_kl_counts_every_position_of_every_image():
    N = 4
    codebook = torch.eye(N) * 3
    q = distance_regvq(codebook, use_mask=False).train()
    # image 0 uses codes {0, 1}, image 1 uses {2, 3}: each image alone has KL log 2, the batch KL 0
    z = torch.cat([grid_of(codebook, [0, 1, 0, 1]), grid_of(codebook, [2, 3, 2, 3])])
    assert q(z).losses["prior_kl"].item() == pytest.approx(0.0, abs=1e-5)
    assert q(z[:1]).losses["prior_kl"].item() == pytest.approx(math.log(2), rel=1e-4)


def test_prior_kl_gradient_is_finite_with_unused_codes_and_reaches_the_logits():
    torch.manual_seed(0)
    q = RegVQuantizer(32, 8, use_mask=False).train()
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(z)
    out.losses["prior_kl"].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert q.proj.weight.grad.abs().sum() > 0
    assert out.stats["counts"].sum().item() == 32  # 2 * 4 * 4 positions


def test_use_prior_off_moves_the_kl_to_stats():
    q = RegVQuantizer(16, 4, use_prior=False).train()
    out = q(torch.randn(2, 4, 3, 3))
    assert "prior_kl" not in out.losses and "prior_kl" in out.stats


def test_mask_ratio_in_expectation_and_fresh_each_call():
    torch.manual_seed(0)
    q = RegVQuantizer(16, 4, mask_ratio=0.4).train()
    z = torch.randn(8, 4, 32, 32)
    m1, m2 = q(z).mask, q(z).mask
    assert m1.float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert m2.float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert (m1 != m2).float().mean().item() > 0.3  # independent draws differ at about 2 * 0.4 * 0.6 = 48%
    q.mask_ratio = 0.0
    assert not q(z).mask.any()
    q.mask_ratio = 1.0
    assert q(z).mask.all()
    q.use_mask = False
    assert not q(z).mask.any()
    q.use_mask, q.mask_ratio = True, 0.4
    q.eval()
    assert not q(z).mask.any()


def test_mask_warmup_ramps_the_ratio_linearly():
    torch.manual_seed(0)
    q = RegVQuantizer(16, 4, mask_ratio=0.4, mask_warmup=100).train()
    z = torch.randn(8, 4, 32, 32)
    assert q.mask_ratio_at(0) == 0.0 and q.mask_ratio_at(50) == pytest.approx(0.2) and q.mask_ratio_at(500) == 0.4
    assert not q(z, step=0).mask.any()
    assert q(z, step=50).mask.float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert q(z, step=100).mask.float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert q(z).mask.float().mean().item() == pytest.approx(0.4, abs=0.02)  # no step given: the full ratio


def test_sharpness_stats_max_prob_and_sample_agreement():
    """max_prob is the mean top-1 probability; sample_agreement how often a Gumbel sample is the argmax code."""
    torch.manual_seed(0)
    codebook = torch.randn(16, 4)
    z = grid_of(codebook, list(range(16)) * 64)  # every position exactly on a code
    flat = distance_regvq(codebook, distance_temp=1e6, mask_ratio=0.5).train()  # ~uniform distributions
    st = flat(z).stats
    assert st["max_prob"].item() == pytest.approx(1 / 16, rel=1e-3)
    assert st["sample_agreement"].item() == pytest.approx(1 / 16, abs=0.03)  # a sample is a uniform draw
    sharp = distance_regvq(codebook, distance_temp=1e-4, mask_ratio=0.5).train()  # one-hot distributions
    st = sharp(z).stats
    assert st["max_prob"].item() == pytest.approx(1.0) and st["sample_agreement"].item() == 1.0
    sharp.use_mask = False
    assert "sample_agreement" not in sharp(z).stats


@pytest.mark.parametrize("logits", ["linear", "distance"])
def test_forward_is_one_hot_codes_and_eval_is_deterministic(logits):
    torch.manual_seed(0)
    q = RegVQuantizer(32, 8, logits=logits, mask_ratio=0.5).train()
    z = torch.randn(2, 8, 5, 5)
    out = q(z)
    # forward value of the codes: exactly a codebook row at every position
    e = q.embedding.weight
    flat = out.codes.permute(0, 2, 3, 1).reshape(-1, 8)
    dists = (flat.detach()[:, None, :] - e.detach()[None]).abs().sum(-1)  # [M, N], exact zeros for a match
    assert torch.equal(dists.min(1).values, torch.zeros(flat.shape[0]))
    # the code used is the argmax where unmasked and the sampled one where masked
    assert torch.allclose(out.codes, out.sampled_codes, atol=1e-6)
    unmasked = ~out.mask
    assert torch.allclose(out.codes.permute(0, 2, 3, 1)[unmasked], out.argmax_codes.permute(0, 2, 3, 1)[unmasked])
    assert torch.equal(out.indices, out.logits.argmax(1))
    # a sampled code differs from the argmax somewhere (Gumbel noise at temperature 1 on random logits)
    assert (out.codes.permute(0, 2, 3, 1)[out.mask] != out.argmax_codes.permute(0, 2, 3, 1)[out.mask]).any()
    q.eval()
    assert torch.equal(q.encode(z), q.encode(z))
    assert torch.equal(q(z).indices, q.encode(z))
    assert torch.allclose(q(z).codes, q.decode_indices(q.encode(z)))


def test_straight_through_backward_is_the_softmax_jacobian():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 3, 3, requires_grad=True)
    probs = F.softmax(logits, dim=1)
    idx = logits.argmax(1)
    st = straight_through_one_hot(idx, probs)
    assert torch.equal(st.detach(), F.one_hot(idx, 6).permute(0, 3, 1, 2).float())
    r = torch.randn_like(st)
    (g_st,) = torch.autograd.grad((st * r).sum(), logits)
    logits2 = logits.detach().requires_grad_(True)
    (g_soft,) = torch.autograd.grad((F.softmax(logits2, 1) * r).sum(), logits2)
    assert torch.allclose(g_st, g_soft, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_gradients_reach_encoder_and_logits_through_argmax_and_gumbel_paths(ratio):
    """ratio 0: every position takes the argmax path; ratio 1: every position the Gumbel path."""
    torch.manual_seed(0)
    q = RegVQuantizer(16, 4, mask_ratio=ratio, use_prior=False).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    target = torch.randn_like(out.codes)
    ((out.codes - target) ** 2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.proj.weight.grad.abs().sum() > 0
    assert q.embedding.weight.grad.abs().sum() > 0  # the decoder path trains the codebook


def test_gradient_paths_are_the_ones_documented():
    """Argmax positions back-propagate through softmax(logits), masked ones through the Gumbel-softmax: with
    the same forward codes, the two gradients differ."""
    torch.manual_seed(0)
    z = torch.randn(1, 4, 4, 4)
    grads = {}
    for ratio in (0.0, 1.0):
        torch.manual_seed(1)
        q = RegVQuantizer(8, 4, mask_ratio=ratio, use_prior=False, temp_init=0.5).train()
        zz = z.clone().requires_grad_(True)
        out = q(zz)
        (out.codes * torch.arange(4.0).view(1, 4, 1, 1)).sum().backward()
        grads[ratio] = zz.grad
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_pcl_inputs_carry_no_gradient():
    q = RegVQuantizer(16, 4).train()
    out = q(torch.randn(2, 4, 3, 3, requires_grad=True))
    assert not out.sampled_codes.requires_grad and not out.argmax_codes.requires_grad
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, 3, 3)


def test_vq_losses_and_straight_through():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    e = q.embedding.weight
    quant = e[out.indices]  # [B, h, w, D]
    zf = z.permute(0, 2, 3, 1)
    assert torch.allclose(out.codes.permute(0, 2, 3, 1), quant, atol=1e-6)
    assert torch.equal(out.indices, ((zf.reshape(-1, 1, 4) - e[None]) ** 2).sum(-1).argmin(1).reshape(2, 3, 3))
    mse = ((zf - quant) ** 2).mean()
    assert out.losses["commitment"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out.losses["codebook"].item() == pytest.approx(mse.item(), rel=1e-5)
    # commitment trains the encoder only, codebook loss the codebook only
    (g_z,) = torch.autograd.grad(out.losses["commitment"], z, retain_graph=True)
    assert g_z.abs().sum() > 0
    assert torch.autograd.grad(out.losses["codebook"], e, retain_graph=True)[0].abs().sum() > 0
    # straight-through: d codes / d z is the identity
    (g,) = torch.autograd.grad(out.codes.sum(), z)
    assert torch.allclose(g, torch.ones_like(g))


def test_vq_ema_updates_the_codebook_towards_assigned_vectors():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 2, use_ema=True, ema_decay=0.5).train()
    assert not q.embedding.weight.requires_grad
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
        q.ema_embed_sum.copy_(q.embedding.weight)
    before = q.embedding.weight.clone()
    z = torch.tensor([[1.0, 1.0], [1.2, 0.8]]).t()[None, :, None, :]  # both nearest to code 0
    out = q(z)
    assert "codebook" not in out.losses and "commitment" in out.losses
    after = q.embedding.weight
    assert torch.allclose(after[1:], before[1:], atol=1e-3)  # unused codes stay put
    target = torch.tensor([1.1, 0.9])
    assert (after[0] - target).norm() < (before[0] - target).norm()  # code 0 moved towards its vectors
    for _ in range(30):
        q(z)
    assert torch.allclose(q.embedding.weight[0], target, atol=1e-2)
    q.eval()
    w = q.embedding.weight.clone()
    q(z)
    assert torch.equal(q.embedding.weight, w)  # no update outside training


def test_vq_l2_norm_codes_are_unit_vectors():
    q = VectorQuantizer(8, 4, l2_norm=True).train()
    out = q(torch.randn(2, 4, 3, 3))
    assert torch.allclose(out.codes.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)


def test_gumbel_quantizer_taming_kl_and_determinism():
    torch.manual_seed(0)
    q = GumbelQuantizer(16, 4, temp_init=1.0, temp_min=0.1, temp_anneal=0.01).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z, step=100)
    probs = F.softmax(q.proj(z), 1)
    kl = (probs * torch.log(probs * 16 + 1e-10)).sum(1).mean()
    assert out.losses["kl_uniform"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out.stats["temperature"].item() == pytest.approx(math.exp(-1.0), rel=1e-6)
    out.codes.sum().backward()
    assert z.grad.abs().sum() > 0
    q.eval()
    assert torch.equal(q(z).indices, q.encode(z)) and torch.equal(q.encode(z), q.encode(z))


def test_temperature_schedule():
    assert temperature_at(None, 1.0, 0.1, 0.5) == 1.0
    assert temperature_at(0, 1.0, 0.1, 0.5) == 1.0
    assert temperature_at(10, 1.0, 0.1, 0.5) == pytest.approx(0.1)  # floored
    assert temperature_at(1, 2.0, 0.1, 0.0) == 2.0  # no annealing


def test_all_reduce_with_grad_is_identity_in_one_process():
    x = torch.randn(5, requires_grad=True)
    y = all_reduce_sum_with_grad(x)
    (y * 2).sum().backward()
    assert torch.equal(y, x) and torch.allclose(x.grad, torch.full((5,), 2.0))


def test_logit_init_scales_the_initial_projection_only():
    torch.manual_seed(0)
    a = RegVQuantizer(64, 8)
    torch.manual_seed(0)
    b = RegVQuantizer(64, 8, logit_init=30.0)
    torch.testing.assert_close(b.proj.weight, 30.0 * a.proj.weight)
    torch.testing.assert_close(b.proj.bias, a.proj.bias)
    z = torch.randn(2, 8, 4, 4)
    assert b.eval()(z).stats["max_prob"] > 5 * a.eval()(z).stats["max_prob"]  # sharper from the start


def test_prior_weight_schedule():
    from regvq_cli.train.tokenizer import TrainTokenizerConfig, prior_weight_at

    assert prior_weight_at(TrainTokenizerConfig(prior_weight=0.1), 0) == pytest.approx(0.1)  # default: on at once
    cfg = TrainTokenizerConfig(prior_weight=0.01, prior_start=200, prior_ramp=400)
    assert prior_weight_at(cfg, 199) == 0.0
    assert prior_weight_at(cfg, 399) == pytest.approx(0.005)
    assert prior_weight_at(cfg, 599) == pytest.approx(0.01) and prior_weight_at(cfg, 10_000) == pytest.approx(0.01)
