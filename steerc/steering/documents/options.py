"""The settings of an assembled context, declared once (:func:`~steerc.steering.options.option`):
the ``steerc run`` / ``eval`` flags and the server's ``steer`` fields are made from these fields."""

from __future__ import annotations

from dataclasses import dataclass

from steerc.steering.options import check_options, option

__all__ = ["DocumentOptions", "DEFAULT_RECOMPUTE", "DEFAULT_RULE", "RECOMPUTE_RULES"]

# The fraction of the documents' tokens re-prefilled over the assembled cache, with the rule below:
# chosen on the NQ dev split (docs/RESULTS.md, "Documents as reusable units": rules first, last,
# suffix, question at R = 0.15, 0.2, 0.3) as the best quality among the settings whose time to
# first token stays 3x faster than the full prefill's (CacheBlend's ratio, ~15%).
DEFAULT_RECOMPUTE = 0.15

# Which tokens are re-prefilled (steerc.steering.documents.assembly.recompute_ranges): the first or
# last ones of each document, the context's last ones (suffix), or the documents the question's
# calibrated attention over the plain concatenation ranks highest (question). On the NQ dev split
# ``first`` lost least at every budget tried; ``question`` lost as much as plain concatenation.
RECOMPUTE_RULES = ("first", "last", "suffix", "question")
DEFAULT_RULE = "first"


@dataclass(frozen=True)
class DocumentOptions:
    """How cached documents are assembled into one context."""

    recompute: float = option(DEFAULT_RECOMPUTE, "number", "assembled documents: the fraction of the documents' tokens re-prefilled over the "
                                                        "documents before them, restoring cross-document attention (0: plain concatenation "
                                                        "of the cached KVs; 1: the same as a full prefill)", ge=0, le=1)
    recompute_rule: str = option(DEFAULT_RULE, "choice", "assembled documents: which tokens are re-prefilled: first (the first of each "
                                                         "document), last (the last of each document), suffix (the context's last), question "
                                                         "(whole documents, those the question's attention over the plain concatenation ranks "
                                                         "highest)", choices=RECOMPUTE_RULES)

    def __post_init__(self) -> None:
        check_options(self)
