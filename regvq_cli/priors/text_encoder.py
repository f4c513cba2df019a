"""A BERT encoder in plain torch, for the default caption encoder: all-MiniLM-L6-v2 (the sentence-transformers
checkpoint of MiniLM, Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation"; a 6-layer BERT of width 384).

With it, text prompts need neither `transformers` nor a download: regvq embeds the checkpoint (fp16) and runs it
here. Parameter names follow Hugging Face's BertModel, so its `model.safetensors` loads as it is; the pooler is
not used (the priors read the per-token states). Tokenization is the `tokenizers` library reading the
checkpoint's own tokenizer.json, so ids match the reference tokenizer exactly.

    encoder = BertTextEncoder.from_folder(path)      # config.json, model.safetensors, tokenizer.json
    states, mask = encoder(["a red bird"], max_tokens=32)   # [B, T, 384] fp32, [B, T] bool
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_file(cls, path) -> "BertConfig":
        d = json.loads(Path(path).read_text())
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def is_bert_folder(folder) -> bool:
    """A local checkpoint this module can run: a BERT config.json, model.safetensors and tokenizer.json."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("model_type") == "bert" and config.get("hidden_act", "gelu") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())


def _linear_norm(d_in: int, d_out: int, eps: float) -> nn.ModuleDict:
    return nn.ModuleDict({"dense": nn.Linear(d_in, d_out), "LayerNorm": nn.LayerNorm(d_out, eps=eps)})


class BertEncoder(nn.Module):
    """Embeddings (word + position + token type, LayerNorm) then post-norm transformer layers; returns the last
    hidden states [B, T, hidden]. The nested ModuleDicts only reproduce Hugging Face's parameter names."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        h, eps = c.hidden_size, c.layer_norm_eps
        self.embeddings = nn.ModuleDict({
            "word_embeddings": nn.Embedding(c.vocab_size, h),
            "position_embeddings": nn.Embedding(c.max_position_embeddings, h),
            "token_type_embeddings": nn.Embedding(c.type_vocab_size, h),
            "LayerNorm": nn.LayerNorm(h, eps=eps),
        })
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(nn.ModuleDict({
            "attention": nn.ModuleDict({
                "self": nn.ModuleDict({"query": nn.Linear(h, h), "key": nn.Linear(h, h), "value": nn.Linear(h, h)}),
                "output": _linear_norm(h, h, eps),
            }),
            "intermediate": nn.ModuleDict({"dense": nn.Linear(h, c.intermediate_size)}),
            "output": _linear_norm(c.intermediate_size, h, eps),
        }) for _ in range(c.num_hidden_layers))})

    def forward(self, input_ids, attention_mask):
        """input_ids [B, T] long, attention_mask [B, T] (1 = token, 0 = padding) -> states [B, T, hidden]."""
        c, e = self.config, self.embeddings
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)
        x = e["word_embeddings"](input_ids) + e["position_embeddings"](positions)[None] \
            + e["token_type_embeddings"].weight[0]  # one segment: token type 0 everywhere
        x = e["LayerNorm"](x)
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]: padded keys are never attended
        heads, hd = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        for layer in self.encoder["layer"]:
            att = layer["attention"]
            q, k, v = (att["self"][n](x).view(B, T, heads, hd).transpose(1, 2) for n in ("query", "key", "value"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, T, -1)
            x = att["output"]["LayerNorm"](x + att["output"]["dense"](y))
            y = layer["output"]["dense"](F.gelu(layer["intermediate"]["dense"](x)))
            x = layer["output"]["LayerNorm"](x + y)
        return x


class BertTextEncoder:
    """Tokenizer + BertEncoder of one checkpoint folder, frozen, in fp32 on `device`."""

    def __init__(self, tokenizer, model: BertEncoder):
        self.tokenizer, self.model = tokenizer, model

    @classmethod
    def from_folder(cls, folder, device=None) -> "BertTextEncoder":
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        model = BertEncoder(BertConfig.from_file(folder / "config.json"))
        state = load_file(str(folder / "model.safetensors"))
        # the pooler and the position-id buffer of some exports are not part of this encoder
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        model.load_state_dict(state)
        model.float().eval().requires_grad_(False).to(device or "cpu")
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), model)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str], max_tokens: int):
        """(states [B, max_tokens, hidden] fp32, mask [B, max_tokens] bool), texts truncated / padded to
        max_tokens as Hugging Face's `padding="max_length", truncation=True` does ([CLS] ... [SEP], then [PAD])."""
        tok = self.tokenizer
        tok.enable_truncation(max_tokens)
        tok.enable_padding(length=max_tokens, pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        batch = tok.encode_batch(list(texts))
        dev = next(self.model.parameters()).device
        ids = torch.tensor([b.ids for b in batch], dtype=torch.long, device=dev).reshape(len(batch), max_tokens)
        mask = torch.tensor([b.attention_mask for b in batch], device=dev).reshape(len(batch), max_tokens).bool()
        return self.model(ids, mask), mask
