"""Run methods over examples with one engine and one context store; score every answer.

``run_eval(engine, examples, variants)`` answers each example with each *variant* (a name and
a :class:`SteerConfig`: ``none``, ``llmsteer``, ``pasta``, ``autopasta``, or several llmsteer
settings in a sweep) through :class:`Steerer`, the same code path as ``steerc run``. All
variants share the store, so a context is analysed once: the plain KV and the two prefixes'
importance are stored on first use, and every other variant, and every later question on
the same context (SQuAD has about five per passage), starts from them. ``pasta`` emphasises
the example's evidence (an oracle highlight). Rows are appended to ``predictions.jsonl`` as
they are made, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerc.atomic import write_text_atomic
from steerc.errors import SteercError
from steerc.eval.data import Example
from steerc.eval.metrics import score
from steerc.runtime.engine import ContextTooLongError, Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.methods import METHODS, get_method
from steerc.stores import ContextStore, MemoryStore
from steerc.user_files import UserFileError, read_json, read_text

__all__ = ["Variant", "method_variants", "read_predictions", "run_eval", "PREDICTIONS", "RUN_FILE"]

log = logging.getLogger(__name__)

_REDO = "remove the folder, choose another --out or pass --fresh"

PREDICTIONS, RUN_FILE = "predictions.jsonl", "run.json"
Progress = Callable[[int, int, str], None]  # (examples done, total, latest example id)


@dataclass(frozen=True)
class Variant:
    name: str
    config: SteerConfig
    documents: bool = False  # answer over the example's documents (one line each, tokenized one by one: steerc.steering.documents)
    recompute: float | None = None  # with documents: assembled from the store with this recompute fraction; None: a full prefill
    recompute_rule: str | None = None  # with recompute: which tokens are re-prefilled (None: DocumentOptions' default)

    def for_example(self, example: Example) -> SteerConfig | None:
        """The config for one example (an oracle method takes the example's evidence); None when it cannot run."""
        if not get_method(self.config.method).oracle:
            return self.config
        return replace(self.config, highlights=example.evidence) if example.evidence else None


def method_variants(methods, base: SteerConfig = SteerConfig(), presets: Mapping[str, Any] | None = None) -> list[Variant]:
    """One variant per method, all with ``base``'s shared settings (alpha, layers, prefixes...);
    each method's options from ``presets`` (flat fields of any method: the command line's), else its defaults."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SteercError(f"unknown method(s) {bad}: choose from {', '.join(METHODS)}")
    placeholder = ((0, 1),)  # an oracle's real highlights are set per example
    return [Variant(m, base.with_method(m, presets, **({"highlights": placeholder} if get_method(m).oracle else {}))) for m in dict.fromkeys(methods)]


def _row(example: Example, variant: Variant, answer) -> dict:
    return {
        "id": example.id, "variant": variant.name, "method": variant.config.method, "prediction": answer.text, "answers": list(example.answers),
        **score(answer.text, example.answers),
        "cache": answer.cache, "context_tokens": answer.context_tokens, "query_tokens": answer.query_tokens, "selected_tokens": answer.selected_tokens,
        "selected_per_layer": round(answer.selected_per_layer, 1), "generated_tokens": len(answer.token_ids), "finish": answer.finish_reason,
        "prepare_s": round(answer.prepare_s, 4), "ttft_s": round(answer.ttft_s, 4), "decode_s": round(answer.decode_s, 4),
        "key_sentence": answer.key_sentence, "evidence": [e.to_dict() for e in answer.evidence],
        **_evidence_hit(example, answer), **_distribution(answer), **{k: v for k, v in example.meta.items() if k != "line"},
    }


def _answer_row(steerer: Steerer, example: Example, variant: Variant, max_new_tokens: int) -> dict:
    """Answer ``example`` with ``variant`` (over its context, or its documents) and score it."""
    if not variant.documents:
        return _row(example, variant, steerer.answer(example.context, example.question, max_new_tokens=max_new_tokens))
    from steerc.steering.documents import answer_documents

    if not example.documents:
        return _skipped(example, variant, "the example has no documents")
    rule = {} if variant.recompute_rule is None else {"rule": variant.recompute_rule}
    done = answer_documents(steerer, list(example.documents), example.question, recompute=variant.recompute, max_new_tokens=max_new_tokens, **rule)
    gold = example.meta.get("gold_index")
    evidence = (done.texts.spans[gold],) if gold is not None else ()
    row = _row(replace(example, context=done.texts.context, evidence=evidence), variant, done.answer)
    row["recompute"] = variant.recompute
    if variant.recompute is not None:
        row["recompute_rule"] = done.report.rule
    if done.report is not None:
        row["assembly"] = done.report.to_dict()
    return row


def _distribution(answer) -> dict:
    """A query-aware method's evidence distribution (every unit's share and strength, the alpha
    applied), for the analysis of hedging; ``top`` (the shares hold it) and ``spans`` (the dataset holds the text) are left out."""
    if answer.distribution is None:
        return {}
    return {"distribution": {k: v for k, v in answer.distribution.to_dict().items() if k not in ("top", "spans")}}


def _evidence_hit(example: Example, answer) -> dict:
    """Whether the units a query-aware method chose overlap the example's gold evidence."""
    if not answer.evidence or not example.evidence:
        return {}
    hit = any(e.start < b and a < e.end for e in answer.evidence for a, b in example.evidence)
    return {"evidence_hit": hit}


def _skipped(example: Example, variant: Variant, why: str) -> dict:
    return {"id": example.id, "variant": variant.name, "method": variant.config.method, "skipped": why}


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.jsonl``, up to a truncated last line (a run that stopped)."""
    rows = []
    for text in read_text(path, "earlier predictions", fix=_REDO).split("\n"):
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            break  # the line being written when the run stopped
    return rows


def _resume(out: Path, run: dict) -> list[dict]:
    """Rows of an earlier run in ``out`` with the same settings on the same or fewer examples
    (so a larger ``--limit`` extends it); a truncated last line is dropped."""
    run_file, pred_file = out / RUN_FILE, out / PREDICTIONS
    if not run_file.exists():
        return []
    try:
        earlier = read_json(run_file, "earlier run", "the run.json of an earlier steerc eval", fix=_REDO)
    except UserFileError as exc:
        raise SteercError(str(exc)) from None
    if isinstance(earlier.get("variants"), dict):  # configs written before methods had their own options list every method's fields
        earlier["variants"] = {name: _config_json(config) for name, config in earlier["variants"].items()}
    changed = sorted(k for k in set(run) | set(earlier) if k != "examples" and run.get(k) != earlier.get(k))
    if not changed and not set(earlier.get("examples", [])) <= set(run["examples"]):
        changed = ["examples (a larger --limit extends a run; other example sets need a new --out)"]
    if changed:
        raise SteercError(f"{out} holds a different evaluation (differs in {', '.join(changed)}); choose another --out or pass --fresh")
    return read_predictions(pred_file) if pred_file.exists() else []


def _variant_json(variant: Variant) -> dict:
    """What run.json records of a variant: its config, and how a documents variant builds its context."""
    out = variant.config.to_dict()
    if variant.documents:
        out = {**out, "documents": True, "recompute": variant.recompute}
        if variant.recompute is not None and variant.recompute_rule is not None:
            out["recompute_rule"] = variant.recompute_rule
    return out


def _config_json(config):
    """A stored variant's config in today's JSON form (as it was when it does not load)."""
    try:
        return json.loads(json.dumps(SteerConfig.from_dict(config).to_dict()))
    except (ValueError, TypeError):
        return config


def run_eval(engine: Engine, examples: list[Example], variants: list[Variant], *, store: ContextStore | None = None, max_new_tokens: int = 32,
             chat: bool = True, out: str | Path | None = None, run_info: dict | None = None, fresh: bool = False,
             progress: Progress | None = None) -> list[dict]:
    """Answer and score every example with every variant; returns the rows (one per example
    and variant; examples too long for the engine get one ``skipped`` row per variant)."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SteercError(f"variant names must be unique, got {names}")
    store = store if store is not None else MemoryStore(4 << 30)
    rows: list[dict] = []
    pred_file = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        run = {"engine": engine.engine_id, "examples": [e.id for e in examples], "variants": {v.name: _variant_json(v) for v in variants},
               "max_new_tokens": max_new_tokens, "chat": chat, **(run_info or {})}
        run = json.loads(json.dumps(run))
        if fresh:
            for name in (RUN_FILE, PREDICTIONS):
                (out / name).unlink(missing_ok=True)
        rows = _resume(out, run)
        write_text_atomic(out / RUN_FILE, json.dumps(run, indent=1))
        pred_file = (out / PREDICTIONS).open("w")  # rewritten with the kept rows: drops a truncated tail
        for r in rows:
            pred_file.write(json.dumps(r) + "\n")
        pred_file.flush()
    done = {(r["id"], r["variant"]) for r in rows}
    order = sorted(variants, key=lambda v: get_method(v.config.method).eval_rank)
    steerer = Steerer(engine, order[0].config, store, chat=chat)  # its config is set per answer
    start = time.perf_counter()
    try:
        for i, example in enumerate(examples):
            for variant in order:
                if (example.id, variant.name) in done:
                    continue
                config = variant.for_example(example)
                if config is None:
                    row = _skipped(example, variant, "no evidence to highlight")
                else:
                    steerer.config = config
                    try:
                        row = _answer_row(steerer, example, variant, max_new_tokens)
                    except ContextTooLongError as exc:
                        row = _skipped(example, variant, str(exc))
                rows.append(row)
                if pred_file:
                    pred_file.write(json.dumps(row) + "\n")
                    pred_file.flush()
            if progress:
                progress(i + 1, len(examples), example.id)
    finally:
        if pred_file:
            pred_file.close()
    log.info("evaluated %d examples x %d variants in %.1f s", len(examples), len(variants), time.perf_counter() - start)
    by_key = {(r["id"], r["variant"]): r for r in rows}
    return [by_key[(e.id, n)] for e in examples for n in names if (e.id, n) in by_key]
