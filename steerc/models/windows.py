"""A model config's sliding window: the one place that reads it."""

from __future__ import annotations

__all__ = ["sliding_window"]


def sliding_window(config) -> int | None:
    """The config's sliding window in positions, or None when no layer slides (a Gemma 3 style
    ``layer_types`` list without ``sliding_attention`` has none, whatever ``sliding_window`` says)."""
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "layer_types", None) is not None and "sliding_attention" not in config.layer_types:
        window = None
    return int(window) if window else None
