"""``llmsteer``: LLMSteer's query-free selection (Gu et al., 2024).

Once per context: the context is prefilled behind each of two instruction prefixes on the
analysis graph; per layer (heads summed) the top-k context tokens of each pass are kept and
intersected; ``log(alpha)`` goes on the other context keys of the steered heads. With
``steer_at`` decode the stored KV is the plain one and the bias applies at query time; with
prefill/both a third, steered prefill makes the stored KV. Per query: nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from steerc.steering.contexts import BuildJob
from steerc.steering.methods.base import SteeringMethod
from steerc.steering.options import MethodOptions, option
from steerc.steering.prepared import PreparedContext
from steerc.steering.selection import select_tokens

__all__ = ["LLMSteer", "LLMSteerOptions"]


def _top_k(value: float):
    """``--top-k``: 1 or more is a token count."""
    return int(value) if value >= 1 else value


@dataclass(frozen=True)
class LLMSteerOptions(MethodOptions):
    """``top_k``: the context tokens kept per layer and pass, a ratio of the context (< 1) or a
    token count (>= 1)."""

    top_k: float = option(0.2, "number", "tokens kept per layer and pass: a ratio < 1 or a count", gt=0,
                          must="a ratio in (0, 1) or a token count >= 1", cli_parse=_top_k)

    def validate(self) -> None:
        if self.top_k >= 1 and self.top_k != int(self.top_k):
            raise ValueError(f"top_k >= 1 is a token count and must be a whole number, got {self.top_k!r}")


class LLMSteer(SteeringMethod):
    name = "llmsteer"
    summary = "LLMSteer: tokens important behind both instruction prefixes, chosen once per context"
    instruction_heads = 2
    options = LLMSteerOptions
    eval_rank = 0  # its first analysis pass also stores the plain KV every other method reuses

    def build(self, job: BuildJob) -> PreparedContext:
        importance = job.dual_importance(job.config.window)  # [2, L, N]
        selected = select_tokens(importance[0], importance[1], job.config.options.top_k)  # [L, N]
        return job.finish(selected, self.selection_bias(job, selected), importance)
