"""Train an image tokenizer (RegVQ, or the VQ / Gumbel-VQ baselines) on image folders.

``train_tokenizer(data, run_dir, cfg, callback=None) -> Path`` is what ``regvq train-tokenizer`` calls. One
process, or many under torchrun (DDP; NCCL on GPUs, gloo on CPUs). The run directory holds:

    state.pt            resume state (model, optimizers, EMA, step, RNG states, data position); a rerun on
                        the same directory continues from it
    metrics.jsonl       every ``log_every`` steps: each loss term, codebook usage %, perplexity, dead codes,
                        images/s, lr, step (rank 0 only); the values stay on the device between logs, so
                        that a step never waits for the GPU (the progress callback's loss values are
                        those of the last log)
    samples/step-NNNNNN.png   reconstruction grids (top: inputs, bottom: EMA reconstructions)
    model/              the exported EMA weights (config.json + model.safetensors + README.md)

The objective (RegVQ paper, Zhang et al., CVPR 2023, arXiv 2303.06424, plus VQGAN's stage-1 losses):

    L = l1 * |x - x_hat| + perceptual * P(x, x_hat) + contrastive * (PCL or CL)(x, x_hat)
        + quantizer terms (prior * KL(P_post || U) for regvq; commitment * beta-term + codebook for vq;
          gumbel_kl * KL(q || U) for gumbel)
        + gan * lambda_adaptive * hinge_g(D(x_hat))          once step >= gan_start

and the PatchGAN discriminator minimises the hinge loss on real and reconstructed images (one forward pass
over both, concatenated, so DDP sees a single forward per backward). Loss weights, temperatures and the
optimizer settings are not given by the paper; the defaults here are our choices (see the fields).

Precision on CUDA (``bf16``, ``feature_dtype``): the tokenizer and the discriminator run under bf16 autocast;
the frozen feature network of the perceptual and contrastive losses runs in bf16 too (``feature_dtype="auto"``;
the Inception network as a bf16 copy, see regvq_cli.nets.inception; vgg/lpips under autocast), the losses
themselves in fp32 from its features; fp32 matmuls may use TF32 (``common.training_precision``). On the CPU
everything is fp32. The losses' Inception is always that copy (plain modules with the batch norms folded into
the convolutions: the file's features up to rounding, faster); evaluation (FID) keeps the fp32 file itself.

Fine-tuning (``init``: a shipped name, model folder, .safetensors file or Hub id) starts a new run from a
tokenizer's weights. Its config fixes the architecture: the layout, ``quantizer``, ``image_size``,
``codebook_size``, ``embed_dim``, ``logits``, ``vq_ema`` and ``vq_l2_norm`` (ARCH_FIELDS) are filled in from it,
and one set to something else than its default that differs from the model's is an error (the command line
checks every option it was given: ``check_init_options``). ``preset`` becomes the preset whose layout the model
has (``custom`` when none has it). The quantizer's training switches (``use_prior``, ``use_mask``,
``mask_ratio``, the temperatures) and everything else follow this config. The EMA starts from the model's
weights, the discriminator and the optimizers from scratch. A resume state takes precedence (regvq_cli.train.loop).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..data.dataset import quiet_loader_worker
from ..engine.dist import default_loader_workers
from ..engine.resolve import TOKENIZER
from ..errors import RegvqError
from ..tokenizer import losses as L
from ..tokenizer.discriminator import DiscriminatorConfig, NLayerDiscriminator
from ..tokenizer.model import Tokenizer, TokenizerConfig
from ..tokenizer.presets import PRESETS
from .common import (EMA, METRICS_NAME, MetricsWriter, adamw, autocast, load_optimizer_state, lr_at, maybe_compile,
                     plain_value, seed_everything, set_lr, started_otherwise, training_precision, unwrap)
from .data import AugmentedImages, ShardedBatchSampler, collate
from .loop import Trainer

STATE_FORMAT = "regvq-train-tokenizer-state"


@dataclass
class TrainTokenizerConfig:
    # model
    preset: str = "tok-test"  # a key of regvq_cli.tokenizer.presets.PRESETS
    quantizer: str = "regvq"  # "regvq" | "vq" | "gumbel"
    image_size: int | None = None  # training resolution; None: the preset's
    codebook_size: int | None = None  # None: the preset's
    embed_dim: int | None = None  # None: the preset's
    # RegVQ components
    use_prior: bool = True
    prior_weight: float = 0.1
    prior_start: int = 0  # the prior KL is off before this step (ours; the paper is silent)
    prior_ramp: int = 0  # ... then its weight ramps up linearly over this many steps
    use_mask: bool = True
    mask_ratio: float = 0.4
    mask_warmup: int = 0  # steps over which the mask ratio ramps up from 0 (our addition; the paper is silent)
    logits: str = "linear"  # "linear" | "distance"
    logit_init: float = 1.0  # linear logits: scale of the initial projection weights (ours; see docs/results.md)
    temperature: float = 1.0  # Gumbel-softmax temperature (initial value when annealed)
    temperature_min: float = 1.0 / 16
    temperature_anneal: float = 0.0  # t = max(min, t0 * exp(-anneal * step))
    # baselines
    vq_ema: bool = False
    vq_l2_norm: bool = False
    commitment_weight: float = 0.25  # beta of VQ-VAE / VQGAN
    codebook_weight: float = 1.0
    gumbel_kl_weight: float = 5e-4
    # reconstruction losses
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_net: str = "inception"  # "inception" (offline) | "vgg16" | "vgg19" | "lpips"
    perceptual_weights: list[str] = field(default_factory=list)  # weight file(s) for vgg / lpips
    # contrastive (CL / PCL); uses the perceptual network's features
    contrastive_weight: float = 0.1
    pcl: bool = True  # weight positions by the sampled-vs-argmax code distance (False: vanilla PatchNCE)
    pcl_floor: float = 0.1  # weight of unperturbed positions; see regvq_cli.tokenizer.losses
    tau: float = 0.07
    num_patches: int = 256
    # adversarial
    gan_weight: float = 0.8  # VQGAN's disc_weight, times the adaptive weight
    gan_start: int = 5000
    disc_lr: float | None = None  # None: lr
    disc_layers: int = 3
    disc_channels: int = 64
    disc_norm: str = "batch"
    # optimisation
    batch_size: int = 8  # per process
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine"
    grad_clip: float | None = None
    max_steps: int = 10_000
    time_limit: float | None = None  # seconds; checkpoint and export when reached
    grad_accum: int = 1
    ema_decay: float = 0.999
    compile: bool = False
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # the perceptual/contrastive feature network's precision: "auto" (bf16 on CUDA when bf16 is on, fp32
    # elsewhere) | "fp32" (always fp32: slower on a GPU, the reference)
    feature_dtype: str = "auto"
    device: str | None = None  # None: cuda:LOCAL_RANK if available, else cpu
    # data
    scale_range: tuple[float, float] = (1.0, 1.25)
    hflip: bool = True
    # image-decoding processes; None: 2, or for a CUDA device every core of this process's share of the host but
    # one, up to 32 (engine.dist.default_loader_workers: two Pillow workers can hold a GPU back)
    num_workers: int | None = None
    # bookkeeping
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 500
    num_samples: int = 8
    seed: int = 0
    command: str = ""  # recorded in the model card; default: this process's command line
    # fine-tuning: a tokenizer (shipped name, folder, .safetensors, Hub id) to start a new run from; its config
    # gives the architecture (see the module docstring); ignored when the run folder has a resume state
    init: str | None = None

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.scale_range = tuple(self.scale_range)
        if self.init is not None:
            self.init = str(self.init)
        if self.perceptual_weights is None:
            self.perceptual_weights = []
        elif isinstance(self.perceptual_weights, (str, Path)):
            self.perceptual_weights = [str(self.perceptual_weights)]
        self.perceptual_weights = [str(p) for p in self.perceptual_weights]
        if self.preset not in PRESETS:
            raise RegvqError(f"unknown tokenizer preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.grad_accum < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise RegvqError("batch size and gradient accumulation must be >= 1, max steps >= 0")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise RegvqError(f"mask ratio must lie in [0, 1], got {self.mask_ratio}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise RegvqError(f"unknown feature dtype {self.feature_dtype!r}: choose {' or '.join(FEATURE_DTYPES)}")


FEATURE_DTYPES = ("auto", "fp32")

# torch.compile options of the training graphs: static shapes, which a training step's are. With automatic dynamic
# shapes the decoder's levels (one module class, a different size each) were compiled again with symbolic sizes,
# which inductor's CPU lowering failed on ("cannot determine truth value of Relational").
COMPILE_OPTIONS = {"dynamic": False}


def resolve_feature_dtype(cfg: TrainTokenizerConfig, device: torch.device) -> torch.dtype:
    """What the feature network of the perceptual/contrastive losses computes in: bf16 on CUDA with
    ``feature_dtype="auto"`` and ``bf16`` on, fp32 otherwise (the CPU, ``--no-bf16``, ``feature_dtype="fp32"``)."""
    if cfg.feature_dtype == "auto" and cfg.bf16 and device.type == "cuda":
        return torch.bfloat16
    return torch.float32


def tokenizer_config(cfg: TrainTokenizerConfig) -> TokenizerConfig:
    """The preset with the training config's overrides applied."""
    base = PRESETS[cfg.preset]
    size = cfg.image_size or base.image_size
    # attention resolutions are absolute sizes: keep them at the same level when the image size changes
    attn = tuple(r * size // base.image_size for r in base.attn_resolutions)
    return dataclasses.replace(
        base, image_size=size, attn_resolutions=attn, quantizer=cfg.quantizer,
        codebook_size=cfg.codebook_size or base.codebook_size, embed_dim=cfg.embed_dim or base.embed_dim,
        vq_ema=cfg.vq_ema, vq_l2_norm=cfg.vq_l2_norm, temp_init=cfg.temperature, temp_min=cfg.temperature_min,
        temp_anneal=cfg.temperature_anneal, logits=cfg.logits, use_prior=cfg.use_prior, use_mask=cfg.use_mask,
        mask_ratio=cfg.mask_ratio, mask_warmup=cfg.mask_warmup, logit_init=cfg.logit_init,
    )


# ---- fine-tuning from a model (init) ----------------------------------------------------------------------

# TrainTokenizerConfig fields that the init model's config decides (besides the preset's layout)
ARCH_FIELDS = ("quantizer", "image_size", "codebook_size", "embed_dim", "logits", "vq_ema", "vq_l2_norm")
# TokenizerConfig fields of a preset that shape the network (attention resolutions scale with the image size)
LAYOUT_FIELDS = ("in_channels", "ch", "ch_mult", "num_res_blocks", "z_channels", "attn_resolutions")


def preset_difference(name: str, model_config: dict) -> str | None:
    """How a tokenizer config (a dict, e.g. from config.json) differs from preset ``name``'s layout; None if not."""
    p = dataclasses.asdict(PRESETS[name])
    size = model_config["image_size"]
    want = {k: plain_value(p[k]) for k in LAYOUT_FIELDS}
    want["attn_resolutions"] = tuple(r * size // p["image_size"] for r in p["attn_resolutions"])
    for key in LAYOUT_FIELDS:
        have = plain_value(model_config.get(key))
        if have != want[key]:
            return f"its {key} is {have}, the preset's {want[key]}"
    return None


def matching_preset(model_config: dict) -> str | None:
    """The preset whose layout a tokenizer config has, if any."""
    return next((name for name in PRESETS if preset_difference(name, model_config) is None), None)


def check_init_architecture(values: dict, model_config: dict, spec: str) -> None:
    """Refuse architecture settings (``preset`` and ARCH_FIELDS, as given in ``values``) that the init model
    ``spec`` (its config as a dict) does not have; one line naming the first mismatch."""
    hint = "with --init the architecture is the model's: drop {}, or train from scratch without --init"
    for key, value in values.items():
        if key == "preset":
            diff = preset_difference(value, model_config)
            if diff is not None:
                raise RegvqError(f"--init {spec} is not a {value} tokenizer ({diff}); " + hint.format("--preset"))
            continue
        have = plain_value(model_config.get(key))
        if have != plain_value(value):
            flag = "--" + key.replace("_", "-")
            raise RegvqError(f"--init {spec} has {key} {have}, not {value}; " + hint.format(flag))


def check_init_options(spec: str, values: dict, offline: bool = False) -> None:
    """``check_init_architecture`` for the command line: ``values`` are the architecture options it was given
    explicitly. Reads the model's config only (no weights); a model that is not a tokenizer is left to the
    trainer, whose loader says what it is."""
    from ..engine.checkpoint import read_record
    from ..engine.resolve import resolve_model

    record = read_record(resolve_model(spec, offline).path)
    if record["model_type"] == "tokenizer":
        check_init_architecture(values, record["config"], spec)


def recorded_setting(state: dict, key: str):
    """A run's ``preset`` or ARCH_FIELDS value as its resume state records it (for ``check_resume_settings``)."""
    if key == "preset":
        return state["config"].get("preset")
    return (state.get("tokenizer_config") or state["config"]).get(key)


def init_train_config(cfg: TrainTokenizerConfig, base: TokenizerConfig) -> TrainTokenizerConfig:
    """``cfg`` with the architecture of the init model's config ``base``: fields set away from their defaults
    must agree with it; ARCH_FIELDS and ``preset`` are then taken from it (a copy; ``cfg`` is not changed)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainTokenizerConfig)}
    base_dict = dataclasses.asdict(base)
    check_init_architecture({k: getattr(cfg, k) for k in ARCH_FIELDS if getattr(cfg, k) != defaults[k]},
                            base_dict, cfg.init)
    out = copy.copy(cfg)
    out.preset = matching_preset(base_dict) or "custom"  # set directly: "custom" is not a key of PRESETS
    for key in ARCH_FIELDS:
        setattr(out, key, getattr(base, key))
    return out


def init_tokenizer_config(cfg: TrainTokenizerConfig, base: TokenizerConfig) -> TokenizerConfig:
    """The init model's config with the quantizer's training switches of ``cfg`` (they shape no weights)."""
    return dataclasses.replace(
        base, temp_init=cfg.temperature, temp_min=cfg.temperature_min, temp_anneal=cfg.temperature_anneal,
        use_prior=cfg.use_prior, use_mask=cfg.use_mask, mask_ratio=cfg.mask_ratio, mask_warmup=cfg.mask_warmup,
    )


def prior_weight_at(cfg: TrainTokenizerConfig, step: int) -> float:
    """The prior KL's weight at a step: 0 before ``prior_start``, then ramped linearly over ``prior_ramp`` steps."""
    if step < cfg.prior_start:
        return 0.0
    return cfg.prior_weight * min(1.0, (step - cfg.prior_start + 1) / max(1, cfg.prior_ramp))


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage % (codes used at least once), perplexity exp(H) and dead codes of a histogram [N]."""
    counts = counts.double().cpu()
    n = counts.numel()
    total = counts.sum().item()
    if total == 0:
        return {"usage_pct": 0.0, "perplexity": 0.0, "dead_codes": float(n)}
    p = counts / total
    h = -(p[p > 0] * p[p > 0].log()).sum().item()
    used = int((counts > 0).sum())
    return {"usage_pct": 100.0 * used / n, "perplexity": math.exp(h), "dead_codes": float(n - used)}


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of images [k, 3, H, W] in [-1, 1] -> one PNG grid."""
    arr = [((r.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy() for r in rows]
    lines = [np.concatenate(list(a), axis=1) for a in arr]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.concatenate(lines, axis=0)).save(tmp, format="PNG")
    tmp.replace(path)


class TokenizerTrainer(Trainer):
    """Owns the model, optimizers, data stream and run directory; ``run()`` (regvq_cli.train.loop) trains and
    exports."""

    state_format = STATE_FORMAT
    what = "tokenizer"
    unit = "images"

    def __init__(self, data: list[str | Path], run_dir: str | Path, cfg: TrainTokenizerConfig, offline: bool = False):
        from ..data.inputs import list_inputs

        super().__init__(run_dir, cfg, offline)
        self.data = [str(d) for d in data]
        out = self.run_dir.resolve()
        for d in self.data:
            folder = Path(d).resolve()
            if folder.is_dir() and (out == folder or folder in out.parents):
                raise RegvqError(f"the run folder {run_dir} lies inside the data folder {d}: its sample grids would "
                                 "be read as training images; put the run folder elsewhere")
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP would broadcast them, the EMA not)

        self.inputs = list_inputs(self.data)
        self.workers = cfg.num_workers
        if self.workers is None:
            self.workers = default_loader_workers(True) if self.device.type == "cuda" else 2
        base, init_model = self._init_source(TOKENIZER, lambda state: TokenizerConfig(**state["tokenizer_config"]))
        if base is not None:
            self.cfg = cfg = init_train_config(self.cfg, base)
            self.tok_cfg = init_tokenizer_config(cfg, base)
        else:
            cfg = self.cfg
            self.tok_cfg = tokenizer_config(cfg)
        self.model = Tokenizer(self.tok_cfg).to(self.device)
        if init_model is not None:
            self.model.load_state_dict(init_model.state_dict())
            del init_model
        # Compiled on CUDA: channels-last weights and images, the layout of cuDNN's bf16 kernels. Compiled training
        # graphs keep the layout they are given: inductor does not switch a graph with a convolution that narrows
        # the channels (the encoder's last, the decoder's level changes) to channels-last by itself, and cuDNN
        # then converted every activation to channels-last and back around each convolution. Not in eager mode:
        # PyTorch's GroupNorm copies a channels-last input to channels-first, which cost more than it saved
        # (docs/performance.md).
        cl = self.device.type == "cuda" and cfg.compile
        self.memory_format = torch.channels_last if cl else torch.preserve_format
        self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, cfg.ema_decay)  # after the init weights: the EMA starts from them
        self.use_gan = cfg.gan_weight > 0
        self.disc = None
        if self.use_gan:
            dcfg = DiscriminatorConfig(ndf=cfg.disc_channels, n_layers=cfg.disc_layers, norm=cfg.disc_norm)
            self.disc = NLayerDiscriminator(dcfg).to(self.device)
            self.disc.to(memory_format=self.memory_format)
        self.feature_net = None
        self.feature_dtype = resolve_feature_dtype(cfg, self.device)
        self.feature_net_casts = False  # the network computes in feature_dtype by itself (no autocast needed)
        if cfg.perceptual_weight > 0 or cfg.contrastive_weight > 0:
            from ..nets import build_feature_net

            net = build_feature_net(cfg.perceptual_net, cfg.perceptual_weights or None).to(self.device)
            if hasattr(net, "with_compute_dtype"):
                # Inception: the TorchScript file runs with autocast off, so the losses use its copy as plain
                # modules in the feature dtype, batch norms folded (faster in fp32 on a CPU too)
                net = net.with_compute_dtype(self.feature_dtype)
                self.feature_net_casts = True
            self.feature_net = net

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = adamw(params, self.device, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_d = None
        if self.disc is not None:
            self.opt_d = adamw(self.disc.parameters(), self.device, lr=cfg.disc_lr or cfg.lr, betas=cfg.betas,
                               weight_decay=cfg.weight_decay)

        seed_everything(cfg.seed, self.dist.rank)  # from here on each rank draws its own masks and noise
        self.skipped: set[int] = set()
        self.on_skip: Callable[[str, str], None] | None = None  # on_skip(path, reason) for each unreadable file
        if self.state_path.exists():
            self._resume()

        if self.dist.world_size > 1:
            # No buffer broadcast before every forward: the discriminator runs twice a step, and a broadcast into
            # its batch-norm statistics between the two would change tensors the first backward still needs.
            # PyTorch 2.13 renamed the switch (and warns about the old name).
            params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
            no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            ddp = {"device_ids": [self.device.index] if self.device.type == "cuda" else None, no_sync: False}
            self.model_ddp = nn.parallel.DistributedDataParallel(self.model, **ddp)
            self.disc_ddp = nn.parallel.DistributedDataParallel(self.disc, **ddp) if self.disc is not None else None
        else:
            self.model_ddp, self.disc_ddp = self.model, self.disc
        if cfg.compile:
            # The convolutional bodies only, in place (state-dict keys unchanged). The quantizer (Python-side
            # schedule, collectives) stays eager, and so does the decoder's last convolution: the GAN's adaptive
            # weight back-propagates to its weight with retain_graph=True, which compiled backward graphs
            # (donated buffers) refuse. The norm before it is compiled: that backward pass does not reach it.
            dec = self.model.decoder
            for net in (self.model.encoder, dec.conv_in, dec.mid, *dec.levels, dec.norm_out):
                maybe_compile(net, True, **COMPILE_OPTIONS)

        self.dataset = AugmentedImages(self.inputs, self.tok_cfg.image_size, cfg.scale_range, cfg.hflip)
        if self.dataset.first_decodable() is None:
            first = self.inputs.path(0)
            raise RegvqError(f"none of the {len(self.inputs)} files in {', '.join(self.data)} could be decoded as an "
                             f"image (the first, {first}: {self.dataset.skip_reason(0)}); check the data")
        # codes since the last log: on the device, read at logging
        self.window_counts = torch.zeros(self.tok_cfg.codebook_size, dtype=torch.float64, device=self.device)
        self.metrics = MetricsWriter(self.run_dir / METRICS_NAME, enabled=self.main)

    # ---- what the resume state adds -----------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"disc": self.disc.state_dict() if self.disc is not None else None,
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
                "skipped": sorted(self.skipped),
                "tokenizer_config": dataclasses.asdict(self.tok_cfg)}  # a fine-tuned run's architecture

    def _restore(self, state: dict) -> None:
        old = state["config"]
        # the network the options give (a size left to the preset and the preset's size given are the same), against
        # the state's; a state without its tokenizer config is compared option by option
        arch = state.get("tokenizer_config")
        have, now = (arch, self.tok_cfg) if arch is not None else (old, self.cfg)
        for key in ("preset", *ARCH_FIELDS):
            was, want = (old, self.cfg) if key == "preset" else (have, now)
            if plain_value(was.get(key)) != plain_value(getattr(want, key)):
                raise started_otherwise(self.run_dir, key, was.get(key), getattr(want, key))
        if (state["disc"] is None) != (self.disc is None):
            raise RegvqError(f"{self.run_dir} was started {'with' if state['disc'] is not None else 'without'} "
                             "the GAN loss: keep the GAN weight's on/off setting or use a new run directory")
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            load_optimizer_state(self.opt_d, state["opt_d"])
        self.skipped = set(state.get("skipped", []))

    # ---- data -------------------------------------------------------------------------------------------------
    def data_size(self) -> tuple[int, str]:
        return len(self.inputs), "inputs"

    def _loader(self, workers: int):
        """The micro-batches from number ``self.batches`` on, made by ``workers`` processes (0: by this one)."""
        sampler = ShardedBatchSampler(len(self.dataset), self.cfg.batch_size, self.dist.rank,
                                      self.dist.world_size, self.cfg.seed, start_batch=self.batches)
        return iter(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.cfg.seed),  # never touches the global RNG
            worker_init_fn=quiet_loader_worker,  # a scheduler's SIGTERM to the group: workers exit quietly
        ))

    def _next_batch(self) -> torch.Tensor:
        if self._batch_iter is None:
            self._batch_iter = self._loader(self.workers)
        try:
            images, skipped = next(self._batch_iter)
        except (RuntimeError, ConnectionError, EOFError):
            if not (self.workers > 0 and self.stop_request is not None and self.stop_request.requested):
                raise
            # SIGTERM or Ctrl-C reached the whole process group, and the loader workers exited before making this
            # batch: the step's other micro-batches are made here (the same ones: an item's augmentation depends
            # only on its position), so the step finishes and checkpoints as the stop promises
            self._batch_iter = self._loader(0)
            images, skipped = next(self._batch_iter)
        for j in skipped:
            if j not in self.skipped:  # reported once, when first found (a resumed run knows the earlier ones)
                self.skipped.add(j)
                if self.on_skip is not None:
                    self.on_skip(self.inputs.path(j), self.dataset.skip_reason(j))
        self.batches += 1  # micro-batches
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    # ---- one optimisation step --------------------------------------------------------------------------------
    def _feature_precision(self):
        """The autocast state for the feature network: bf16 autocast for one that follows autocast (vgg, lpips)
        when the features are bf16; autocast off otherwise (fp32, or a network that computes in bf16 itself)."""
        if self.feature_dtype == torch.bfloat16 and not self.feature_net_casts:
            return autocast(self.device, True)
        return torch.autocast(self.device.type, enabled=False)

    def _losses(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict, dict, torch.Tensor]:
        """Generator-side objective for one micro-batch: (a scalar with the objective's gradient, logged terms
        (the objective's value as "loss"), statistics, codebook counts)."""
        cfg = self.cfg
        with autocast(self.device, cfg.bf16):
            recon, q = self.model_ddp(x, step=step)
        terms: dict[str, torch.Tensor] = {"l1": L.l1_loss(recon, x)}
        rec = cfg.l1_weight * terms["l1"]
        if self.feature_net is not None:
            with self._feature_precision():
                with torch.no_grad():
                    fx = self.feature_net.feature_maps(x)
                fr = self.feature_net.feature_maps(recon.float())
            if cfg.perceptual_weight > 0:
                terms["perceptual"] = L.perceptual_loss(fr, fx, self.feature_net.channel_weights)
                rec = rec + cfg.perceptual_weight * terms["perceptual"]
            if cfg.contrastive_weight > 0:
                use_pcl = cfg.pcl and q.sampled_codes is not None
                w = L.pcl_weights(q.sampled_codes, q.argmax_codes) if use_pcl else None
                name = "pcl" if use_pcl else "contrastive"
                terms[name] = L.contrastive_loss(fr, fx, tau=cfg.tau, num_patches=cfg.num_patches, weights=w,
                                                 floor=cfg.pcl_floor)
                rec = rec + cfg.contrastive_weight * terms[name]
        weights = {"prior_kl": prior_weight_at(cfg, step), "commitment": cfg.commitment_weight,
                   "codebook": cfg.codebook_weight, "kl_uniform": cfg.gumbel_kl_weight}
        quant = rec.new_zeros(())  # the quantizer's terms: they reach the encoder and codebook, not recon
        for name, value in q.losses.items():
            terms[name] = value
            quant = quant + weights[name] * value
        total = objective = rec + quant
        if self.use_gan and step >= cfg.gan_start:
            disc = unwrap(self.disc_ddp)
            disc.requires_grad_(False)  # the generator pass must not leave gradients in D
            with autocast(self.device, cfg.bf16):
                g = L.hinge_g_loss(disc(recon))
            disc.requires_grad_(True)
            # rec and g back-propagate to recon once each, for the adaptive weight and the step together
            surrogate, lam = L.gan_objective(recon, rec, g, self.model.last_layer, cfg.gan_weight)
            terms["g_loss"], terms["gan_lambda"] = g, lam
            total = total.detach() + cfg.gan_weight * lam * g.detach()
            objective = surrogate + quant
        terms["loss"] = total
        stats = {k: v for k, v in q.stats.items() if k != "counts"}
        stats["recon"] = recon.detach()
        return objective, terms, stats, q.stats["counts"]

    def train_step(self) -> dict[str, float]:
        """One optimisation step. The loss terms and statistics are added to ``self.pending`` on the device (read
        at the next log, ``_log``), so that the step does not wait for the GPU; it returns host numbers only."""
        cfg = self.cfg
        step = self.step
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps)
        set_lr(self.opt, lr)
        if self.opt_d is not None:
            set_lr(self.opt_d, lr_at(step, cfg.disc_lr or cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps))
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        gan_on = self.use_gan and step >= cfg.gan_start
        if gan_on:
            self.disc.train()
            self.opt_d.zero_grad(set_to_none=True)
        summed: dict[str, torch.Tensor] = {}  # loss terms, averaged over the micro-batches
        last: dict[str, torch.Tensor] = {}  # statistics of the last micro-batch
        n_images = 0
        for micro in range(cfg.grad_accum):
            is_last = micro == cfg.grad_accum - 1
            x = self._next_batch()
            n_images += x.shape[0]
            with self._sync(self.model_ddp, is_last):
                objective, terms, stats, counts = self._losses(x, step)
                (objective / cfg.grad_accum).backward()
            self.window_counts += counts.detach().to(self.window_counts)
            if gan_on:
                with self._sync(self.disc_ddp, is_last), autocast(self.device, cfg.bf16):
                    both = self.disc_ddp(torch.cat([x, stats["recon"].to(x.dtype)]))
                    real, fake = both[: x.shape[0]], both[x.shape[0]:]
                    d_loss = L.hinge_d_loss(real, fake)
                (d_loss / cfg.grad_accum).backward()
                terms["d_loss"] = d_loss.detach()
                terms["logits_real"], terms["logits_fake"] = real.detach().float().mean(), fake.detach().float().mean()
            for k, v in terms.items():
                v = v.detach().float() / cfg.grad_accum
                summed[k] = summed[k] + v if k in summed else v
            last.update({k: v for k, v in stats.items() if k != "recon"})
        if cfg.grad_clip:
            last["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        if gan_on:
            self.opt_d.step()
        self.ema.update(self.model)
        self.step += 1
        self._add_pending({**summed, **last})
        return {"lr": lr, "images": float(n_images * self.dist.world_size)}

    def _flop_phase(self) -> bool:
        return self.use_gan and self.step >= self.cfg.gan_start  # the discriminator's passes join the step

    @contextlib.contextmanager
    def run_settings(self):
        """TF32 and cuDNN autotuning on CUDA (training_precision), and, compiled on several processes, compiled
        graphs kept whole under DDP: by default torch.compile splits each graph at DDP's gradient buckets so that
        their all-reduces start during the backward pass. Here the compiled networks are already several graphs
        (the encoder, the decoder's levels), and the split ones ran no faster on 2 H200s and took longer to settle:
        432.7 against 381.6-410.1 images/s over a 100-step run, 1.93x one GPU (docs/performance.md)."""
        with training_precision(self.device), contextlib.ExitStack() as stack:
            if self.cfg.compile and self.dist.world_size > 1:
                import torch._dynamo

                stack.enter_context(torch._dynamo.config.patch(optimize_ddp=False))
            yield

    # ---- logging, samples, model card ---------------------------------------------------------------------
    def _window_extra(self) -> dict[str, float]:
        """Codebook usage over the window (then reset) and the unreadable files so far."""
        extra = {**codebook_stats(self.window_counts), "skipped_files": len(self.skipped)}
        self.window_counts.zero_()
        return extra

    def sample(self) -> Path | None:
        """Reconstruction grid of the first ``num_samples`` images with the EMA model (rank 0)."""
        if not self.main or self.cfg.num_samples <= 0:
            return None
        x, k = self.dataset.center_batch(self.cfg.num_samples)
        if k == 0:
            return None
        model = self.ema.model.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.bf16):
            recon = model.decode(model.encode(x.to(self.device))).float()
        path = self.run_dir / "samples" / f"step-{self.step:06d}.png"
        save_grid([x, recon.cpu()], path)
        return path

    def model_card(self, final: dict) -> str:
        cfg, tc = self.cfg, self.tok_cfg
        keys = ["l1", "perceptual", "pcl", "contrastive", "prior_kl", "commitment", "codebook", "kl_uniform",
                "g_loss", "d_loss", "usage_pct", "perplexity", "dead_codes", "images_per_s"]
        rows = [f"| {k} | {final[k]:.4g} |" for k in keys if k in final]
        feature = cfg.perceptual_net if (cfg.perceptual_weight > 0 or cfg.contrastive_weight > 0) else "none"
        precision = f" ({'bf16' if self.feature_dtype == torch.bfloat16 else 'fp32'})" if feature != "none" else ""
        lines = [
            "---", "library_name: regvq", f"tags: [regvq, tokenizer, {tc.quantizer}]", "---", "",
            f"# {self.run_dir.name}: {tc.quantizer} image tokenizer", "",
            f"A `{cfg.preset}` tokenizer ({tc.image_size} px, f{2 ** (len(tc.ch_mult) - 1)}, "
            f"{tc.codebook_size} codes of dimension {tc.embed_dim}) {self._trained_with('regvq train-tokenizer')}, "
            f"quantizer `{tc.quantizer}`"
            + (" (Regularized Vector Quantization, Zhang et al., CVPR 2023)." if tc.quantizer == "regvq" else "."),
            "", "## Training", "",
            f"- data: {', '.join(self.data)} ({len(self.inputs)} files, {len(self.skipped)} skipped as unreadable)",
            f"- steps: {self.step}, batch {cfg.batch_size} x {self.dist.world_size} process(es) x {cfg.grad_accum} "
            f"accumulation, {self.tok_cfg.image_size} px crops",
            f"- time: {self.elapsed / 3600:.2f} h",
            f"- feature network for the perceptual/contrastive losses: {feature}{precision}"
            + (" (the same Inception network FID uses: rFID measured with it is not independent of training)"
               if feature == "inception" else ""),
            *self._card_end(rows),
        ]
        return "\n".join(lines) + "\n"

    def _export_info(self) -> dict:
        return {"trained_on": {"data": self.data, "files": len(self.inputs), "skipped": len(self.skipped)},
                "image_size": self.tok_cfg.image_size}


def train_tokenizer(data: list[str | Path], run_dir: str | Path, cfg: TrainTokenizerConfig | None = None,
                    callback: Callable[[int, dict], None] | None = None,
                    on_skip: Callable[[str, str], None] | None = None,
                    on_note: Callable[[str], None] | None = None, offline: bool = False) -> Path:
    """Train (or resume) a tokenizer on image folders; returns the exported model folder ``run_dir/model``.
    With ``offline`` an --init model on the Hub comes from the Hugging Face cache only.

    ``callback(step, metrics)`` is called on rank 0 after every optimisation step (for a progress bar);
    ``on_skip(path, reason)`` once for each file this process finds it cannot decode (it is skipped);
    ``on_note(message)`` on rank 0 for what a resume found (data of another size).
    """
    trainer = TokenizerTrainer(data, run_dir, cfg or TrainTokenizerConfig(), offline=offline)
    trainer.on_skip, trainer.on_note = on_skip, on_note
    return trainer.run(callback)
