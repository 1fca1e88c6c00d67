"""``SteerConfig``: how a context is steered (method, alpha, top-k, where, which layers/heads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from steerc.settings import _JsonDataclass

__all__ = ["SteerConfig", "METHODS", "BLOCK_MASKS", "RETRIEVE_FOR", "STEER_AT", "LAYER_BANDS", "AUTO_LAYERS", "DEFAULT_PREFIXES", "UNITS", "RANK_BY", "band_layers"]

# The steering methods (steerc.steering.methods holds one object per name).
METHODS = ("none", "query", "qllm", "llmsteer", "pasta", "autopasta")
UNITS = ("auto", "sentence", "paragraph")
BLOCK_MASKS = ("hard", "soft")
RETRIEVE_FOR = ("question", "answer")
RANK_BY = ("attention", "lexical")
STEER_AT = ("prefill", "decode", "both")
# Named layer sets that fit any depth: thirds of the stack (for 30 layers: 0-9, 10-19, 20-29).
LAYER_BANDS = ("all", "first-third", "middle-third", "last-third")
# ``layers = "auto"``: the method's own default band (chosen for it on dev; see docs/RESULTS.md).
AUTO_LAYERS = "auto"


def band_layers(band: str, num_layers: int) -> tuple[int, ...]:
    """The layer indices of a named band (``LAYER_BANDS``) in a ``num_layers``-deep model."""
    if band not in LAYER_BANDS:
        raise ValueError(f"layer band must be one of {LAYER_BANDS}, got {band!r}")
    if band == "all":
        return tuple(range(num_layers))
    part = LAYER_BANDS.index(band) - 1
    start, end = round(part * num_layers / 3), round((part + 1) * num_layers / 3)
    return tuple(range(start, max(end, start + 1)))  # never empty, even for 1-2 layers
# LLMSteer's two query-free instruction prefixes (as reported; see shared/papers.md).
DEFAULT_PREFIXES = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words. The following are given passages.",
    "Respond to the query using only the provided texts. Only return the answer. DO NOT return any extra words. Below are the provided texts.",
)


def _int_tuple(name: str, value) -> tuple[int, ...] | None:
    if value is None:
        return None
    if name == "layers" and isinstance(value, str):
        if value not in (AUTO_LAYERS, *LAYER_BANDS):
            raise ValueError(f"layers must be a list of integers, null, or one of {(AUTO_LAYERS, *LAYER_BANDS)}, got {value!r}")
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of integers or null, got {value!r}")
    out = tuple(value)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in out):
        raise ValueError(f"{name} must be a non-empty list of non-negative integers, got {list(out)}")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class SteerConfig(_JsonDataclass):
    """``method``: ``none`` (plain cached context), ``query`` (query-aware evidence, below),
    ``llmsteer`` (dual-prefix selection), ``pasta`` (user ``highlights``: character ranges of
    the context), ``autopasta`` (the model picks the key sentence per query). ``alpha`` in (0, 1]: unselected context keys get
    ``log(alpha)``. ``top_k``: a ratio of the context (< 1) or a token count (>= 1).
    ``steer_at``: ``prefill`` (the stored KV comes from a steered prefill), ``decode`` (plain
    KV; the bias applies whenever later tokens attend to the context) or ``both``.
    ``layers`` / ``heads``: steered layers and query heads (null = all; ``layers`` may also name
    a band of ``LAYER_BANDS``, or ``auto``, the default: the method's own band, chosen on dev);
    ``profile``, a list of
    ``[layer, head]`` pairs, replaces both. ``window`` > 0 counts only the last ``window``
    context tokens' attention (an observation window) instead of every row.

    ``query`` (query-aware evidence, per question): the ``evidence`` best units (``unit``:
    sentences, the documents/lines of a multi-document input, or ``auto``) by the question's
    calibrated attention summed over the ``selector`` heads (``[layer, head]`` pairs; empty = the
    engine's shipped profile, else the middle half of the layers), or by word overlap with
    ``rank_by = lexical``. ``min_share`` > 0 steers only when a unit holds at least that share of
    the score. ``target_share`` in (0, 1) replaces the fixed alpha by, per steered head, the one
    that lifts the evidence's attention share to it (``alpha`` is then the strongest allowed).

    ``qllm`` (Q-LLM block retrieval, per question): the context is cut into blocks of
    ``block_size`` tokens; the ``blocks`` whose representative keys best match the question's
    query vectors are attended to, with the first ``initial`` and the last ``local`` context
    tokens, the instruction head and the query; the other blocks are dropped (``block_mask =
    hard``: the question runs on a KV cut down to the kept keys, positions preserved) or get
    ``log(alpha)`` (``soft``). ``retrieve_for = question`` (the default, Q-LLM's form): the
    question is read again over the retrieved blocks only (the first read, over everything,
    scores the blocks); ``answer``: the question is read once over everything and only its last
    token and the answer attend to the retrieved blocks (no second question prefill).

    ``keep`` (every method): store only the KV of the kept context tokens, a ratio in (0, 1] of
    the context or a count; 1 keeps everything. The kept tokens are the first ``keep_sinks``
    context tokens, the last ``keep_recent`` and the rest by LLMSteer's dual-prefix importance
    (``keep_unit``: single tokens, or whole sentences / documents ranked by their mean importance);
    the instruction head is always kept and every key keeps its original position."""

    method: str = "query"
    alpha: float = 0.1
    top_k: float = 0.2
    steer_at: str = "decode"
    layers: tuple[int, ...] | str | None = AUTO_LAYERS
    heads: tuple[int, ...] | None = None
    profile: tuple[tuple[int, int], ...] = ()
    prefixes: tuple[str, str] = DEFAULT_PREFIXES
    window: int = 0
    highlights: tuple[tuple[int, int], ...] = field(default=())
    evidence: int = 1
    unit: str = "auto"
    selector: tuple[tuple[int, int], ...] = ()
    rank_by: str = "attention"
    target_share: float = 0.0
    min_share: float = 0.0
    blocks: int = 4
    block_size: int = 64
    initial: int = 16
    local: int = 64
    block_mask: str = "hard"
    retrieve_for: str = "question"
    keep: float = 1.0
    keep_sinks: int = 4
    keep_recent: int = 0
    keep_unit: str = "token"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be a number in (0, 1] (1 = no steering), got {self.alpha!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, float)) or not math.isfinite(self.top_k) or self.top_k <= 0:
            raise ValueError(f"top_k must be a ratio in (0, 1) or a token count >= 1, got {self.top_k!r}")
        if self.top_k >= 1 and self.top_k != int(self.top_k):
            raise ValueError(f"top_k >= 1 is a token count and must be a whole number, got {self.top_k!r}")
        if self.steer_at not in STEER_AT:
            raise ValueError(f"steer_at must be one of {STEER_AT}, got {self.steer_at!r}")
        object.__setattr__(self, "layers", _int_tuple("layers", self.layers))
        object.__setattr__(self, "heads", _int_tuple("heads", self.heads))
        object.__setattr__(self, "profile", _pairs("profile", self.profile))
        object.__setattr__(self, "selector", _pairs("selector", self.selector))
        prefixes = tuple(self.prefixes)
        if len(prefixes) != 2 or not all(isinstance(p, str) and p.strip() for p in prefixes):
            raise ValueError("prefixes must be two non-empty strings (LLMSteer prefills the context behind each)")
        object.__setattr__(self, "prefixes", prefixes)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be a non-negative integer (0 = every query row), got {self.window!r}")
        spans = tuple(tuple(s) for s in self.highlights)
        if any(len(s) != 2 or not (0 <= s[0] < s[1]) for s in spans):
            raise ValueError(f"highlights must be [start, end) character ranges with 0 <= start < end, got {self.highlights!r}")
        object.__setattr__(self, "highlights", spans)
        if isinstance(self.evidence, bool) or not isinstance(self.evidence, int) or self.evidence < 1:
            raise ValueError(f"evidence (the number of units query steering keeps) must be a whole number >= 1, got {self.evidence!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")
        if isinstance(self.target_share, bool) or not isinstance(self.target_share, (int, float)) or not (self.target_share == 0 or 0 < self.target_share < 1):
            raise ValueError(f"target_share must be 0 (off: a fixed alpha) or a share in (0, 1), got {self.target_share!r}")
        if self.target_share and self.rank_by != "attention":
            raise ValueError("target_share needs the question's attention: use it with rank_by 'attention'")
        if isinstance(self.min_share, bool) or not isinstance(self.min_share, (int, float)) or not 0 <= self.min_share < 1:
            raise ValueError(f"min_share must be in [0, 1) (0 = always steer), got {self.min_share!r}")
        for name, low in (("blocks", 1), ("block_size", 4), ("initial", 0), ("local", 0), ("keep_sinks", 0), ("keep_recent", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.keep_unit not in ("token", *UNITS):
            raise ValueError(f"keep_unit must be one of {('token', *UNITS)}, got {self.keep_unit!r}")
        if self.block_mask not in BLOCK_MASKS:
            raise ValueError(f"block_mask must be one of {BLOCK_MASKS}, got {self.block_mask!r}")
        if self.retrieve_for not in RETRIEVE_FOR:
            raise ValueError(f"retrieve_for must be one of {RETRIEVE_FOR}, got {self.retrieve_for!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not math.isfinite(self.keep) or self.keep <= 0:
            raise ValueError(f"keep must be a ratio in (0, 1] of the context or a token count >= 2, got {self.keep!r}")
        if self.keep > 1 and self.keep != int(self.keep):
            raise ValueError(f"keep above 1 is a token count and must be a whole number, got {self.keep!r}")
        if self.method in ("query", "qllm") and self.steer_at != "decode":
            raise ValueError(f"method {self.method!r} picks its evidence per question, so the stored KV stays plain and the bias applies while the question "
                             f"is prefilled and decoded: steer_at must be 'decode', got {self.steer_at!r}")
        if self.method == "pasta" and not spans:
            raise ValueError("method 'pasta' needs highlights: character ranges of the context to emphasise (e.g. [[120, 180]]; on the command line --highlight 120:180)")

    @property
    def band(self) -> str | None:
        """The named layer band steered (``auto`` resolved to the method's default), or None."""
        if self.layers == AUTO_LAYERS:
            from steerc.steering.methods import get_method  # the methods import this module

            return get_method(self.method).default_layers
        return self.layers if isinstance(self.layers, str) else None

    def steered_pairs(self, num_layers: int, num_heads: int) -> list[tuple[int, int]]:
        """The (layer, head) pairs the bias applies to; raises on indices beyond the engine."""
        if self.profile:
            pairs = list(self.profile)
        else:
            layers = range(num_layers) if self.layers is None else band_layers(self.band, num_layers) if isinstance(self.layers, str) else self.layers
            heads = self.heads if self.heads is not None else range(num_heads)
            pairs = [(layer, head) for layer in layers for head in heads]
        bad = [p for p in pairs if p[0] >= num_layers or p[1] >= num_heads]
        if bad:
            raise ValueError(f"steered layer/head {bad[0]} is outside the engine ({num_layers} layers x {num_heads} heads)")
        return pairs

    @staticmethod
    def query_fields() -> tuple[str, ...]:
        """Fields only query-time selection reads (never part of a stored entry's key)."""
        return ("evidence", "unit", "selector", "rank_by", "target_share", "min_share", "blocks", "initial", "local", "block_mask", "retrieve_for",
                "block_size", "keep", "keep_sinks", "keep_recent", "keep_unit")

    @property
    def compacts(self) -> bool:
        """Whether the stored context keeps only some context tokens' KV."""
        return self.keep != 1


def _pairs(name: str, value) -> tuple[tuple[int, int], ...]:
    pairs = tuple(tuple(p) for p in value)
    if any(len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p) for p in pairs):
        raise ValueError(f"{name} must be a list of [layer, head] pairs of non-negative integers, got {value!r}")
    return tuple(sorted(set(pairs)))
