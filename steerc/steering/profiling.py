"""Choose heads on dev data: selector heads (QRHead) and steered heads (PASTA's coarse-to-fine).

* **Selector heads** (arXiv 2506.09944): per head, the share of the question's calibrated
  attention (``max(0, question - calibration)`` over the context, the ``query`` method's score)
  that lands on the gold sentence or document, averaged over the examples. The top
  ``num_selector`` heads are kept.
* **Steered heads** (PASTA, arXiv 2311.02262, with oracle evidence): first every layer alone
  (all its heads) is steered towards the gold unit, then every head of the ``top_layers`` best
  layers alone; candidates are ranked by the gain in the dev metric over no steering. The metric
  is the mean log-probability of the gold answer's tokens right after the question, teacher
  forced (one short prefill per candidate instead of a generation: a smooth, cheap proxy of the
  answer's quality). Heads with a positive gain, at most ``num_steered``, are kept.

Each example's results are appended to a JSONL file as they are made, so an interrupted profile
resumes where it stopped; the result is a :class:`~steerc.steering.profiles.HeadProfile`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerc.runtime.generate import positions_for
from steerc.steering.config import SteerConfig
from steerc.steering.evidence import Units, evidence_bias
from steerc.steering.methods import get_method
from steerc.steering.methods.query import question_attention
from steerc.steering.profiles import HeadProfile
from steerc.user_files import read_text

__all__ = ["ProfileSettings", "profile_heads", "selector_shares", "answer_logprob"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class ProfileSettings:
    num_selector: int = 8
    num_steered: int = 16
    top_layers: int = 4
    alpha: float = 0.1
    steered: bool = True  # False: selector heads only (one analysis call per example, no steering search)

    def __post_init__(self) -> None:
        for name in ("num_selector", "num_steered", "top_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")


def _gold_units(units: Units, evidence) -> list[int]:
    return [u for u, (s, e) in enumerate(units.chars) if any(s < b and a < e for a, b in evidence)]


def selector_shares(attention: np.ndarray, calibration: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """``[L, H]``: each head's share of calibrated question attention on the ``gold [N]`` tokens."""
    d = np.clip(attention - calibration, 0, None)  # [L, H, N]
    total = d.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, d[..., gold].sum(-1) / total, 0.0)


def answer_logprob(engine, kv, query_ids: np.ndarray, answer_ids: np.ndarray, bias: np.ndarray | None) -> float:
    """Mean log-probability of ``answer_ids`` after ``kv + query_ids`` (teacher forced), with
    ``bias [L, H, K]`` over the cached keys (None: unsteered)."""
    ids = np.concatenate([query_ids, answer_ids]).astype(np.int64)  # [S]
    S, P = len(ids), kv.length
    mask = np.ones((1, P + S), np.int64)
    g = engine.geometry
    full = np.zeros((1, g.num_layers, g.num_heads, P + S), np.float32)
    if bias is not None:
        full[0, :, :, : bias.shape[-1]] = bias
    if not engine.last_logits:  # one call: the rows predicting each answer token
        logits, _ = engine.forward(ids[None], positions_for(mask, S), mask, kv, full)  # [1, S, V]
        logits = logits[0, len(query_ids) - 1 : S - 1].astype(np.float64)
    else:  # a --logits last engine returns one row per call: the question, then each answer token but the last, teacher forced
        Q, rows, cache = len(query_ids), [], kv
        for start, end in [(0, Q)] + [(Q + j, Q + j + 1) for j in range(len(answer_ids) - 1)]:
            step_mask = mask[:, : P + end]
            out, cache = engine.forward(ids[None, start:end], positions_for(step_mask, end - start), step_mask, cache, full[..., : P + end])
            rows.append(out[0, -1])
        logits = np.stack(rows).astype(np.float64)  # [A, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(logp[np.arange(len(answer_ids)), answer_ids].mean())


def _read(path: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    if path.is_file():
        for line in read_text(path, "profile work file").split("\n"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by an interruption
            if not isinstance(row, dict) or not isinstance(row.get("stage"), str) or not isinstance(row.get("id"), str):
                raise ValueError(f"{path} holds a line that steerc profile did not write; remove it (the profile restarts)")
            rows[(row["stage"], row["id"])] = row
    return rows


def profile_heads(steerer, examples, settings: ProfileSettings = ProfileSettings(), *, work: str | Path | None = None,
                  progress: Progress | None = None) -> HeadProfile:
    """Profile selector and steered heads on ``examples`` (with evidence and answers) through
    ``steerer`` (its engine, layout and store). ``work``: the JSONL file that makes the run
    resumable (rows of a different engine or settings are refused)."""
    engine = steerer.engine
    g = engine.geometry
    examples = [e for e in examples if e.evidence and e.answers]
    if not examples:
        raise ValueError("no example has both gold evidence and an answer to profile with")
    work = Path(work) if work else None
    header = {"stage": "header", "id": "", "engine": engine.engine_id, "settings": settings.__dict__, "examples": [e.id for e in examples]}
    rows = _read(work) if work else {}
    if rows and {k: rows.get(("header", ""), {}).get(k) for k in ("engine", "settings")} != {k: header[k] for k in ("engine", "settings")}:
        raise ValueError(f"{work} holds a profile of another engine or other settings; remove it or choose another output")
    out = work.open("a") if work else None
    if out and ("header", "") not in rows:
        out.write(json.dumps(header) + "\n")

    def keep(row: dict) -> None:
        rows[(row["stage"], row["id"])] = row
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    config = SteerConfig(method="query", unit="auto")
    method = get_method("query")
    try:
        layer_candidates = [[(layer, h) for h in range(g.num_heads)] for layer in range(g.num_layers)] if settings.steered else []
        _stage(steerer, method, config, examples, "layers" if settings.steered else "selector heads", layer_candidates, settings, rows, keep, progress)
        if settings.steered:
            layer_gain = np.mean([np.array(rows[("layers", e.id)]["gain"]) for e in examples], 0)  # [L]
            top = [int(i) for i in np.argsort(-layer_gain, kind="stable")[: settings.top_layers]]
            head_candidates = [[(layer, h)] for layer in top for h in range(g.num_heads)]
            _stage(steerer, method, config, examples, f"heads of layers {','.join(map(str, top))}", head_candidates, settings, rows, keep, progress,
                   stage="heads")
    finally:
        if out:
            out.close()
    shares = np.mean([np.array(rows[("layers", e.id)]["selector"]) for e in examples], 0)  # [L, H]
    order = np.argsort(-shares, axis=None, kind="stable")[: settings.num_selector]
    selector = tuple((int(i // g.num_heads), int(i % g.num_heads)) for i in order)
    made = {"examples": len(examples), "settings": settings.__dict__, "selector_share": {f"{a},{b}": round(float(shares[a, b]), 4) for a, b in selector}}
    steered: tuple = ()
    if settings.steered:
        head_gain = np.mean([np.array(rows[("heads", e.id)]["gain"]) for e in examples], 0)  # [len(top) * H]
        ranked = [int(i) for i in np.argsort(-head_gain, kind="stable") if head_gain[i] > 0][: settings.num_steered]
        steered = tuple(head_candidates[i][0] for i in ranked)
        if not steered:  # no single head helps: keep the best layer's heads
            steered = tuple(layer_candidates[top[0]])
        made.update(metric="gold-answer log-probability gain (teacher forced, oracle evidence)", layer_gain=[round(float(x), 4) for x in layer_gain],
                    top_layers=top, steered_gain={f"{a},{b}": round(float(head_gain[i]), 4) for i, (a, b) in ((i, head_candidates[i][0]) for i in ranked)})
    source = engine.manifest.get("source", {})
    spec = str(source.get("spec") or "")
    return HeadProfile(selector, tuple(sorted(steered)), {"spec": Path(spec).name if "/" in spec else spec, "sha256": source.get("sha256")},
                       {"num_layers": g.num_layers, "num_heads": g.num_heads}, made)


def _stage(steerer, method, config, examples, label, candidates, settings, rows, keep, progress, stage: str = "layers") -> None:
    engine, layout = steerer.engine, steerer.layout
    g = engine.geometry
    todo = [e for e in examples if (stage, e.id) not in rows]
    done = len(examples) - len(todo)
    for e in todo:
        prepared, _ = method.prepare(steerer.method_context, e.context, config)
        Nh, N = len(prepared.head_ids), len(prepared.context_ids)
        units = Units(prepared.meta["unit_kind"], prepared.extras["unit_chars"], prepared.extras["unit_tokens"])
        gold = units.token_mask(_gold_units(units, e.evidence), N)
        query_ids = layout.query_ids(config.prefixes[0], e.question)
        answer_ids = np.asarray(engine.tokenizer(e.answers[0], add_special_tokens=False)["input_ids"], np.int64)
        row = {"stage": stage, "id": e.id}
        if stage == "layers":
            attention = question_attention(engine, prepared.kv, query_ids)[..., Nh : Nh + N]
            row["selector"] = selector_shares(attention, prepared.extras["calibration"], gold).round(5).tolist()
        base = answer_logprob(engine, prepared.kv, query_ids, answer_ids, None) if candidates else 0.0
        gains = []
        for pairs in candidates:
            bias = evidence_bias(gold, Nh, Nh + N, g.num_layers, g.num_heads, float(np.log(settings.alpha)), pairs)
            gains.append(round(answer_logprob(engine, prepared.kv, query_ids, answer_ids, bias) - base, 5))
        row["gain"] = gains
        keep(row)
        done += 1
        if progress:
            progress(label, done, len(examples))
    if progress and not todo:
        progress(label, len(examples), len(examples))

