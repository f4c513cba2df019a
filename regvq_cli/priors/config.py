"""Fields every prior's config shares: what it models (codebook, grid, tokenizer) and what it is conditioned on.

`ARConfig` and `DiffusionConfig` extend `PriorConfig` with their architecture. Everything here must survive a
JSON round trip (`Config(**json.loads(json.dumps(asdict(cfg)))) == cfg`), so tuples are restored in
`__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass

from regvq_cli.errors import RegvqError

COND_KINDS = ("none", "class", "text", "segmap")
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"


@dataclass
class PriorConfig:
    # What the prior models: token grids [h, w] of ids in [0, codebook_size).
    codebook_size: int = 1024
    grid_size: tuple[int, int] = (16, 16)
    # Condition kind, one of COND_KINDS, and its details.
    cond: str = "none"
    num_classes: int = 0  # cond == "class": ids in [0, num_classes)
    class_names: tuple[str, ...] = ()  # cond == "class": optional names, index = id (from the shard labels)
    text_encoder: str = DEFAULT_TEXT_ENCODER  # cond == "text": a Hugging Face encoder name or path (frozen, not saved)
    text_dim: int = 384  # cond == "text": width of the encoder's hidden states
    text_max_tokens: int = 32  # cond == "text": captions are padded / truncated to this many tokens
    seg_classes: int = 0  # cond == "segmap": label ids in [0, seg_classes)
    # Classifier-free guidance: probability of replacing the condition by the learned null at training.
    cond_dropout: float = 0.1
    # The tokenizer whose codes this prior models (id and weights sha256 from the token shards' manifest).
    tokenizer: str = ""
    tokenizer_sha256: str = ""

    def __post_init__(self):
        self.grid_size = tuple(int(v) for v in self.grid_size)
        self.class_names = tuple(str(v) for v in self.class_names)
        if len(self.grid_size) != 2 or min(self.grid_size) < 1:
            raise RegvqError(f"grid_size must be two positive ints (h, w), got {self.grid_size}")
        if self.codebook_size < 2:
            raise RegvqError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.cond not in COND_KINDS:
            raise RegvqError(f"unknown condition kind {self.cond!r}; use one of {', '.join(COND_KINDS)}")
        if self.cond == "class":
            if self.num_classes < 1:
                raise RegvqError("a class-conditional prior needs num_classes >= 1")
            if self.class_names and len(self.class_names) != self.num_classes:
                raise RegvqError(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if self.cond == "segmap" and self.seg_classes < 1:
            raise RegvqError("a segmentation-map prior needs seg_classes >= 1")
        if self.cond == "text" and (self.text_dim < 1 or self.text_max_tokens < 1):
            raise RegvqError("a text-conditional prior needs text_dim >= 1 and text_max_tokens >= 1")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise RegvqError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")

    @property
    def seq_len(self) -> int:
        """Number of image tokens, h * w."""
        return self.grid_size[0] * self.grid_size[1]
