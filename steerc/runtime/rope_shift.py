"""Moving a cached KV to other positions: re-rotating its keys by the position offset.

A decoder with rotary position embeddings (RoPE) stores keys already rotated by their position:
``k(p) = R(p) k``, with ``R(p)`` a rotation by ``p * inv_freq`` in each pair of rotary dims. With
frequencies that do not depend on the position, ``R(p + d) = R(d) R(p)``, so a key computed at
position ``p`` moves to ``p + d`` exactly (to float rounding) by one more rotation, ``R(d)``.
Values carry no position. This is what lets a document's KV, computed once behind the instruction
head, be placed anywhere in an assembled context (:mod:`steerc.steering.documents`).

The frequencies come from the engine folder's ``config.json`` (the HF config the compile copies
into it, covered by the manifest's hashes): the rope type, theta, partial rotary factor and
scaling, per layer type where a model has several (Gemma 3: local and global layers). Refused,
with a :class:`RopeShiftError` saying why:

* no rotary embedding (learned absolute positions, GPT-2): a key's position is in its hidden state;
* position-dependent scaling (``dynamic`` NTK, ``longrope``): the frequencies change with length;
* an architecture whose rotary layout is not the ``rotate_half`` one this module applies;
* (:meth:`RopeShift.check_window`) a sliding window shorter than the assembled context.

Shapes: ``L`` layers, ``Hkv`` kv heads, ``P`` positions, ``D`` head dim, ``R`` rotary dims (``<= D``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerc.errors import SteercError
from steerc.models.windows import sliding_window
from steerc.runtime.kv_cache import KVCache

__all__ = ["RopeShift", "RopeShiftError", "rope_shift_for", "rope_shift_from_config", "MOVABLE_MODEL_TYPES", "FIXED_ROPE_TYPES"]

# Architectures whose attention applies HF's ``rotate_half`` RoPE to the first R dims of each key
# (checked against transformers by tests/runtime/test_rope_shift.py for llama, qwen2, mistral, gemma2, gemma3).
MOVABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "smollm3")
# Rope types whose frequencies do not depend on the position or the sequence length.
FIXED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "proportional")


class RopeShiftError(SteercError):
    """A cached KV of this engine cannot be moved to other positions exactly."""


@dataclass(frozen=True)
class RopeShift:
    """Each layer's rotary frequencies and the shortest sliding window (None: none)."""

    inv_freq: tuple[np.ndarray, ...]  # L x [R/2] float64
    window: int | None = None

    def __post_init__(self) -> None:
        if not self.inv_freq:
            raise ValueError("RopeShift needs the frequencies of at least one layer")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of positions or None, got {self.window!r}")

    @property
    def num_layers(self) -> int:
        return len(self.inv_freq)

    def check_window(self, total: int, what: str = "the assembled context") -> None:
        """Refuse an assembled context of ``total`` positions longer than the sliding window: its
        sliding layers would see less of it than a document's cached KV saw (or more)."""
        if self.window is not None and total > self.window:
            raise RopeShiftError(f"{what} needs {total} positions but this engine's sliding-window layers see only the last {self.window}: "
                                 "cached documents cannot be assembled exactly past the window; use a full prefill (no --documents)")

    def shift(self, kv: KVCache, delta: int) -> KVCache:
        """``kv`` with every key moved ``delta`` positions later (earlier when negative); values
        are shared, not copied. Keyless (shared-attention) layers have no keys to move."""
        if kv.num_layers != self.num_layers:
            raise RopeShiftError(f"a KV of {kv.num_layers} layers does not fit rotary frequencies of {self.num_layers} layers")
        if delta == 0:
            return kv
        keys = [None if k is None else _rotate(k, delta, f) for k, f in zip(kv.keys, self.inv_freq)]
        return KVCache(keys, list(kv.values))


def _rotate(keys: np.ndarray, delta: int, inv_freq: np.ndarray) -> np.ndarray:
    """``keys [B, Hkv, P, D]`` rotated by ``delta * inv_freq`` (``rotate_half`` layout on the first R dims)."""
    half = len(inv_freq)
    if 2 * half > keys.shape[-1]:
        raise RopeShiftError(f"rotary frequencies for {2 * half} dims do not fit keys of head dim {keys.shape[-1]}")
    angle = delta * inv_freq  # [R/2], float64: exact enough for any offset an engine allows
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    x = keys.astype(np.float32, copy=False)
    x1, x2 = x[..., :half], x[..., half : 2 * half]  # [B, Hkv, P, R/2] each
    out = np.array(x, copy=True)
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half : 2 * half] = x2 * cos + x1 * sin
    return out.astype(keys.dtype, copy=False)


def _default_inv_freq(params: dict, head_dim: int, config) -> np.ndarray:
    base = float(params["rope_theta"])
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
    dim = int(head_dim * factor)
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def rope_shift_from_config(config, num_layers: int | None = None, what: str = "this engine") -> RopeShift:
    """The :class:`RopeShift` of a transformers config (its text config for a multimodal one)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(config, "model_type", "?")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if params is None and getattr(config, "rope_theta", None) is not None:
        params = {"rope_type": "default", "rope_theta": config.rope_theta}
    if not params:
        raise RopeShiftError(f"{what} ({model_type}) has no rotary position embedding (its positions are learned), so a cached document's KV "
                             "cannot be moved to another position; use a full prefill (no --documents)")
    if model_type not in MOVABLE_MODEL_TYPES:
        raise RopeShiftError(f"{what} is a {model_type} model, whose rotary layout steerc does not move keys for (it does for "
                             f"{', '.join(MOVABLE_MODEL_TYPES)}); use a full prefill (no --documents)")
    layers = num_layers if num_layers is not None else int(config.num_hidden_layers)
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * layers)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    nested = all(isinstance(v, dict) for v in params.values())  # per layer type (Gemma 3)
    freqs = []
    for layer_type in types[:layers]:
        p = params.get(layer_type, {}) if nested else params
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type not in FIXED_ROPE_TYPES:
            raise RopeShiftError(f"{what} uses {rope_type!r} rotary scaling, whose frequencies depend on the sequence length, so a key computed "
                                 "at one position cannot be moved to another exactly; use a full prefill (no --documents)")
        if rope_type == "default":
            freqs.append(_default_inv_freq(p, head_dim, config))
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv, _ = ROPE_INIT_FUNCTIONS[rope_type](config, None, layer_type=layer_type if nested else None)
            freqs.append(inv.double().numpy())
    return RopeShift(tuple(freqs), sliding_window(config))


@functools.lru_cache(maxsize=8)
def _from_folder(folder: str, checksum: str, num_layers: int) -> RopeShift:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise RopeShiftError(f"engine {folder} has no config.json, which says how its keys are rotated; recompile it with this steerc "
                             "(`steerc compile ... --force`) to assemble cached documents")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise RopeShiftError(f"engine {folder}: its config.json cannot be read ({exc}); recompile it to assemble cached documents") from None
    return rope_shift_from_config(config, num_layers, f"engine {folder}")


def rope_shift_for(engine) -> RopeShift:
    """The :class:`RopeShift` of a loaded :class:`~steerc.runtime.engine.Engine` (read once per engine)."""
    return _from_folder(str(engine.folder), engine.engine_id, engine.geometry.num_layers)
