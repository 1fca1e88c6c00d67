"""Head profiles: which heads select evidence and which heads get the bias, chosen on dev data.

A profile is a JSON file ``steerc profile`` writes (``run``, ``eval`` and ``serve`` take it with
``--profile``)::

    {"steerc_profile": 1,
     "model": {"spec": "smollm2-135m-instruct", "sha256": "…"},   # the weights it was made on
     "geometry": {"num_layers": 30, "num_heads": 9},
     "selector_heads": [[18, 7], ...],     # query: whose attention picks the evidence
     "steered_heads": [[8, 2], ...],       # every method: which heads get the bias
     "made_with": {...}}                   # datasets, split, examples, scores

The older form ``{"heads": [[layer, head], ...]}`` is read as steered heads. A profile made on
other weights or another geometry is refused. Profiles chosen on dev for shipped models live in
``steerc/profiles/`` and give the ``query`` method its default selector heads.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["HeadProfile", "load_profile", "builtin_profile", "shipped_profile", "default_selector", "selector_heads", "fallback_selector", "PROFILE_VERSION"]

log = logging.getLogger(__name__)

PROFILE_VERSION = 1
Pairs = tuple[tuple[int, int], ...]


def _pairs(name: str, value, where: str) -> Pairs:
    if not isinstance(value, list) or any(
        not isinstance(p, list) or len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p) for p in value
    ):
        raise ValueError(f"profile {where}: {name} must be a list of [layer, head] pairs of non-negative integers")
    return tuple(sorted({(int(a), int(b)) for a, b in value}))


@dataclass(frozen=True)
class HeadProfile:
    selector_heads: Pairs = ()
    steered_heads: Pairs = ()
    model: dict = field(default_factory=dict)  # {"spec", "sha256"} of the weights it was made on
    geometry: dict = field(default_factory=dict)  # {"num_layers", "num_heads"}
    made_with: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.selector_heads and not self.steered_heads:
            raise ValueError("a profile needs selector_heads, steered_heads or both")

    def to_dict(self) -> dict:
        return {"steerc_profile": PROFILE_VERSION, "model": self.model, "geometry": self.geometry,
                "selector_heads": [list(p) for p in self.selector_heads], "steered_heads": [list(p) for p in self.steered_heads], "made_with": self.made_with}

    @classmethod
    def from_dict(cls, data, where: str = "") -> "HeadProfile":
        if not isinstance(data, dict):
            raise ValueError(f'profile {where} must be a JSON object {{"selector_heads": [[layer, head], ...], "steered_heads": [...]}}')
        if "heads" in data and "steered_heads" not in data:  # the older {"heads": [...]} form
            return cls(steered_heads=_pairs("heads", data["heads"], where))
        version = data.get("steerc_profile")
        if version != PROFILE_VERSION:
            raise ValueError(f"profile {where} has format version {version!r}; this steerc reads version {PROFILE_VERSION} (remake it with steerc profile)")
        return cls(_pairs("selector_heads", data.get("selector_heads", []), where), _pairs("steered_heads", data.get("steered_heads", []), where),
                   dict(data.get("model") or {}), dict(data.get("geometry") or {}), dict(data.get("made_with") or {}))

    def check(self, engine) -> None:
        """Refuse a profile made for other weights or another geometry, or naming a head the engine lacks."""
        g = engine.geometry
        source = engine.manifest.get("source", {})
        if self.model.get("sha256") and source.get("sha256") and self.model["sha256"] != source["sha256"]:
            raise ValueError(f"this profile was made for {self.model.get('spec', 'other weights')} (weights sha256 {self.model['sha256'][:12]}…), "
                             f"not this engine's {source.get('spec', '?')} ({source['sha256'][:12]}…); run steerc profile on this engine")
        if self.geometry and (self.geometry.get("num_layers"), self.geometry.get("num_heads")) != (g.num_layers, g.num_heads):
            raise ValueError(f"this profile is for {self.geometry.get('num_layers')} layers x {self.geometry.get('num_heads')} heads, this engine has "
                             f"{g.num_layers} x {g.num_heads}; run steerc profile on this engine")
        bad = [p for p in (*self.selector_heads, *self.steered_heads) if p[0] >= g.num_layers or p[1] >= g.num_heads]
        if bad:
            raise ValueError(f"profile head {list(bad[0])} is outside the engine ({g.num_layers} layers x {g.num_heads} heads)")

    def save(self, path: str | Path) -> None:
        from steerc.atomic import write_text_atomic

        text = json.dumps(self.to_dict(), indent=1)
        text = re.sub(r"\[\s*(\d+),\s*(\d+)\s*\]", r"[\1, \2]", text)  # one [layer, head] pair per line
        write_text_atomic(Path(path), text + "\n")


def load_profile(path: str | Path) -> HeadProfile:
    """Read a profile file (:func:`steerc.user_files.read_json`); ``ValueError`` with a one-line reason otherwise."""
    from steerc.user_files import read_json

    data = read_json(path, "profile", 'a JSON object {"steerc_profile": 1, "selector_heads": [[layer, head], ...], "steered_heads": [...]} '
                                      "from steerc profile")
    return HeadProfile.from_dict(data, str(path))


def builtin_profile(engine) -> HeadProfile | None:
    """The profile shipped for the engine's weights (matched by the weights' sha256), if any."""
    return shipped_profile(engine.manifest.get("source", {}).get("sha256"))


def shipped_profile(sha: str | None) -> HeadProfile | None:
    """The profile shipped in ``steerc/profiles/`` for the weights with this sha256, if any."""
    if not sha:
        return None
    for item in resources.files("steerc.profiles").iterdir():
        if item.name.endswith(".json"):
            profile = HeadProfile.from_dict(json.loads(item.read_text()), item.name)
            if profile.model.get("sha256") == sha:
                return profile
    return None


def fallback_selector(num_layers: int, num_heads: int) -> Pairs:
    """Every head of the middle half of the layers (where question-to-evidence attention is
    strongest without a profile; see docs/RESULTS.md)."""
    start, end = num_layers // 4, max(num_layers // 4 + 1, (3 * num_layers) // 4)
    return tuple((layer, head) for layer in range(start, end) for head in range(num_heads))


def default_selector(sha: str | None, num_layers: int, num_heads: int) -> tuple[Pairs, str]:
    """The default selector heads of weights with this sha256 and geometry, and where they come
    from ("profile <file spec>" or "fallback"): what :func:`selector_heads` gives their engine.
    A compile sizes the selector graph with it (before the engine exists)."""
    profile = shipped_profile(sha)
    if profile is not None and profile.selector_heads:
        return profile.selector_heads, f"shipped profile of {profile.model.get('spec', sha)}"
    return fallback_selector(num_layers, num_heads), "fallback (the middle half of the layers)"


_BUILTIN: dict[str, HeadProfile | None] = {}


def selector_heads(engine) -> Pairs:
    """The query method's default selector heads for ``engine``: its shipped profile's, else
    :func:`fallback_selector`."""
    if engine.engine_id not in _BUILTIN:
        _BUILTIN[engine.engine_id] = builtin_profile(engine)
        if _BUILTIN[engine.engine_id] is None:
            log.info("no shipped head profile for this engine's weights; query steering selects with the middle layers (run steerc profile for better picks)")
    profile = _BUILTIN[engine.engine_id]
    if profile is not None and profile.selector_heads:
        return profile.selector_heads
    g = engine.geometry
    return fallback_selector(g.num_layers, g.num_heads)
