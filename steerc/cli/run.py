"""``steerc run``: answer a question over a context file with LLMSteer or a baseline."""

from __future__ import annotations

import argparse

from steerc.cli.common import DEVICES, add_backend_option, add_encoding_option, add_kv_store_dtype_option
from steerc.cli.steer_options import add_steer_options, check_profile, steer_config
from steerc.errors import SteercError
from steerc.user_files import read_text

__all__ = ["add_run_parser", "cmd_run"]


def cmd_run(args) -> int:
    from rich.console import Console
    from rich.markup import escape as _escape

    from steerc.runtime import Engine, SamplingParams
    from steerc.steering.answer import Steerer
    from steerc.steering.methods import get_method
    from steerc.stores import open_store

    if args.documents:
        return _run_documents(args)
    if args.recompute is not None or args.recompute_rule is not None or args.compare_full:
        raise SteercError("--recompute, --recompute-rule and --compare-full apply to --documents")
    context = read_text(args.context, "--context", encoding=args.encoding, flag="--encoding")
    if not context.strip():
        raise SteercError(f"--context {args.context} is empty; give a file with the passages to answer from")
    config = steer_config(args)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    check_profile(args, engine)
    steerer = Steerer(engine, config, open_store(args.store, kv_scheme=args.kv_store_dtype), chat=not args.no_chat)
    bars: dict = {}
    progress = _progress_bar(console, bars)
    try:
        with progress:
            answer = steerer.answer(context, args.query, max_new_tokens=args.max_new_tokens, sampling=SamplingParams(),
                                    progress=lambda stage, done, total: _advance(progress, bars, stage, done, total))
    except ValueError as exc:
        raise SteercError(str(exc)) from None
    print(answer.text)
    for e in answer.evidence:
        console.print(f"[dim]evidence: {_escape(e.describe())}[/]")  # the preview is the context's text, not markup
    if answer.distribution is not None:
        console.print(f"[dim]distribution: {_escape(answer.distribution.describe())}[/]")
    if get_method(config.method).selects_evidence and (why := _unsteered_reason(answer)) is not None:
        console.print(f"[dim]evidence: {why}; answered unsteered[/]")
    prepared = steerer.last_context[0] if steerer.last_context else None
    if prepared is not None and prepared.positions is not None:
        console.print(f"[dim]compacted context (--keep {config.keep:g}): {prepared.kv.length} of {prepared.full_length} keys stored "
                      f"({prepared.kv.length / prepared.full_length:.0%}, instruction included)[/]")
    console.print(
        f"[dim]{answer.method}, steer_at {config.steer_at}: {answer.selected_per_layer:.0f} of {answer.context_tokens} context tokens selected per layer "
        f"({answer.selected_tokens} on some layer)"
        f"{'' if answer.key_sentence is None else f' (key sentence: {answer.key_sentence[:80]!r})'}; "
        f"context cache {answer.cache}{'' if answer.cache == 'miss' or answer.cache == 'per-query' else ' hit'}; "
        f"context preparation{' and evidence selection' if get_method(config.method).selects_evidence else ''} {answer.prepare_s:.2f} s, time to first token {answer.ttft_s:.2f} s, "
        f"decode {answer.decode_tokens_per_s:.1f} tokens/s ({len(answer.token_ids)} tokens, {answer.finish_reason})[/]"
    )
    if args.html:
        _write_html(args.html, context, steerer, answer)
        console.print(f"[dim]wrote {args.html}[/]")
    return 0


def _run_documents(args) -> int:
    """``--documents``: the context assembled from each document's stored KV (computed and stored when missing)."""
    import time

    from rich.console import Console
    from rich.markup import escape as _escape

    from steerc.runtime import Engine, SamplingParams
    from steerc.runtime.generate import prefill
    from steerc.steering.answer import Steerer
    from steerc.steering.documents import DocumentOptions, answer_documents
    from steerc.stores import open_store

    import numpy as np

    if args.html:
        raise SteercError("--html shows one context file; it does not apply to --documents")
    documents = [read_text(path, "--documents", encoding=args.encoding, flag="--encoding") for path in args.documents]
    for path, text in zip(args.documents, documents):
        if not text.strip():
            raise SteercError(f"--documents {path} is empty; give files with the documents to answer from")
    try:
        given = {k: v for k, v in (("recompute", args.recompute), ("recompute_rule", args.recompute_rule)) if v is not None}
        options = DocumentOptions(**given)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    config = steer_config(args)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    check_profile(args, engine)
    steerer = Steerer(engine, config, open_store(args.store, kv_scheme=args.kv_store_dtype), chat=not args.no_chat)
    try:
        done = answer_documents(steerer, documents, args.query, recompute=options.recompute, rule=options.recompute_rule, max_new_tokens=args.max_new_tokens,
                                sampling=SamplingParams())
    except ValueError as exc:
        raise SteercError(str(exc)) from None
    answer, report = done.answer, done.report
    print(answer.text)
    for e in answer.evidence:
        console.print(f"[dim]evidence: {_escape(e.describe())}[/]")
    if answer.distribution is not None:
        console.print(f"[dim]distribution: {_escape(answer.distribution.describe())}[/]")
    tiers = ", ".join(f"{t}" for t in report.tiers)
    console.print(f"[dim]documents: {report.documents} ({report.context_tokens} tokens; stored KV from: {tiers}): {report.reused_tokens} tokens reused, "
                  f"{report.recomputed_tokens} recomputed (--recompute {options.recompute:g}, --recompute-rule {options.recompute_rule}), {report.computed_tokens} computed for "
                  f"{report.computed_documents} document(s) missing from the store; assembly {report.seconds:.2f} s[/]")
    if args.compare_full:
        ids = done.texts.context_ids
        head = steerer.layout.head_ids(config.prefixes[0])
        full = np.concatenate([head, ids])[None]
        t0 = time.perf_counter()
        prefill(engine, full, np.ones_like(full), engine.new_cache(1), chunk=steerer.prefill_chunk)
        full_s = time.perf_counter() - t0
        console.print(f"[dim]a full prefill of the same {full.shape[1]} tokens took {full_s:.2f} s: time saved {full_s - report.seconds:.2f} s "
                      f"({full_s / max(report.seconds, 1e-9):.1f}x faster context)[/]")
    console.print(f"[dim]{answer.method}: time to first token {answer.ttft_s:.2f} s (assembly included), decode {answer.decode_tokens_per_s:.1f} tokens/s "
                  f"({len(answer.token_ids)} tokens, {answer.finish_reason})[/]")
    return 0


def _unsteered_reason(answer) -> str | None:
    """Why an evidence-selecting method answered unsteered (None: it steered). ``answer.evidence``
    lists what was chosen even when nothing was applied, so the distribution decides."""
    d = answer.distribution
    if d is not None and d.backed_off:
        return "the self-check (--self-check) found the plain question prefill sure of another first token and backed off"
    if not answer.evidence:
        if d is None and answer.method == "query":
            return "the context has a single unit, nothing to choose between"
        return "none chosen with enough confidence (--min-share)"
    if d is not None and d.alpha_applied >= 1:
        no_confidence = d.hedge != "off" and max(d.strength, default=0.0) <= 0  # the hedge, not --alpha 1, left nothing to apply
        return (f"chosen, but nothing steered (alpha applied 1: hedge {d.hedge} found no confidence in the pick)" if no_confidence
                else "chosen, but nothing steered (alpha applied 1)")
    return None


def _progress_bar(console, bars):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tokens"), TimeRemainingColumn(),
                    console=console, transient=True)


def _advance(progress, bars, stage: str, done: int, total: int) -> None:
    if stage not in bars:
        bars[stage] = progress.add_task(stage, total=total)
    progress.update(bars[stage], completed=done)


def _write_html(path: str, context: str, steerer, answer) -> None:
    from steerc.steering.html import render_html, write_html

    prepared, offsets = steerer.last_context
    importance = prepared.importance.mean(0).sum(0) if prepared.importance.shape[0] else None  # [N]: passes averaged, layers summed
    options = {k: v for k, v in prepared.config.options.to_dict().items() if isinstance(v, (int, float, str))}  # e.g. llmsteer's top_k
    stats = {"method": answer.method, "steer_at": prepared.config.steer_at, "alpha": prepared.config.alpha, **options,
             "selected tokens": f"{answer.selected_tokens} of {answer.context_tokens}", "answer": answer.text}
    for e in answer.evidence:
        stats[f"evidence ({e.kind} {e.unit + 1})"] = e.describe()
    distribution, unit_chars = answer.distribution, prepared.extras.get("unit_chars")  # query: every unit's share, and where each unit is
    if distribution is None or unit_chars is None or len(unit_chars) != len(distribution.shares):
        distribution = unit_chars = None
    write_html(path, render_html(context, offsets, importance, steerer.last_plan.selected.any(0), title="steerc run", stats=stats,
                                 distribution=distribution, unit_chars=unit_chars))


def add_run_parser(sub) -> None:
    from steerc.cli.steer_options import add_method_option

    p = sub.add_parser("run", help="answer a question over a context with LLMSteer (or a baseline), reusing stored contexts",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("engine")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="text file with the context (passages): UTF-8, or see --encoding")
    source.add_argument("--documents", nargs="+", metavar="FILE", help="text files, one document each: the context is assembled from each "
                                                                         "document's stored KV (computed once, alone; stored when missing)")
    add_encoding_option(p, "--context / --documents")
    from steerc.steering.documents.options import DocumentOptions
    from steerc.steering.options import options_fields

    fields = {f.name: (f, spec) for f, spec in options_fields(DocumentOptions)}
    field, spec = fields["recompute"]
    p.add_argument("--recompute", type=float, default=None, help=f"--documents: {spec.help} (default {field.default})".replace("%", "%%"))
    field, spec = fields["recompute_rule"]
    p.add_argument("--recompute-rule", default=None, choices=spec.choices, help=f"--documents: {spec.help} (default {field.default})".replace("%", "%%"))
    p.add_argument("--compare-full", action="store_true", help="--documents: also time a full prefill of the same tokens, to report the time saved")
    p.add_argument("--query", required=True, help="the question")
    add_method_option(p, "default: SteerConfig's")
    add_steer_options(p)  # --highlight included (pasta's)
    p.add_argument("--store", default=None, help="context store folder, or 'memory' (default ~/.cache/steerc/contexts or $STEERC_CONTEXT_STORE)")
    add_kv_store_dtype_option(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--html", default=None, help="write a page showing the selected tokens and their importance (query: each unit shaded by its "
                                                 "share of the evidence)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    add_backend_option(p, "what runs the step graph (the engine must have been compiled with that --backend)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_run)
