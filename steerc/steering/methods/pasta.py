"""``pasta``: PASTA (Zhang et al., 2024) on user-marked character ranges of the context.

Once per context (and highlight): the highlighted tokens are kept on every layer and the other
context keys of the steered heads get ``log(alpha)``. In ``steerc eval`` the highlight is the
example's gold evidence, which makes it an oracle: an upper bound, not a deployable method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerc.steering.config import SteerConfig
from steerc.steering.contexts import BuildJob
from steerc.steering.methods.base import SteeringMethod
from steerc.steering.options import MethodOptions, option
from steerc.steering.prepared import PreparedContext
from steerc.steering.spans import parse_spans, spans_to_token_mask

__all__ = ["Pasta", "PastaOptions"]


@dataclass(frozen=True)
class PastaOptions(MethodOptions):
    """``highlights``: the character ranges of the context to emphasise."""

    highlights: tuple[tuple[int, int], ...] = option((), "spans", "character ranges of the context to emphasise, START:END[,START:END]",
                                                     flag="--highlight", cli_parse=lambda text: tuple(parse_spans(text)))

    def check(self, config, method: str) -> None:
        if not self.highlights:
            raise ValueError(f"method {method!r} needs highlights: character ranges of the context to emphasise (e.g. [[120, 180]]; "
                             "on the command line --highlight 120:180)")


class Pasta(SteeringMethod):
    name = "pasta"
    summary = "PASTA on given highlights (character ranges); in eval the gold evidence, an oracle"
    oracle = True
    options = PastaOptions
    eval_rank = 2

    def highlight(self, config: SteerConfig, offsets, length: int) -> np.ndarray:
        return spans_to_token_mask(offsets, list(config.options.highlights), length)

    def check_inputs(self, config: SteerConfig, context_ids: np.ndarray, highlight: np.ndarray | None) -> None:
        if highlight is None or highlight.shape != context_ids.shape or not highlight.any():
            raise ValueError(f"{self.name} needs a highlight mask with a True entry for each of the {len(context_ids)} context tokens it emphasises")

    def build(self, job: BuildJob) -> PreparedContext:
        g = job.engine.geometry
        selected = np.broadcast_to(job.highlight, (g.num_layers, len(job.context_ids))).copy()  # [L, N]
        return job.finish(selected, self.selection_bias(job, selected))
