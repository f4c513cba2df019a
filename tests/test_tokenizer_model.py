"""The Tokenizer model: config round trip, presets, inference API shapes, save/load through the model format."""

import dataclasses
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from regvq_cli.errors import RegvqError
from regvq_cli.tokenizer.discriminator import DiscriminatorConfig, NLayerDiscriminator
from regvq_cli.tokenizer.model import Tokenizer, TokenizerConfig
from regvq_cli.tokenizer.presets import PRESETS
from regvq_cli.tokenizer.quantizers import QuantizerOutput
from tests.conftest import run_interpreted


def roundtrip(cfg):
    return type(cfg)(**json.loads(json.dumps(dataclasses.asdict(cfg))))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_configs_roundtrip_through_json(name):
    cfg = PRESETS[name]
    assert roundtrip(cfg) == cfg
    assert cfg.image_size % 2 ** (len(cfg.ch_mult) - 1) == 0


def test_paper_preset_is_the_papers_setting():
    cfg = PRESETS["vqgan-f16"]
    assert (cfg.image_size, cfg.codebook_size, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (
        256, 1024, 128, (1, 1, 2, 2, 4), 2, (16,))
    assert cfg.quantizer == "regvq" and cfg.mask_ratio == 0.4
    with torch.device("meta"):  # no memory, no time: just the structure
        model = Tokenizer(cfg)
    assert model.grid_size(256) == (16, 16) and model.downsample_factor == 16
    assert 60e6 < sum(p.numel() for p in model.parameters()) < 90e6  # VQGAN f16 is about 72M
    with torch.device("meta"):
        f8 = Tokenizer(PRESETS["vqgan-f8"])
    assert f8.grid_size(256) == (32, 32)


@pytest.mark.parametrize("quantizer", ["vq", "gumbel", "regvq"])
@pytest.mark.parametrize("preset", ["tok-test", "tok-test-f8"])
def test_encode_decode_shapes(preset, quantizer):
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS[preset], quantizer=quantizer)
    model = Tokenizer(cfg).eval()
    assert model.model_type == "tokenizer" and model.config_class is TokenizerConfig
    assert model.codebook_size == cfg.codebook_size
    f = model.downsample_factor
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        idx = model.encode(x)
        assert idx.shape == (3, 32 // f, 32 // f) and idx.dtype == torch.long
        assert int(idx.min()) >= 0 and int(idx.max()) < cfg.codebook_size
        assert torch.equal(idx, model.encode(x))  # deterministic
        y = model.decode(idx)
        assert y.shape == (3, 3, 32, 32) and y.min() >= -1 and y.max() <= 1
        # non-square inputs work at any multiple of f
        assert model.encode(torch.zeros(1, 3, 32, 48)).shape == (1, 32 // f, 48 // f)
        recon, q = model(x)
    assert isinstance(q, QuantizerOutput)
    assert recon.shape == x.shape and torch.equal(q.indices, idx)  # eval forward = argmax/argmin
    assert model.grid_size((32, 64)) == (32 // f, 64 // f)
    with pytest.raises(RegvqError, match="multiple"):
        model.grid_size(30)


@pytest.mark.parametrize("quantizer", ["vq", "gumbel", "regvq"])
def test_training_forward_backward_reaches_every_trainable_weight(quantizer):
    torch.manual_seed(0)
    model = Tokenizer(dataclasses.replace(PRESETS["tok-test"], quantizer=quantizer)).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, q = model(x, step=3)
    loss = (recon - x).abs().mean() + sum(q.losses.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


def test_unknown_quantizer_and_bad_size_are_user_errors():
    with pytest.raises(RegvqError, match="unknown quantizer"):
        TokenizerConfig(quantizer="fsq")
    with pytest.raises(RegvqError, match="multiple"):
        TokenizerConfig(image_size=100, ch_mult=(1, 2, 2, 4))


def test_save_and_load_through_the_model_format(tmp_path):
    from regvq_cli.engine.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = Tokenizer(dataclasses.replace(PRESETS["tok-test"], quantizer="vq", vq_ema=True)).eval()
    save_model(model, tmp_path / "tok", card="# test\n", info={"note": "unit test"})
    loaded = load_model(tmp_path / "tok")
    assert isinstance(loaded, Tokenizer) and loaded.config == model.config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_small_cpu_preset_encodes_256px():
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["small-f16"]).eval()
    with torch.no_grad():
        idx = model.encode(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert idx.shape == (1, 16, 16)


def test_patchgan_discriminator():
    d = NLayerDiscriminator(DiscriminatorConfig(ndf=8, n_layers=3))
    out = d(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)  # 70x70 receptive field patches
    for norm in ("group", "none"):
        assert NLayerDiscriminator(DiscriminatorConfig(ndf=8, n_layers=2, norm=norm))(torch.randn(1, 3, 32, 32)).ndim == 4
    assert roundtrip(d.config) == d.config


def test_group_norm_keeps_bf16_under_autocast_and_is_plain_group_norm_outside():
    """Under autocast a bf16 input is normalised in bf16 (CUDA autocast would copy it up to float32 and back),
    within bf16 rounding of float32 group norm, and gradients reach the input, gain and bias; outside autocast
    the module is nn.GroupNorm bit for bit, with the same state dict."""
    from regvq_cli.tokenizer.nets import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    plain = torch.nn.GroupNorm(4, 16, eps=1e-6)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    assert torch.equal(norm(x), plain(x))
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(xb)
    assert y.dtype == torch.bfloat16
    want = plain(xb.detach().float())
    assert (y.float() - want).abs().max() < 0.05 and (y.float() - want).abs().mean() < 0.005
    y.float().square().sum().backward()
    assert xb.grad is not None and xb.grad.abs().sum() > 0
    assert norm.weight.grad.dtype == torch.float32 and norm.weight.grad.abs().sum() > 0
    assert norm.bias.grad.abs().sum() > 0


def test_group_norm_by_channels_is_group_norm_with_its_gradients(monkeypatch):
    """The compiled path's GroupNorm (statistics per channel, then combined per group) gives F.group_norm's
    values and gradients for contiguous and channels-last inputs, with a mean far from zero (where a variance
    from sums of squares would cancel); and a compiled GroupNorm module takes that path on the devices listed
    (CUDA), not elsewhere."""
    from regvq_cli.tokenizer.nets import GroupNorm, group_norm_by_channels

    torch.manual_seed(0)
    w, b = torch.rand(16) + 0.5, torch.rand(16) - 0.5
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = (torch.randn(2, 16, 6, 5) * 0.1 + 40).contiguous(memory_format=fmt)
        outs = {}
        for name, fn, dtype in (("mine", group_norm_by_channels, torch.float32),
                                ("torch", F.group_norm, torch.float32), ("exact", F.group_norm, torch.float64)):
            xi, wi, bi = (t.to(dtype, copy=True).requires_grad_() for t in (x, w, b))
            y = fn(xi, 4, wi, bi, 1e-6)
            (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
            outs[name] = [t.double() for t in (y.detach(), xi.grad, wi.grad, bi.grad)]
        # float32 itself loses digits at this mean: as close to float64 as torch's own kernel, within 2x
        for mine, theirs, exact in zip(outs["mine"], outs["torch"], outs["exact"]):
            assert (mine - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-6, fmt

    import regvq_cli.tokenizer.nets as nets

    assert nets.FAST_FORMS_ON == {"cuda"}
    norm = GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w), norm.bias.copy_(b)
    calls, real = [], nets.group_norm_by_channels
    monkeypatch.setattr(nets, "group_norm_by_channels", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 16, 6, 5)
    for devices, used in (({"cpu"}, True), ({"cuda"}, False)):
        monkeypatch.setattr(nets, "FAST_FORMS_ON", devices)
        calls.clear()
        torch._dynamo.reset()
        assert torch.allclose(torch.compile(norm, backend="eager")(x), norm(x), atol=1e-5)
        assert bool(calls) == used, devices


def test_channel_statistics_from_shifted_sums_keep_float32_accuracy_far_from_zero():
    """Inference's per-channel variance and mean (sums of d and d * d, each channel shifted by its first value)
    stay within float32 rounding of float64's where the mean is far from zero and the spread small, where plain
    sums of x and x * x lose the variance; inference GroupNorm through them is F.group_norm."""
    from regvq_cli.tokenizer.nets import channel_var_mean, group_norm_by_channels

    torch.manual_seed(0)
    for mean, std in ((0.5, 2.0), (40.0, 0.1), (1000.0, 1.0)):
        x = torch.randn(2, 8, 64, 64) * std + mean
        var64, mean64 = torch.var_mean(x.double(), dim=(2, 3), correction=0)
        var, mu = channel_var_mean(x)
        assert var.dtype == mu.dtype == torch.float32 and var.shape == mu.shape == (2, 8)
        assert ((var.double() - var64).abs() / var64).max() < 1e-5, (mean, std)
        assert ((mu.double() - mean64).abs()).max() < 1e-6 * mean + 1e-6
        if mean > 100:  # plain sums of squares cancel here
            n = 64 * 64
            plain = (x * x).sum((2, 3)) / n - (x.sum((2, 3)) / n) ** 2
            assert ((plain.double() - var64).abs() / var64).max() > 1e-2
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last) * 3 + 1
    w, b = torch.rand(16) + 0.5, torch.rand(16) - 0.5
    with torch.no_grad():
        assert torch.allclose(group_norm_by_channels(x, 4, w, b, 1e-6), F.group_norm(x, 4, w, b, 1e-6), atol=1e-5)


SCALE_SHIFT_CHECK = """
import torch
import regvq_cli.tokenizer.nets as nets

torch.manual_seed(0)
for C, G in ((128, 32), (512, 32), (96, 24), (20, 5), (6, 1)):  # 4 to 16 channels a group, groups not a power of 2
    var_c, mean_c = torch.rand(3, C) * 2, torch.randn(3, C) * 5 + 10
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    got = nets.group_norm_scale_shift(var_c, mean_c, G, w, b, 1e-6)  # the kernel (no gradient needed)
    nets.triton_runs_on = lambda device: False
    want = nets.group_norm_scale_shift(var_c, mean_c, G, w, b, 1e-6)  # tensor operations
    nets.triton_runs_on = lambda device: True
    for g, t in zip(got, want):
        assert g.shape == (3, C) and g.dtype == torch.float32
        assert torch.allclose(g, t, rtol=1e-5, atol=1e-5), (C, G, (g - t).abs().max())
# the whole norm through it, against F.group_norm
x = torch.randn(2, 96, 5, 7) * 3 + 1
w, b = torch.rand(96) + 0.5, torch.randn(96)
want = torch.nn.functional.group_norm(x, 24, w, b, 1e-6)
assert torch.allclose(nets.group_norm_by_channels(x, 24, w, b, 1e-6), want, atol=1e-4)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_group_norm_scale_shift_kernel_is_the_tensor_form():
    """The per-(sample, channel) scale and shift of GroupNorm from channel statistics, as the Triton kernel that
    inference takes (run by Triton's interpreter on the CPU, a process of its own), equal the tensor form's for
    group counts and widths that are not powers of two; a norm through it is F.group_norm."""
    done = run_interpreted(SCALE_SHIFT_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_group_norm_scale_shift_takes_the_kernel_only_without_gradients(monkeypatch):
    """Training (anything needing a gradient) keeps the tensor form, which autograd differentiates; inference
    takes the kernel where Triton runs."""
    import regvq_cli.tokenizer.nets as nets

    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: launched.append(grid)

    import regvq_cli.tokenizer.group_norm_kernel as kernel_module  # noqa: F401  (needs triton)

    monkeypatch.setattr(kernel_module, "group_norm_scale_shift_kernel", Kernel())
    monkeypatch.setattr(nets, "triton_runs_on", lambda device: True)
    var_c, mean_c, w, b = torch.rand(2, 8), torch.rand(2, 8), torch.rand(8), torch.rand(8)
    nets.group_norm_scale_shift(var_c, mean_c, 2, w, b, 1e-6)
    assert launched == [(2,)]
    w.requires_grad_()
    scale, _ = nets.group_norm_scale_shift(var_c, mean_c, 2, w, b, 1e-6)
    assert launched == [(2,)] and scale.requires_grad
    with torch.no_grad():
        nets.group_norm_scale_shift(var_c, mean_c, 2, w, b, 1e-6)
    assert len(launched) == 2
    monkeypatch.setattr(nets, "triton_runs_on", lambda device: False)
    with torch.no_grad():
        nets.group_norm_scale_shift(var_c, mean_c, 2, w, b, 1e-6)
    assert len(launched) == 2


CHANNELS_LAST_CHECK = """
import copy
import torch
import torch.nn.functional as F
import regvq_cli.tokenizer.nets as nets
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS

torch.manual_seed(0)
# widths that are not powers of two, several spans of pixels (NORM_SPAN) and a last part-span, one pixel
for B, C, G, H, W in ((2, 16, 4, 5, 7), (1, 24, 6, 40, 30), (3, 96, 24, 33, 33), (2, 8, 2, 1, 1)):
    x = (torch.randn(B, C, H, W) * 3 + 50).contiguous(memory_format=torch.channels_last)  # far from zero
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    want = F.group_norm(x.double(), G, w.double(), b.double(), 1e-6)
    for silu in (False, True):
        got = nets.group_norm_channels_last(x, G, w, b, 1e-6, silu=silu)
        assert got.dtype == x.dtype and got.is_contiguous(memory_format=torch.channels_last)
        err = (got.double() - (F.silu(want) if silu else want)).abs().max().item()
        assert err < 1e-4, (B, C, H, W, silu, err)
    # a picture's result does not depend on the batch it is in, bit for bit
    assert torch.equal(nets.group_norm_channels_last(x[-1:], G, w, b, 1e-6), nets.group_norm_channels_last(x, G, w, b, 1e-6)[-1:])
    xh, wh, bh = x.half(), w.half(), b.half()
    half = nets.group_norm_channels_last(xh, G, wh, bh, 1e-6)  # half precision: rounded once, at the end
    want = F.group_norm(xh.double(), G, wh.double(), bh.double(), 1e-6)
    assert half.dtype == torch.float16 and (half.double() - want).abs().max() <= want.abs().max() / 1024
# a channels-last network without gradients takes the kernels in every norm (here on the CPU, as if it were a
# GPU): the encoder and decoder give the NCHW network's outputs within float32 rounding
nets.FAST_FORMS_ON = {"cpu"}
calls = []
kernel = nets.group_norm_channels_last
nets.group_norm_channels_last = lambda *a, **k: calls.append(k["silu"]) or kernel(*a, **k)
model = Tokenizer(PRESETS["tok-test"]).eval().requires_grad_(False)
cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
images = torch.rand(2, 3, 32, 32) * 2 - 1
with torch.no_grad():
    z, z_cl = model.encoder(images), cl.encoder(images.contiguous(memory_format=torch.channels_last))
    n = len(calls)
    assert n == sum(isinstance(m, nets.GroupNorm) for m in model.encoder.modules()) and any(calls) and not all(calls)
    assert (z - z_cl).abs().max() < 1e-4
    out, out_cl = model.decoder(z), cl.decoder(z.contiguous(memory_format=torch.channels_last))
    assert len(calls) > n and (out - out_cl).abs().max() < 1e-4
    n = len(calls)
    model.encoder(images)  # NCHW: PyTorch's GroupNorm
    assert len(calls) == n
cl.encoder.requires_grad_(True)(images.contiguous(memory_format=torch.channels_last))  # training: PyTorch's
assert len(calls) == n
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_group_norm_over_channels_last_activations_is_group_norm_and_silu():
    """GroupNorm (+ SiLU) as the two Triton kernels eager inference takes over channels-last activations, run by
    Triton's interpreter on the CPU (a process of its own): F.group_norm within float32 rounding for widths that are
    not powers of two, far from zero and over several spans of pixels, in x's dtype and layout; a picture's result
    the same bit for bit alone or in a batch; a channels-last network without gradients takes them in every norm and
    gives the NCHW network's outputs, and NCHW or training does not take them."""
    done = run_interpreted(CHANNELS_LAST_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


FOLDED_BIASES_CHECK = """
import copy
import torch
import torch.nn.functional as F
import regvq_cli.tokenizer.nets as nets
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS

from regvq_cli.tokenizer.norm_silu_kernel import channel_sums_kernel

torch.manual_seed(0)
cl = lambda t: t.contiguous(memory_format=torch.channels_last)


def fresh_sums(x):  # group_norm_channels_last's own first pass over x
    B, C, H, W = x.shape
    CP, BP, spans = nets.sums_launch(H * W, C)
    sums = torch.empty(B, spans, 2, C)
    channel_sums_kernel[(B, spans)](x, x, sums, H * W, C, nets.NORM_SPAN, spans, CP=CP, BP=BP, HAS_OFFSET=False)
    return sums


# the kernels against PyTorch's sums, bit for bit, for widths that are not powers of two, one pixel a row and
# several spans of pixels (the last a part one); the sums add_biases_ leaves are the norm's own, bit for bit
for dtype in (torch.float32, torch.float16):
    for B, C, H, W in ((2, 16, 5, 7), (1, 24, 9, 1), (3, 96, 4, 4), (2, 24, 40, 30)):
        h, s = cl(torch.randn(B, C, H, W).to(dtype)), cl(torch.randn(B, C, H, W).to(dtype))
        hb, sb = torch.randn(C).to(dtype), torch.randn(C).to(dtype)
        along = lambda b: b[:, None, None]
        for out, want in ((nets.add_biases_(h.clone(), hb, s, sb), (h + along(hb)) + (s + along(sb))),
                          (nets.add_biases_(h.clone(), hb, s), (h + along(hb)) + s)):
            assert torch.equal(out, want) and torch.equal(out.regvq_channel_sums, fresh_sums(want))
        out = h.clone()
        assert nets.add_biases_(out, hb) is out and torch.equal(out, h + along(hb))
        assert torch.equal(out.regvq_channel_sums, fresh_sums(out))
        padded = nets.pad_right_bottom(h)
        assert torch.equal(padded, F.pad(h, (0, 1, 0, 1))) and padded.is_contiguous(memory_format=torch.channels_last)
        w, b = torch.rand(C).to(dtype) + 0.5, torch.randn(C).to(dtype)
        for silu in (False, True):
            got = nets.group_norm_channels_last(h, C // 4, w, b, 1e-6, silu=silu, offset=hb)
            assert torch.equal(got, nets.group_norm_channels_last(cl(h + along(hb)), C // 4, w, b, 1e-6, silu=silu))
# a channels-last network without gradients folds every resampler's, block's and attention's biases (here on the
# CPU, as if it were a GPU), its norms after them take the sums left, and it gives what it gives without folding
nets.FAST_FORMS_ON = {"cpu"}
import regvq_cli.tokenizer.norm_silu_kernel as norm_kernels
sums_passes = []


class Counted:  # group_norm_channels_last's first pass, its launches counted
    def __getitem__(self, grid):
        sums_passes.append(grid)
        return channel_sums_kernel[grid]


norm_kernels.channel_sums_kernel = Counted()
model = Tokenizer(PRESETS["tok-test"]).eval().requires_grad_(False).to(memory_format=torch.channels_last)
images = cl(torch.rand(2, 3, 32, 32) * 2 - 1)
calls = []
add = nets.add_biases_
nets.add_biases_ = lambda *a: calls.append(len(a)) or add(*a)
layers = (nets.ResnetBlock, nets.AttnBlock, nets.Downsample, nets.Upsample)
with torch.no_grad():
    z = model.encoder(images)
    out = model.decoder(z)
    assert len(calls) == sum(isinstance(m, layers) for m in model.modules()) and set(calls) == {2, 3, 4}
    norms = sum(isinstance(m, nets.GroupNorm) for m in model.modules())
    assert 0 < len(sums_passes) <= norms // 2, (len(sums_passes), norms)  # 15 of 33 in tok-test
    nets.folds_biases = lambda *a: False
    assert torch.equal(model.encoder(images), z) and torch.equal(model.decoder(z), out)
print("ok")
"""


def test_add_biases_without_the_kernel_is_pytorchs_sums_into_h():
    """Where the kernel does not run (here: NCHW tensors, or no Triton), add_biases_ is PyTorch's adds, written into
    h like the kernel's: (h + h_bias) + (skip + skip_bias), each sum rounded to h's dtype."""
    import regvq_cli.tokenizer.nets as nets

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        h, s = torch.randn(2, 6, 3, 5).to(dtype), torch.randn(2, 6, 3, 5).to(dtype)
        hb, sb = torch.randn(6).to(dtype), torch.randn(6).to(dtype)
        out = h.clone()
        assert nets.add_biases_(out, hb, s, sb) is out
        assert torch.equal(out, (h + hb[:, None, None]) + (s + sb[:, None, None]))
        assert torch.equal(nets.add_biases_(h.clone(), hb, s), (h + hb[:, None, None]) + s)
        assert torch.equal(nets.add_biases_(h.clone(), hb), h + hb[:, None, None])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_folded_convolution_biases_are_pytorchs_sums():
    """The kernels that add a convolution's bias in the pass that reads its output next (the residual sum,
    GroupNorm's offset) and that pad for the downsampler, run by Triton's interpreter on the CPU: PyTorch's sums
    and F.pad bit for bit, in float32 and float16, and the channel sums the residual sum leaves are the next
    norm's own, bit for bit; a channels-last network without gradients folds the biases of every block,
    attention, downsampler and upsampler, its norms skip their own sums after those, with the same outputs as
    without."""
    done = run_interpreted(FOLDED_BIASES_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_runners_default_to_channels_last_on_a_gpu_where_triton_runs(monkeypatch):
    """The runner's layout when none is asked for (engine.runtime.default_channels_last): channels-last on CUDA
    where Triton runs and nothing is compiled; NCHW on a CPU, when compiled, or without Triton."""
    from regvq_cli.engine import runtime

    monkeypatch.setattr(runtime, "triton_runs_on", lambda device: True)
    assert runtime.default_channels_last("cuda") and runtime.default_channels_last(torch.device("cuda", 0))
    assert not runtime.default_channels_last("cuda", compile=True)
    assert not runtime.default_channels_last("cpu")
    monkeypatch.setattr(runtime, "triton_runs_on", lambda device: False)
    assert not runtime.default_channels_last("cuda")
    runner = runtime.prepare_tokenizer(Tokenizer(PRESETS["tok-test"]), "cpu")
    assert runner.channels_last is False and runner.memory_format == torch.contiguous_format
    runner = runtime.prepare_tokenizer(Tokenizer(PRESETS["tok-test"]), "cpu", channels_last=True)
    assert runner.channels_last and runner.model.encoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
def test_channels_last_group_norm_on_a_gpu_is_group_norm_within_bf16_rounding():
    """On a GPU, in bf16: GroupNorm + SiLU from the channels-last kernels is float64's F.group_norm within PyTorch's
    own bf16 error, and a bf16 tokenizer runner takes channels-last by default."""
    pytest.importorskip("triton")
    import torch.nn.functional as F

    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.tokenizer.nets import group_norm_channels_last

    torch.manual_seed(0)
    for B, C, H, W, G in ((4, 128, 64, 64, 32), (2, 512, 16, 16, 32), (3, 96, 37, 29, 24)):
        x = (torch.randn(B, C, H, W, device="cuda") * 2 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(C, device="cuda").bfloat16(), torch.randn(C, device="cuda").bfloat16()
        want = F.silu(F.group_norm(x.double(), G, w.double(), b.double(), 1e-6))
        got = group_norm_channels_last(x, G, w, b, 1e-6, silu=True)
        theirs = F.silu(F.group_norm(x.contiguous(), G, w, b, 1e-6))
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert (got.double() - want).abs().max() <= (theirs.double() - want).abs().max()
    assert prepare_tokenizer(Tokenizer(PRESETS["tok-test"]), "cuda", torch.bfloat16).channels_last


@pytest.mark.gpu
def test_folded_biases_on_a_gpu_give_the_same_tokens_and_pixels_bit_for_bit(monkeypatch):
    """On a GPU in bf16, eager over channels-last activations, vqgan-f16 (random weights, attention included) with
    its convolutions' biases folded into the passes that follow encodes to the same tokens and decodes to the same
    pixels, bit for bit, as with PyTorch's own bias adds and padding."""
    pytest.importorskip("triton")
    import regvq_cli.tokenizer.nets as nets
    from regvq_cli.engine.runtime import prepare_tokenizer

    torch.manual_seed(0)
    runner = prepare_tokenizer(Tokenizer(PRESETS["vqgan-f16"]), "cuda", torch.bfloat16, cuda_graphs=False)
    assert runner.channels_last
    images = torch.rand(3, 3, 256, 256, device="cuda") * 2 - 1
    calls = []
    add = nets.add_biases_
    monkeypatch.setattr(nets, "add_biases_", lambda *a: calls.append(1) or add(*a))
    tokens = runner.encode(images)
    pixels = runner.decode(tokens)
    assert len(calls) > 20
    monkeypatch.setattr(nets, "folds_biases", lambda *a: False)
    assert torch.equal(runner.encode(images), tokens) and torch.equal(runner.decode(tokens), pixels)


@pytest.mark.gpu
def test_compiled_group_norm_on_a_gpu_launches_the_scale_shift_kernel_and_is_group_norm():
    """On a GPU, a compiled bf16 GroupNorm without gradients launches the scale/shift kernel from inductor's code
    and gives F.group_norm's result within bf16 rounding; with gradients it does not launch it."""
    pytest.importorskip("triton")
    from torch._inductor.utils import run_and_get_code

    from regvq_cli.tokenizer.nets import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(24, 96, eps=1e-6).cuda()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    x = (torch.randn(4, 96, 16, 16, device="cuda") * 3 + 1).to(torch.bfloat16)
    want = F.group_norm(x.float(), 24, norm.weight, norm.bias, 1e-6)
    torch._dynamo.reset()
    with torch.no_grad():
        got, code = run_and_get_code(torch.compile(norm.bfloat16()), x)
    assert "group_norm_scale_shift_kernel" in "".join(code)
    assert (got.float() - want).abs().max() <= want.abs().max() / 64
    torch._dynamo.reset()
    got, code = run_and_get_code(torch.compile(norm), x)
    assert "group_norm_scale_shift_kernel" not in "".join(code)


@pytest.mark.gpu
def test_bf16_decoder_on_a_gpu_takes_its_inference_forms_within_rounding(monkeypatch):
    """On a GPU a bf16 runner's decoder, which upsamples by transposed convolutions (eager and compiled) and,
    compiled, attends over contiguous q, k, v and ends in conv3x3_to_few_channels, draws the images of the plain
    forms within bf16 rounding."""
    import copy

    import regvq_cli.tokenizer.nets as nets
    from regvq_cli.engine.runtime import prepare_tokenizer

    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tok-test"])
    ids = torch.randint(0, model.codebook_size, (8, 8, 8), device="cuda")
    calls, real_transposed, real_gemm = [], F.conv_transpose2d, nets.conv3x3_to_few_channels
    monkeypatch.setattr(F, "conv_transpose2d", lambda *a, **k: calls.append("up") or real_transposed(*a, **k))
    monkeypatch.setattr(nets, "conv3x3_to_few_channels", lambda *a: calls.append("gemm") or real_gemm(*a))
    for compile in (False, True):
        calls.clear()
        torch._dynamo.reset()
        monkeypatch.setattr(nets, "FAST_FORMS_ON", {"cuda"})
        monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", {"cuda"})
        fast = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.bfloat16, compile=compile).decode(ids)
        assert "up" in calls and ("gemm" in calls) == compile
        calls.clear()
        monkeypatch.setattr(nets, "FAST_FORMS_ON", set())
        monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", set())
        torch._dynamo.reset()
        plain = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.bfloat16, compile=compile).decode(ids)
        assert not calls
        diff = (fast.float() - plain.float()).abs()
        assert diff.mean() < 0.01 and diff.max() <= 0.1, compile  # images in [-1, 1]


def test_inference_upsamples_by_one_transposed_convolution(monkeypatch):
    """The upsampler's transposed-convolution form (taken for inference, eager or compiled, on the devices listed:
    CUDA and the CPU) computes nearest upsampling + 3x3 convolution: in float32 within rounding, for both memory
    layouts and odd sizes; anything needing a gradient, or a device not listed, keeps the plain form."""
    import regvq_cli.tokenizer.nets as nets

    assert nets.TRANSPOSED_UPSAMPLING_ON == {"cuda", "cpu"}
    torch.manual_seed(0)
    up = nets.Upsample(6)
    calls, real = [], F.conv_transpose2d
    monkeypatch.setattr(F, "conv_transpose2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 6, 5, 7).contiguous(memory_format=fmt)
        want = up.conv(nets.upsample_nearest_2x(x))
        monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", set())
        with torch.no_grad():
            assert torch.allclose(up(x), want, atol=1e-5) and not calls  # a device not listed: the plain form
        monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", {"cpu"})
        for compiling in (False, True):
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
            with torch.no_grad():
                got = up(x)
            assert calls == [1] and got.shape == (2, 6, 10, 14) and torch.allclose(got, want, atol=1e-5), fmt
            up(x).sum().backward()  # training: the plain form
            assert calls == [1] and up.conv.weight.grad is not None
            calls.clear()


def test_compiled_inference_takes_the_decoders_last_convolution_as_a_gemm(monkeypatch):
    """The decoder's last convolution (to 3 channels) as a GEMM of every pixel's channels by the 9 taps' weights
    plus shifted sums is F.conv2d with padding 1 (float32, both layouts, odd sizes, a single output channel too);
    a decoder takes it compiled for inference on the devices listed, and draws the same images; with gradients,
    eagerly, or with more than 3 output channels it keeps the convolution."""
    import regvq_cli.tokenizer.nets as nets

    torch.manual_seed(0)
    for O in (1, 3):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 16, 5, 7).contiguous(memory_format=fmt)
            w, b = torch.randn(O, 16, 3, 3), torch.randn(O)
            got = nets.conv3x3_to_few_channels(x, w, b)
            assert got.shape == (2, O, 5, 7) and torch.allclose(got, F.conv2d(x, w, b, padding=1), atol=1e-4)

    model = Tokenizer(PRESETS["tok-test"]).eval()
    z = torch.randn(2, model.decoder.conv_in.in_channels, 6, 5)
    calls, real = [], nets.conv3x3_to_few_channels
    monkeypatch.setattr(nets, "conv3x3_to_few_channels", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(nets, "FAST_FORMS_ON", {"cpu"})
    with torch.no_grad():
        want = model.decoder(z)
        assert not calls  # eager
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = model.decoder(z)
    assert calls == [1] and torch.allclose(got, want, atol=1e-4)
    model.decoder(z).sum().backward()  # training
    assert calls == [1]
    wide = nets.Decoder(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=4, resolution=8,
                        out_channels=4)
    with torch.no_grad():
        wide(torch.randn(1, 4, 4, 4))
    assert calls == [1]


def test_compiled_inference_attention_over_contiguous_queries_is_the_same_attention(monkeypatch):
    """Compiled, for inference, on the devices listed, the attention block hands contiguous q, k, v to
    scaled_dot_product_attention (the memory-efficient kernel's layout); the result is the same in either memory
    layout, and eager or training runs keep the strided views."""
    import regvq_cli.tokenizer.nets as nets

    torch.manual_seed(0)
    attn = nets.AttnBlock(16).eval()
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v: seen.append(q.is_contiguous()) or real(q, k, v))
    monkeypatch.setattr(nets, "FAST_FORMS_ON", {"cpu"})
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 5, 3).contiguous(memory_format=fmt)
        seen.clear()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        with torch.no_grad():
            want = attn(x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        with torch.no_grad():
            got = attn(x)
        attn(x.requires_grad_()).sum().backward()
        assert seen == [False, True, False], fmt  # chunks of the qkv output: strided views in either layout
        assert torch.allclose(got, want, atol=1e-5)


def test_upsample_is_nearest_interpolation_with_block_sum_gradients():
    """The decoder's 2x upsampling is F.interpolate(mode="nearest") bit for bit in both memory layouts (and keeps
    the layout), and its gradient is the sum over each 2x2 output block."""
    from regvq_cli.tokenizer.nets import upsample_nearest_2x

    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, 5, 7).contiguous(memory_format=fmt).requires_grad_()
        y = upsample_nearest_2x(x)
        assert torch.equal(y, F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert y.is_contiguous(memory_format=fmt)
        g = torch.randn(y.shape)
        y.backward(g)
        assert torch.allclose(x.grad, F.avg_pool2d(g, 2) * 4, atol=1e-6)
