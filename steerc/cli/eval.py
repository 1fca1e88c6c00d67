"""``steerc eval``: score the steering methods (none, query, LLMSteer, PASTA, AutoPASTA) on a dataset, with intervals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerc.atomic import write_text_atomic
from steerc.cli.common import DEVICES, add_backend_option, add_encoding_option, add_kv_store_dtype_option
from steerc.errors import SteercError

__all__ = ["add_eval_parser", "cmd_eval"]

FORMAT_HELP = """JSONL format, one object per line:
  {"id": "q1", "context": "...", "question": "...", "answers": ["...", ...]}
  or "documents": [{"title": "...", "text": "..."}, ...] instead of "context"
  optional: "gold_document": <index> (with documents), "highlights": [[start, end], ...] (with context)
Shipped datasets (../shared/data or $STEERC_DATA): squad, nq-multidoc, kv-retrieval.
Splits: contexts shuffled with --seed; 30% of them are dev, the rest test (tune on dev only)."""


def add_eval_parser(sub) -> None:
    from steerc.cli.steer_options import add_steer_options, method_help
    from steerc.eval.data import GOLD_POSITIONS, SPLITS

    p = sub.add_parser("eval", help="evaluate steering methods on a dataset (scores with bootstrap intervals)", epilog=FORMAT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("--dataset", required=True, help="squad, nq-multidoc, kv-retrieval, or a .jsonl file (UTF-8, or see --encoding)")
    add_encoding_option(p, "a --dataset file")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of the split (seeded order; default all)")
    p.add_argument("--methods", default="none,query,llmsteer,pasta,autopasta", help=f"comma-separated, of: {method_help()}")
    p.add_argument("--split", default=None, choices=SPLITS, help="default: dev for shipped datasets, all for a file")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, the sample and the NQ/KV distractors")
    p.add_argument("--out", default=None, help="folder for run.json, predictions.jsonl, summary.json/.md (default runs/eval/DATASET-SPLIT)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --out instead of resuming it")
    p.add_argument("--num-docs", type=int, default=10, help="nq-multidoc: documents per question")
    p.add_argument("--gold-position", default=None, choices=GOLD_POSITIONS, help="nq-multidoc (default middle) / kv-retrieval (default random)")
    p.add_argument("--num-keys", type=int, default=25, help="kv-retrieval: key-value records per question (of 75)")
    p.add_argument("--doc-pool", type=int, default=None, help="nq-multidoc: draw the distractors from a fixed pool of N passages, so documents "
                                                              "repeat across questions (default: from every other question's passage)")
    p.add_argument("--documents", action="store_true", help="answer over each example's documents assembled from the store (each document's KV "
                                                            "computed once, registered before answering), every method also over a full prefill "
                                                            "of the same documents (the variant METHOD) to pair against (METHOD+docs@R)")
    p.add_argument("--recompute", default=None, help=f"with --documents, comma-separated values: {_recompute_help()}")
    p.add_argument("--recompute-rule", default=None, help=f"with --documents, comma-separated values (each with each --recompute; "
                                                         f"variants METHOD+docs@R/RULE): {_recompute_help('recompute_rule')}")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 64 for kv-retrieval (the model repeats the 36-character key first), else 32")
    add_steer_options(p, omit=("highlights",))  # an oracle's highlights are each example's evidence
    p.add_argument("--store", default="memory", help="context store: 'memory' (default) or a folder to keep prepared contexts across runs")
    add_kv_store_dtype_option(p, default="engine")
    p.add_argument("--no-chat", action="store_true", help="completion-style prompts (base models)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    add_backend_option(p, "what runs the step graph (the engine must have been compiled with that --backend)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_eval)


def _recompute_help(name: str = "recompute") -> str:
    from steerc.steering.documents.options import DocumentOptions
    from steerc.steering.options import options_fields

    field, spec = next((f, s) for f, s in options_fields(DocumentOptions) if f.name == name)
    return f"{spec.help} (default {field.default})".replace("%", "%%")


def _rule_values(args) -> list[str | None]:
    """The --recompute-rule values ([None]: DocumentOptions' default, unnamed in the variants)."""
    from steerc.steering.documents import DocumentOptions

    if args.recompute_rule is None:
        return [None]
    if not args.documents:
        raise SteercError("--recompute-rule applies to --documents")
    try:
        return list(dict.fromkeys(DocumentOptions(recompute_rule=v.strip()).recompute_rule for v in args.recompute_rule.split(",") if v.strip()))
    except ValueError as exc:
        raise SteercError(f"invalid --recompute-rule: {exc}") from None


def _recompute_values(args) -> list[float]:
    from steerc.steering.documents import DocumentOptions

    if args.recompute is None:
        return [DocumentOptions().recompute]
    if not args.documents:
        raise SteercError("--recompute applies to --documents")
    try:
        return list(dict.fromkeys(DocumentOptions(recompute=float(v)).recompute for v in args.recompute.split(",") if v.strip()))
    except ValueError as exc:
        raise SteercError(f"invalid --recompute: {exc}") from None


def _document_variants(variants, values: list[float], rules: tuple | list = (None,)):
    """Each method over a full prefill of the documents (its own name) and assembled at each
    recompute value with each rule (METHOD+docs@R, or METHOD+docs@R/RULE when the rule was named)."""
    from dataclasses import replace

    out = []
    for v in variants:
        out.append(replace(v, documents=True))
        out += [replace(v, name=f"{v.name}+docs@{r:g}" + (f"/{rule}" if rule else ""), documents=True, recompute=r, recompute_rule=rule)
                for rule in rules for r in values]
    return out


def cmd_eval(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from steerc.cli.steer_options import check_profile, steer_config, steer_values
    from steerc.eval import PRIMARY, load_dataset, method_variants, run_eval, summarize, summary_markdown
    from steerc.runtime import Engine
    from steerc.stores import open_store

    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.dataset == "kv-retrieval" else 32
    if args.max_new_tokens < 1:
        raise SteercError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    builtin = args.dataset in PRIMARY
    split = args.split or ("dev" if builtin else "all")
    examples = load_dataset(args.dataset, split=split, seed=args.seed, limit=args.limit, num_docs=args.num_docs, gold_position=args.gold_position,
                            num_keys=args.num_keys, encoding=args.encoding, doc_pool=args.doc_pool)
    variants = method_variants([m.strip() for m in args.methods.split(",") if m.strip()], steer_config(args, "none"), steer_values(args))
    recompute, rules = _recompute_values(args), _rule_values(args)
    if args.documents:
        if not any(e.documents for e in examples):
            raise SteercError(f"--documents needs examples with documents (nq-multidoc, or a JSONL file with 'documents'); {args.dataset} has none")
        variants = _document_variants(variants, recompute, rules)
    name = args.dataset if builtin else Path(args.dataset).name.split(".")[0]
    out = Path(args.out or f"runs/eval/{name}-{split}")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    info = {"dataset": args.dataset, "split": split, "seed": args.seed, "num_docs": args.num_docs, "gold_position": args.gold_position, "num_keys": args.num_keys}
    if args.doc_pool is not None:
        info["doc_pool"] = args.doc_pool
    profile = check_profile(args, engine)
    if profile is not None:
        info["profile"] = profile
    console.print(f"[dim]{len(examples)} examples of {args.dataset} ({split}) x {len(variants)} methods -> {out}[/]")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    store = open_store(args.store, 4 << 30, kv_scheme=args.kv_store_dtype)
    registered = None
    with Progress(*columns, console=console, transient=False) as bar:
        if args.documents:
            registered = _register(engine, examples, store, variants[0].config, args, bar)
        task = bar.add_task("evaluating", total=len(examples))
        try:
            rows = run_eval(engine, examples, variants, store=store, max_new_tokens=args.max_new_tokens, chat=not args.no_chat,
                            out=out, run_info=info, fresh=args.fresh, progress=lambda done, total, _id: bar.update(task, completed=done))
        except ValueError as exc:
            raise SteercError(str(exc)) from None
    references = {v.name: v.name.split("+docs@")[0] for v in variants if v.recompute is not None}
    summary = summarize(rows, primary=PRIMARY.get(args.dataset, "f1"), seed=args.seed, references=references)
    summary["run"] = info | {"engine": str(args.engine), "examples": len(examples)}
    if registered is not None:
        summary["documents"] = registered
    text = summary_markdown(summary, f"{args.dataset} ({split}, {len(examples)} examples)")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "summary.md", text)
    if registered is not None:
        text += (f"\nDocuments: {registered['distinct_documents']} distinct of {registered['document_slots']} document slots; the store holds "
                 f"{registered['held']} document KVs, {registered['store_bytes'] / 2**20:.1f} MiB ({registered['kv_scheme']}).\n")
    print(text, end="")
    console.print(f"[dim]wrote {out}/summary.md, summary.json and predictions.jsonl[/]")
    return 0


def _register(engine, examples, store, config, args, bar) -> dict:
    """Every distinct document's KV stored before answering (documents warm), with a progress bar."""
    from steerc.eval.documents import register_documents
    from steerc.steering.layout import PromptLayout

    task = bar.add_task("registering documents", total=None)
    layout = PromptLayout.for_tokenizer(engine.tokenizer, not args.no_chat)
    return register_documents(engine, examples, store, layout, config.prefixes[0], lambda done, total: bar.update(task, completed=done, total=total))
