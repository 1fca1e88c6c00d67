"""The settings of an assembled context, declared once (:func:`~steerc.steering.options.option`):
the ``steerc run`` / ``eval`` flags are made from these fields."""

from __future__ import annotations

from dataclasses import dataclass

from steerc.steering.options import check_options, option

__all__ = ["DocumentOptions", "DEFAULT_RECOMPUTE"]

# The fraction of each document's tokens re-prefilled over the assembled cache: CacheBlend's
# recompute ratio (~15%). Measured on NQ (docs/RESULTS.md, "Documents as reusable units": R = 0,
# 0.15, 0.3, 0.5, 1) it is the largest R with a time to first token 3x faster than the full
# prefill; no R < 1 kept the full prefill's quality there, so it was not tuned further on dev.
DEFAULT_RECOMPUTE = 0.15


@dataclass(frozen=True)
class DocumentOptions:
    """How cached documents are assembled into one context."""

    recompute: float = option(DEFAULT_RECOMPUTE, "number", "assembled documents: the fraction of each document's tokens (its first ones) "
                                                        "re-prefilled over the documents before it, restoring cross-document attention "
                                                        "(0: plain concatenation of the cached KVs; 1: the same as a full prefill)", ge=0, le=1)

    def __post_init__(self) -> None:
        check_options(self)
