"""What a pass did, in a form that goes into the engine manifest."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["SiteReport", "PassReport"]


@dataclass(frozen=True)
class SiteReport:
    node: str  # FX node name of the rewritten attention op
    layer: int
    kind: str  # "sdpa" | "eager_softmax"
    target: str  # the op overload, e.g. "aten.scaled_dot_product_attention.default"
    mask: str  # mask found at the site: "bool" | "float" | "none" | "is_causal" | "logits"
    heads: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PassReport:
    name: str
    sites: tuple[SiteReport, ...]
    inputs_added: tuple[str, ...] = ()
    outputs_added: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def sites_per_layer(self) -> dict[int, int]:
        return dict(sorted(Counter(s.layer for s in self.sites).items()))

    @property
    def kinds(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.sites))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_sites": len(self.sites),
            "sites_per_layer": {str(k): v for k, v in self.sites_per_layer.items()},
            "kinds": self.kinds,
            "inputs_added": list(self.inputs_added),
            "outputs_added": list(self.outputs_added),
            "notes": list(self.notes),
            "sites": [s.to_dict() for s in self.sites],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PassReport":
        return cls(
            name=data["name"],
            sites=tuple(SiteReport(**s) for s in data["sites"]),
            inputs_added=tuple(data.get("inputs_added", ())),
            outputs_added=tuple(data.get("outputs_added", ())),
            notes=tuple(data.get("notes", ())),
        )
