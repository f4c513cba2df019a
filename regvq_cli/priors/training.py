"""Train a prior (autoregressive or discrete diffusion) on a token folder written by `regvq encode`.

``train_prior(tokens_dir, run_dir, cfg, callback=None) -> Path`` is what ``regvq train-prior`` calls. One
process, or many under torchrun (DDP; NCCL on GPUs, gloo on CPUs), with the training loop of
regvq_cli.train.loop and the shared machinery of regvq_cli.train.common. The run directory holds:

    state.pt                resume state (model, EMA, optimizer, step, RNG states, data position); a rerun on
                            the same directory continues from it
    metrics.jsonl           every ``log_every`` steps: loss terms, lr, samples/s, step (rank 0 only); at each
                            checkpoint and at the end also ``val_loss``, the EMA model's loss on held-out grids
    text_states.safetensors text conditioning: the encoder's states of every distinct caption, computed once
    samples/step-NNNNNN.npy sampled token grids from the EMA model, and .png when the shards' tokenizer loads
    model/                  the exported EMA weights (config.json + model.safetensors + README.md)

Token grids are small, so the whole folder is held in memory: tokens, labels, captions, and segmentation maps
resized (nearest) to the token grid. Batches come from ShardedBatchSampler: deterministic, rank-sharded and
resumable by the number of batches consumed. `val_size` grids (a fixed draw, the same for every run on the same
folder) are held out of training and scored at each checkpoint: a training loss far below the held-out one means
the prior is memorising its data rather than learning what the conditions say.

The condition kind defaults to what the shards carry ("auto": labels -> class, captions -> text, maps ->
segmap; it must be named when a folder has more than one). Rows without a label (-1) or with an empty caption
train the null condition, as do `cond_dropout` of the others (classifier-free guidance).

Fine-tuning (`init`: a shipped name, model folder, .safetensors file or Hub id of a prior) starts a new run from
a prior's weights. Its config fixes the architecture: `kind` and `preset` are taken from it (`custom` when no
preset has its layout), and `kind` or `num_timesteps` set to something else is an error (the command line checks
every option it was given: `check_init_options`). Its data fields (DATA_FIELDS: codebook size, grid, condition,
classes and their names, segmentation labels, text encoder) must be what the token folder gives; `cond` "auto"
means the model's condition, and `text_encoder` / `text_max_tokens` left at their defaults mean the model's. The
tokenizer fields follow the token folder. `dropout`, `aux_weight` (when set) and `cond_dropout` follow this
config. The EMA starts from the model's weights. A resume state takes precedence (regvq_cli.train.loop).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from regvq_cli.engine.resolve import PRIOR
from regvq_cli.errors import RegvqError
from regvq_cli.priors.ar import ARConfig
from regvq_cli.priors.conditioning import TextStateTable, TextStates, precompute_text_states, resize_segmap
from regvq_cli.priors.config import DEFAULT_TEXT_ENCODER, PriorConfig
from regvq_cli.priors.diffusion import DiffusionConfig
from regvq_cli.priors.presets import PRESETS, model_for
from regvq_cli.engine.device import to_device
from regvq_cli.engine.dist import barrier
from regvq_cli.train.common import (EMA, METRICS_NAME, MetricsWriter, adamw, autocast, lr_at, maybe_compile,
                                    plain_value, seed_everything, set_lr, started_otherwise)
from regvq_cli.train.data import ShardedBatchSampler
from regvq_cli.train.loop import Trainer

STATE_FORMAT = "regvq-train-prior-state"
VAL_SEED = 20230601  # the held-out draw and the diffusion scores' timesteps: fixed, so runs and steps compare
TEXT_STATES_NAME = "text_states.safetensors"


@dataclass
class TrainPriorConfig:
    # model
    kind: str = "ar"  # "ar" | "diffusion"
    preset: str = ""  # a key of regvq_cli.priors.presets.PRESETS; "" -> "<kind>-small"
    dropout: float | None = None  # None: the preset's
    num_timesteps: int | None = None  # diffusion; None: the preset's
    aux_weight: float | None = None  # diffusion lambda of the x_0 cross-entropy; None: the preset's (paper: 5e-4)
    # conditioning
    cond: str = "auto"  # "auto" | "none" | "class" | "text" | "segmap"
    cond_dropout: float = 0.1  # classifier-free guidance: probability of training the null condition
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_max_tokens: int = 32
    text_states: str | None = None  # precomputed TextStateTable file (e.g. from a machine with the encoder)
    seg_classes: int | None = None  # None: max label in the maps + 1
    # optimisation
    batch_size: int = 32  # per process
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on matrices and embeddings only
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine"
    grad_clip: float | None = 1.0
    max_steps: int = 10_000
    time_limit: float | None = None  # seconds; checkpoint and export when reached
    grad_accum: int = 1
    ema_decay: float = 0.999
    compile: bool = False
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str | None = None  # None: cuda:LOCAL_RANK if available, else cpu
    # bookkeeping
    log_every: int = 50
    sample_every: int = 1000  # 0: never
    checkpoint_every: int = 1000
    val_size: int | None = None  # grids held out and scored at checkpoints; None: 1% of them, at most 1,000
    num_samples: int = 8
    sample_cfg: float = 1.5  # guidance scale of the sample grids
    sample_steps: int | None = None  # diffusion sample grids; None: all timesteps
    decode_samples: bool = True  # decode sample grids to PNG with the shards' tokenizer when it loads
    seed: int = 0
    command: str = ""  # recorded in the model card; default: this process's command line
    # fine-tuning: a prior (shipped name, folder, .safetensors, Hub id) to start a new run from; its config gives
    # the architecture and must fit the tokens (see the module docstring); ignored when the run has a resume state
    init: str | None = None

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.init is not None:
            self.init = str(self.init)
        if self.kind not in ("ar", "diffusion"):
            raise RegvqError(f"unknown prior kind {self.kind!r}: choose ar or diffusion")
        self.preset = self.preset or f"{self.kind}-small"
        if self.preset not in PRESETS:
            raise RegvqError(f"unknown prior preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if not self.preset.startswith(self.kind + "-"):
            raise RegvqError(f"preset {self.preset!r} is not for --kind {self.kind}: choose one of "
                             + ", ".join(k for k in PRESETS if k.startswith(self.kind + "-")))
        if self.cond not in ("auto", "none", "class", "text", "segmap"):
            raise RegvqError(f"unknown condition {self.cond!r}: choose auto, none, class, text or segmap")
        if self.grad_accum < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise RegvqError("batch size and gradient accumulation must be >= 1, max steps >= 0")
        if self.val_size is not None and self.val_size < 0:
            raise RegvqError(f"the held-out set's size must be >= 0, got {self.val_size}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise RegvqError(f"condition dropout must lie in [0, 1), got {self.cond_dropout}")


class TokenData:
    """A token folder in memory: tokens [N, h, w] int32 and, where present, labels [N], captions, segmaps
    [N, h, w] (nearest-resized to the token grid)."""

    def __init__(self, path, want: set[str]):
        from regvq_cli.data.shards import ShardReader, decode_strings, read_shard

        self.path = str(path)
        reader = ShardReader(path)
        self.grid, self.codebook_size = tuple(reader.grid), reader.codebook_size
        self.fields = set(reader.fields)
        self.label_names = list(reader.label_names or [])
        if reader.manifest is not None:
            tok = reader.manifest["tokenizer"]
            self.tokenizer_id, self.tokenizer_sha256 = tok.get("id") or "", tok.get("sha256") or ""
        else:
            run = read_shard(path)["run"]
            self.tokenizer_id, self.tokenizer_sha256 = run.tokenizer_id, run.tokenizer_sha256
        if len(reader) == 0:
            raise RegvqError(f"{path} holds no token grids; encode some images first")
        self.tokens = torch.from_numpy(reader.all_tokens().astype(np.int32))
        self.labels = self.captions = self.segmaps = None
        labels, captions, segmaps = [], [], []
        for j in range(len(reader.paths)):
            t = reader.shard(j)
            if "labels" in want:
                labels.append(np.asarray(t["labels"], dtype=np.int64))
            if "captions" in want:
                captions += decode_strings(t["captions_blob"], t["captions_offsets"])
            if "segmaps" in want:
                maps = t["segmaps"]
                for s in range(0, len(maps), 256):  # resize in chunks: full-size maps never all in memory
                    chunk = torch.from_numpy(np.asarray(maps[s:s + 256]).astype(np.int64))
                    segmaps.append(resize_segmap(chunk, self.grid).to(torch.int16))
        if "labels" in want:
            self.labels = torch.from_numpy(np.concatenate(labels))
        if "captions" in want:
            self.captions = captions
        if "segmaps" in want:
            self.segmaps = torch.cat(segmaps)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def held_out_split(n: int, val_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out rows, training rows) of n token grids, each sorted: val_size rows drawn with VAL_SEED (None: 1% of
    n, at most 1,000; 0: none), the same draw for every run on the same folder."""
    k = min(1000, n // 100) if val_size is None else val_size
    if k >= n:
        raise RegvqError(f"--val-size {k} leaves none of the {n} token grids to train on: lower it (0 holds none out)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[:k].sort().values, perm[k:].sort().values


def resolve_cond(cfg: TrainPriorConfig, fields: set[str], path) -> str:
    """The condition kind to train: the configured one (checked against the shards) or the one they carry."""
    carried = [k for k, f in (("class", "labels"), ("text", "captions"), ("segmap", "segmaps")) if f in fields]
    if cfg.cond == "auto":
        if len(carried) > 1:
            raise RegvqError(f"{path} carries {' and '.join(carried)} conditions: choose one with --cond "
                             f"({', '.join(carried)} or none)")
        return carried[0] if carried else "none"
    need = {"class": "labels", "text": "captions", "segmap": "segmaps"}.get(cfg.cond)
    if need is not None and need not in fields:
        raise RegvqError(f"--cond {cfg.cond} needs {need} in the token shards, and {path} has none; encode with "
                         + {"labels": "class sub-folders or a label column", "captions": "a text column",
                            "segmaps": "--maps"}[need] + ", or train with --cond none")
    return cfg.cond


# ---- fine-tuning from a model (init) ----------------------------------------------------------------------

# PriorConfig fields that the token folder gives; a fine-tuned prior must model the same
DATA_FIELDS = ("codebook_size", "grid_size", "cond", "num_classes", "class_names", "seg_classes", "text_encoder",
               "text_max_tokens", "text_dim")
# TrainPriorConfig fields that shape the network and are None unless set (the options the presets also take)
TUNABLE = ("dropout", "num_timesteps", "aux_weight")


def _prior_config_class(kind: str):
    return ARConfig if kind == "ar" else DiffusionConfig


def _layout_fields(kind: str) -> list[str]:
    """The architecture fields of a preset of ``kind``: its config's own fields but the ones options override."""
    shared = {f.name for f in dataclasses.fields(PriorConfig)}
    fields = dataclasses.fields(_prior_config_class(kind))
    return [f.name for f in fields if f.name not in shared and f.name not in TUNABLE]


def preset_difference(name: str, kind: str, model_config: dict) -> str | None:
    """How a prior config (a dict, e.g. from config.json) of ``kind`` differs from preset ``name``; None if not."""
    preset_kind = name.split("-")[0]
    if preset_kind != kind:
        return f"it is a {kind} prior"
    p = dataclasses.asdict(PRESETS[name])
    for key in _layout_fields(kind):
        have = plain_value(model_config.get(key))
        if have != plain_value(p[key]):
            return f"its {key} is {have}, the preset's {plain_value(p[key])}"
    return None


def matching_preset(kind: str, model_config: dict) -> str | None:
    """The preset whose architecture a prior config of ``kind`` has, if any."""
    return next((n for n in PRESETS if preset_difference(n, kind, model_config) is None), None)


def check_init_architecture(values: dict, kind: str, model_config: dict, spec: str) -> None:
    """Refuse ``kind``, ``preset`` or ``num_timesteps`` values (as given in ``values``) that the init model
    ``spec`` (its kind and config as a dict) does not have; one line naming the first mismatch."""
    hint = "with --init the architecture is the model's: drop {}, or train from scratch without --init"
    for key, value in values.items():
        if key == "kind" and value != kind:
            raise RegvqError(f"--init {spec} is a {kind} prior, not {value}; " + hint.format("--kind"))
        if key == "preset":
            diff = preset_difference(value, kind, model_config)
            if diff is not None:
                raise RegvqError(f"--init {spec} is not a {value} prior ({diff}); " + hint.format("--preset"))
        if key == "num_timesteps" and kind == "diffusion" and model_config.get(key) != value:
            raise RegvqError(f"--init {spec} has num_timesteps {model_config.get(key)}, not {value}; "
                             + hint.format("--num-timesteps"))


def check_init_options(spec: str, values: dict, offline: bool = False) -> None:
    """``check_init_architecture`` for the command line: ``values`` are the architecture options it was given
    explicitly. Reads the model's config only (no weights); a model that is not a prior is left to the trainer,
    whose loader says what it is."""
    from regvq_cli.engine.checkpoint import read_record
    from regvq_cli.engine.resolve import resolve_model

    record = read_record(resolve_model(spec, offline=offline).path)
    if record["model_type"] in PRIOR:
        check_init_architecture(values, record["model_type"], record["config"], spec)


def recorded_setting(state: dict, key: str):
    """A run's ``kind``, ``preset`` or ``num_timesteps`` as its resume state records it (for
    ``check_resume_settings``)."""
    return state["config"].get(key) if key in ("kind", "preset") else state["prior_config"].get(key)


def init_train_config(cfg: TrainPriorConfig, base: PriorConfig) -> TrainPriorConfig:
    """``cfg`` with the architecture of the init model's config ``base`` (a copy; ``cfg`` is not changed): a
    ``kind`` other than the default or a ``num_timesteps`` that differs is an error; ``kind`` and ``preset`` are
    taken from it, and so are the text encoder settings left at their defaults."""
    kind = "ar" if isinstance(base, ARConfig) else "diffusion"
    base_dict = json.loads(json.dumps(dataclasses.asdict(base)))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainPriorConfig)}
    given = {k: getattr(cfg, k) for k in ("kind", "num_timesteps") if getattr(cfg, k) != defaults[k]}
    check_init_architecture(given, kind, base_dict, cfg.init)
    out = copy.copy(cfg)
    out.kind = kind
    out.preset = matching_preset(kind, base_dict) or "custom"  # set directly: "custom" is not a key of PRESETS
    if base.cond == "text":
        for key in ("text_encoder", "text_max_tokens"):
            if getattr(out, key) == defaults[key]:
                setattr(out, key, getattr(base, key))
    return out


class PriorTrainer(Trainer):
    """Owns the model, optimizer, in-memory data and run directory; ``run()`` (regvq_cli.train.loop) trains and
    exports."""

    state_format = STATE_FORMAT
    what = "prior"
    unit = "samples"

    def __init__(self, tokens_dir, run_dir, cfg: TrainPriorConfig, offline: bool = False):
        super().__init__(run_dir, cfg, offline)
        self.tokens_dir = str(tokens_dir)

        from regvq_cli.data.shards import ShardReader

        self.init_config, init_model = self._init_source(
            PRIOR, lambda state: _prior_config_class(state["config"]["kind"])(**state["prior_config"]))
        if self.init_config is not None:
            self.cfg = init_train_config(self.cfg, self.init_config)
        cfg = self.cfg
        state = self._read_state()
        for key in ("kind", "preset") if state is not None else ():  # before any data or weights are read
            if state["config"].get(key) != getattr(cfg, key):
                raise started_otherwise(self.run_dir, key, state["config"].get(key), getattr(cfg, key))
        fields = set(ShardReader(tokens_dir).fields)
        self.cond = self._resolve_cond(fields)
        want = {"class": {"labels"}, "text": {"captions"}, "segmap": {"segmaps"}}.get(self.cond, set())
        self.data = TokenData(tokens_dir, want)
        self.val_idx, self.train_idx = held_out_split(len(self.data), cfg.val_size)
        self.table = self._text_table() if self.cond == "text" else None
        self.prior_cfg = self._prior_config()

        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.model = model_for(self.prior_cfg).to(self.device)
        if init_model is not None:
            self.model.load_state_dict(init_model.state_dict())
            del init_model
        self.ema = EMA(self.model, cfg.ema_decay)  # after the init weights: the EMA starts from them
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}], self.device, lr=cfg.lr, betas=cfg.betas)

        seed_everything(cfg.seed, self.dist.rank)  # each rank draws its own timesteps, masks and drops
        if self.state_path.exists():
            self._resume()
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model_ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.model_ddp = self.model
        self.model_fwd = maybe_compile(self.model_ddp, cfg.compile)
        self._tokenizer = None
        self.decode_note = ""
        self.metrics = MetricsWriter(self.run_dir / METRICS_NAME, enabled=self.main)

    # ---- setup --------------------------------------------------------------------------------------------
    def _resolve_cond(self, fields: set[str]) -> str:
        """The condition to train; fine-tuning: "auto" is the init model's, which the shards must carry."""
        cfg, base = self.cfg, self.init_config
        if base is None or cfg.cond != "auto":
            return resolve_cond(cfg, fields, self.tokens_dir)
        need = {"class": "labels", "text": "captions", "segmap": "segmaps"}.get(base.cond)
        if need is not None and need not in fields:
            raise RegvqError(f"--init {cfg.init} is conditioned on {base.cond} ({need}), and {self.tokens_dir} has "
                             f"no {need}: fine-tune it on tokens that carry them, or train from scratch")
        return base.cond

    def _text_table(self) -> TextStateTable:
        cfg = self.cfg
        captions = sorted({c for c in self.data.captions if c})
        if not captions:
            raise RegvqError(f"{self.tokens_dir} has no captions (all empty): train with --cond none")
        if cfg.text_states:
            table = TextStateTable.load(cfg.text_states)
        else:
            path = self.run_dir / TEXT_STATES_NAME
            if self.main and not path.exists():
                precompute_text_states(captions, path, cfg.text_encoder, cfg.text_max_tokens, device=self.device,
                                       offline=self.offline)
            barrier()
            table = TextStateTable.load(path)
            if table.encoder != cfg.text_encoder or table.max_tokens != cfg.text_max_tokens:
                raise RegvqError(f"{path} holds {table.encoder} states of {table.max_tokens} tokens, not "
                                 f"{cfg.text_encoder} / {cfg.text_max_tokens}: delete it or use the same settings")
        missing = [c for c in captions if c not in table.index]
        if missing:
            raise RegvqError(f"{len(missing)} captions of {self.tokens_dir} are not in the text states "
                             f"{cfg.text_states or ''} (e.g. {missing[0]!r}); recompute them for this folder")
        return table

    def _prior_config(self):
        cfg, data, init = self.cfg, self.data, self.init_config  # init: the config of the model fine-tuned, or None
        over = dict(codebook_size=data.codebook_size, grid_size=data.grid, cond=self.cond,
                    cond_dropout=cfg.cond_dropout, tokenizer=data.tokenizer_id,
                    tokenizer_sha256=data.tokenizer_sha256)
        if self.cond == "class":
            n = int(data.labels.max()) + 1 if len(data.labels) else 0
            names = data.label_names
            if names:
                if n > len(names):
                    raise RegvqError(f"{self.tokens_dir}: label {n - 1} but only {len(names)} label names")
                n = len(names)
            elif init is not None and init.cond == "class" and n <= init.num_classes:
                n, names = init.num_classes, list(init.class_names)  # unnamed ids among the model's classes
            if n < 1:
                raise RegvqError(f"{self.tokens_dir} has no labelled rows: train with --cond none")
            over.update(num_classes=n, class_names=tuple(names))
        elif self.cond == "text":
            over.update(text_encoder=self.table.encoder, text_max_tokens=self.table.max_tokens,
                        text_dim=self.table.dim)
        elif self.cond == "segmap":
            seen = int(data.segmaps.max()) + 1
            n = cfg.seg_classes or (init.seg_classes if init is not None else 0) or seen
            if n < seen:
                raise RegvqError(f"the maps use label {seen - 1} but seg_classes is {n}")
            over.update(seg_classes=n)
        template = init if init is not None else PRESETS[cfg.preset]
        for key in TUNABLE:
            value = getattr(cfg, key)
            if value is not None:
                if not hasattr(template, key):
                    raise RegvqError(f"{key} applies to diffusion priors only")
                over[key] = value
        new = dataclasses.replace(template, **over)
        if init is not None:  # fine-tuning: the data must be what the model was trained to model
            for key in DATA_FIELDS:
                old, now = plain_value(getattr(init, key)), plain_value(getattr(new, key))
                if old != now:
                    raise RegvqError(f"--init {cfg.init} models {key} {_short(old)}, but {self.tokens_dir} gives "
                                     f"{_short(now)}: fine-tune on tokens like the model's (same tokenizer grid, "
                                     "codebook and conditions), or train from scratch without --init")
        return new

    # ---- what the resume state adds -----------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"prior_config": dataclasses.asdict(self.prior_cfg)}

    def _restore(self, state: dict) -> None:
        old = json.loads(json.dumps(state["prior_config"]))
        new = json.loads(json.dumps(dataclasses.asdict(self.prior_cfg)))
        diff = sorted((k for k in new if old.get(k) != new[k]), key=lambda k: (k != "cond", k))  # --cond first
        if diff:
            k = diff[0]
            setting = f"--cond {old.get(k)}, not {new[k]}" if k == "cond" else f"{k}={old.get(k)!r}, not {new[k]!r}"
            raise RegvqError(f"{self.run_dir} was started with {setting}: use the same settings and tokens, or a new "
                             "run directory")

    # ---- data ---------------------------------------------------------------------------------------------
    def data_size(self) -> tuple[int, str]:
        return len(self.data), "token grids"

    def _condition(self, idx: torch.Tensor):
        """(raw condition on the device, rows without one [B] bool) for dataset rows idx."""
        d, dev = self.data, self.device
        B = idx.shape[0]
        none = torch.zeros(B, dtype=torch.bool, device=dev)
        if self.cond == "class":
            labels = to_device(d.labels[idx], dev)
            return labels.clamp(min=0), labels < 0
        if self.cond == "text":
            caps = [d.captions[i] for i in idx.tolist()]
            fill = next((c for c in caps if c), next(iter(self.table.index)))
            states = self.table.lookup([c or fill for c in caps], device=dev)  # empty captions: dropped below
            return states, to_device(torch.tensor([not c for c in caps]), dev)
        if self.cond == "segmap":
            return to_device(d.segmaps[idx].long(), dev), none
        return None, none

    def _next_batch(self):
        if self._batch_iter is None:
            sampler = ShardedBatchSampler(len(self.train_idx), self.cfg.batch_size, self.dist.rank,
                                          self.dist.world_size, self.cfg.seed, start_batch=self.batches)
            self._batch_iter = iter(sampler)
        idx = self.train_idx[torch.tensor([i for i, _ in next(self._batch_iter)], dtype=torch.long)]
        self.batches += 1
        return self._rows(idx)

    def _rows(self, idx: torch.Tensor):
        """(token grids [B, h, w], raw condition, rows without one [B] bool) of dataset rows idx, on the device."""
        return (to_device(self.data.tokens[idx].long(), self.device), *self._condition(idx))

    # ---- one optimisation step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimisation step. Loss terms and the gradient norm go to the window's device-side sums (read at
        the next log), so the step does not wait for the GPU; it returns host numbers only."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps)
        set_lr(self.opt, lr)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        summed: dict[str, torch.Tensor] = {}  # loss terms, averaged over the micro-batches
        n = 0
        for micro in range(cfg.grad_accum):
            x, cond, missing = self._next_batch()
            n += x.shape[0]
            drop = None
            if self.cond != "none":
                drop = (torch.rand(x.shape[0], device=self.device) < cfg.cond_dropout) | missing
            with self._sync(self.model_ddp, micro == cfg.grad_accum - 1), autocast(self.device, cfg.bf16):
                loss, parts = self.model.loss(x, cond, drop=drop, net=self.model_fwd)
            (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss, **parts}.items():
                v = v.detach().float() / cfg.grad_accum
                summed[k] = summed[k] + v if k in summed else v
        if cfg.grad_clip:
            summed["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        self._add_pending(summed)
        return {"lr": lr, "samples": float(n * self.dist.world_size)}

    # ---- held-out score -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """``val_loss``: the EMA model's mean loss over the held-out grids (an AR prior's: cross-entropy per token,
        in nats), each with its own condition; diffusion timesteps and noise come from a fixed seed. Every rank
        scores its share of the grids and the sums are reduced, so all ranks return the same number."""
        if len(self.val_idx) == 0:
            return {}
        cfg, model = self.cfg, self.ema.model
        mine = self.val_idx[self.dist.rank::self.dist.world_size]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of losses x grids, grids]
        devices = [self.device] if self.device.type == "cuda" else []
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices), autocast(self.device, cfg.bf16):
            torch.manual_seed(VAL_SEED)
            for start in range(0, len(mine), cfg.batch_size):
                idx = mine[start:start + cfg.batch_size]
                x, cond, missing = self._rows(idx)
                loss, _ = model.loss(x, cond, drop=missing if self.cond != "none" else None)
                total[0] += loss.double() * len(idx)
                total[1] += len(idx)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(total)
        return {"val_loss": (total[0] / total[1]).item()}

    # ---- samples, model card ------------------------------------------------------------------------------
    def sample_conditions(self, k: int):
        """Conditions for k sample grids: classes in turn, the first captions / maps of the data, or None."""
        d, cfg = self.data, self.prior_cfg
        if self.cond == "class":
            return torch.arange(k) % cfg.num_classes
        if self.cond == "text":
            caps = [c for c in d.captions if c][:k]
            caps = (caps * k)[:k]
            return self.table.lookup(caps)
        if self.cond == "segmap":
            return d.segmaps[torch.arange(k) % len(d)].long()
        return None

    def sample(self) -> Path | None:
        """Token grids from the EMA model (rank 0), saved as .npy and, when the tokenizer loads, as a PNG."""
        from regvq_cli.priors.sampling import sample_ar, sample_diffusion

        k = self.cfg.num_samples
        if not self.main or k <= 0:
            return None
        model = self.ema.model.eval()
        cond = self.sample_conditions(k)
        if isinstance(cond, TextStates):
            cond = TextStates(cond.states.to(self.device), cond.mask.to(self.device))
        elif cond is not None:
            cond = cond.to(self.device)
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        if self.cfg.kind == "ar":
            tokens = sample_ar(model, cond, k, cfg=self.cfg.sample_cfg, generator=g)
        else:
            tokens = sample_diffusion(model, cond, k, steps=self.cfg.sample_steps, cfg=self.cfg.sample_cfg,
                                      generator=g)
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:06d}.npy"
        np.save(path, tokens.cpu().numpy().astype(np.int32))
        tok = self._load_tokenizer()
        if tok is not None:
            with torch.no_grad():
                images = tok.decode(tokens.to(self.device)).float().cpu()  # [k, 3, H, W] in [-1, 1]
            path = folder / f"step-{self.step:06d}.png"
            _save_row(images, path)
        return path

    def _load_tokenizer(self):
        """The shards' tokenizer (checked against the recorded sha256), or None with the reason kept."""
        if self._tokenizer is not None or self.decode_note:
            return self._tokenizer
        if not self.cfg.decode_samples:
            self.decode_note = "decoding turned off"
            return None
        tid, sha = self.data.tokenizer_id, self.data.tokenizer_sha256
        try:
            from regvq_cli.engine.checkpoint import file_sha256, weights_path
            from regvq_cli.engine.resolve import load

            if not tid:
                raise RegvqError("the shards name no tokenizer")
            # building the model draws its initial weights from the global generators: a draw the run would
            # otherwise make or not depending on where it was resumed (the same run, stopped once, trained otherwise)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                tok = load(tid, device=self.device, offline=self.offline)
            if sha and file_sha256(weights_path(tok.regvq_path)) != sha:
                raise RegvqError(f"tokenizer {tid} does not match the sha256 recorded with the shards")
        except RegvqError as e:
            self.decode_note = f"samples not decoded: {e}"
            return None
        self._tokenizer = tok.eval()
        return self._tokenizer

    def model_card(self, final: dict) -> str:
        cfg, pc = self.cfg, self.prior_cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        what = {"ar": "autoregressive transformer (LlamaGen-style: RoPE, RMSNorm, SwiGLU)",
                "diffusion": "discrete diffusion prior (VQ-Diffusion mask-and-replace)"}[cfg.kind]
        cond = {"none": "unconditional", "class": f"class-conditional ({pc.num_classes} classes)",
                "text": f"text-conditional ({pc.text_encoder} states, {pc.text_max_tokens} tokens)",
                "segmap": f"conditioned on segmentation maps ({pc.seg_classes} labels)"}[self.cond]
        rows = [f"| {k} | {v:.4g} |" for k, v in final.items()
                if k in ("loss", "ce", "vlb", "val_loss", "grad_norm", "samples_per_s")]
        lines = [
            "---", "library_name: regvq", f"tags: [regvq, prior, {cfg.kind}]", "---", "",
            f"# {self.run_dir.name}: {cfg.kind} prior", "",
            f"A `{cfg.preset}` {what}, {cond}, over {pc.grid_size[0]}x{pc.grid_size[1]} grids of "
            f"{pc.codebook_size} codes from the tokenizer `{pc.tokenizer or 'unknown'}`; "
            f"{n_params / 1e6:.1f}M parameters. {_sentence(self._trained_with('regvq train-prior'))}.", "",
            "## Training", "",
            f"- data: {self.tokens_dir} ({len(self.data)} token grids)",
            f"- steps: {self.step}, batch {cfg.batch_size} x {self.dist.world_size} process(es) x "
            f"{cfg.grad_accum} accumulation, lr {cfg.lr}",
            f"- condition dropout (classifier-free guidance): {cfg.cond_dropout}",
            f"- time: {self.elapsed / 3600:.2f} h",
            *self._card_end(rows),
        ]
        return "\n".join(lines) + "\n"

    def _export_info(self) -> dict:
        info = {"trained_on": {"tokens": self.tokens_dir, "rows": len(self.data),
                               "tokenizer": {"id": self.data.tokenizer_id, "sha256": self.data.tokenizer_sha256}}}
        if self.decode_note:
            info["note"] = self.decode_note
        return info


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _save_row(images: torch.Tensor, path: Path) -> None:
    """Images [k, 3, H, W] in [-1, 1] -> one PNG, side by side."""
    from PIL import Image

    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.concatenate(list(arr), axis=1)).save(tmp, format="PNG")
    tmp.replace(path)


def train_prior(tokens_dir, run_dir, cfg: TrainPriorConfig | None = None,
                callback: Callable[[int, dict], None] | None = None,
                on_note: Callable[[str], None] | None = None, offline: bool = False) -> Path:
    """Train (or resume) a prior on a token folder; returns the exported model folder ``run_dir/model``.

    ``callback(step, metrics)`` is called on rank 0 after every optimisation step (for a progress bar);
    ``on_note(message)`` on rank 0 for what a resume found (data of another size). ``offline``: the init model,
    a text encoder and the shards' tokenizer come from the Hugging Face cache only.
    """
    trainer = PriorTrainer(tokens_dir, run_dir, cfg or TrainPriorConfig(), offline)
    trainer.on_note = on_note
    return trainer.run(callback)
