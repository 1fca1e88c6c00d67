"""``SteerBias``: the ``steer_bias`` input the runtime feeds to every engine call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SteerBias"]


@dataclass(frozen=True)
class SteerBias:
    """An additive log-space bias over key positions, per layer and query head.

    ``bias`` is ``[L, H, K]`` (the same for every row of a batch) or ``[B, L, H, K]``. It
    covers key positions ``0 .. K-1`` of the sequence; later positions (the query, generated
    tokens) get 0, so they are never down-weighted. ``log(alpha)`` on a key scales the
    attention probability it receives by alpha before renormalisation.
    """

    bias: np.ndarray

    def __post_init__(self) -> None:
        if self.bias.ndim not in (3, 4):
            raise ValueError(f"SteerBias.bias must be [L, H, K] or [B, L, H, K], got shape {self.bias.shape}")
        if not np.isfinite(self.bias).all():
            raise ValueError("SteerBias.bias must be finite (use a large negative number, not -inf, to mask)")

    @property
    def length(self) -> int:
        return self.bias.shape[-1]

    def check(self, num_layers: int, num_heads: int, batch: int) -> None:
        L, H = self.bias.shape[-3], self.bias.shape[-2]
        if (L, H) != (num_layers, num_heads):
            raise ValueError(f"SteerBias.bias covers {L} layers x {H} heads; the engine has {num_layers} x {num_heads}")
        if self.bias.ndim == 4 and self.bias.shape[0] != batch:
            raise ValueError(f"SteerBias.bias has {self.bias.shape[0]} rows; the batch has {batch}")

    def for_keys(self, batch: int, total: int) -> np.ndarray:
        """``[B, L, H, total]`` float32: the bias over the first ``total`` key positions."""
        bias = self.bias if self.bias.ndim == 4 else np.broadcast_to(self.bias, (batch, *self.bias.shape))
        out = np.zeros((batch, bias.shape[1], bias.shape[2], total), np.float32)
        k = min(total, self.length)
        out[..., :k] = bias[..., :k]
        return out

    @classmethod
    def highlight(cls, num_layers: int, num_heads: int, length: int, keep: np.ndarray, alpha: float, layers=None, heads=None) -> "SteerBias":
        """PASTA-style: ``log(alpha)`` on every key in ``[0, length)`` not in ``keep`` (a bool
        mask or index array), on the given layers and heads (default all)."""
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        selected = np.zeros(length, bool)
        selected[np.asarray(keep)] = True
        down = np.where(selected, 0.0, np.log(alpha)).astype(np.float32)  # [K]
        bias = np.zeros((num_layers, num_heads, length), np.float32)
        layer_idx = np.arange(num_layers) if layers is None else np.asarray(layers)
        head_idx = np.arange(num_heads) if heads is None else np.asarray(heads)
        bias[np.ix_(layer_idx, head_idx)] = down
        return cls(bias)
