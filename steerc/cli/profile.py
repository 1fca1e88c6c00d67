"""``steerc profile``: choose selector and steered heads on dev data; writes a profile JSON."""

from __future__ import annotations

from pathlib import Path

from steerc.cli.common import add_encoding_option
from steerc.errors import SteercError

__all__ = ["add_profile_parser", "cmd_profile"]


def add_profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="choose the heads that select evidence and the heads to steer, on dev data (writes a profile JSON)")
    p.add_argument("engine")
    p.add_argument("--dataset", action="append", required=True, help="squad, nq-multidoc, kv-retrieval or a .jsonl file with evidence; repeat to mix")
    add_encoding_option(p, "--dataset files")
    p.add_argument("--split", default="dev", choices=["dev", "test", "all"], help="profile on dev only (the default) unless you know why")
    p.add_argument("--limit", type=int, default=60, help="examples per dataset (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gold-position", default="random", choices=["first", "middle", "last", "random"],
                   help="nq-multidoc / kv-retrieval: where the gold document sits (default random: heads that find it anywhere)")
    p.add_argument("--num-selector", type=int, default=8, help="selector heads to keep (default 8)")
    p.add_argument("--num-steered", type=int, default=16, help="steered heads to keep at most (default 16)")
    p.add_argument("--top-layers", type=int, default=4, help="layers whose heads are profiled one by one (default 4)")
    p.add_argument("--alpha", type=float, default=0.1, help="steering strength while profiling (default 0.1)")
    p.add_argument("--selector-only", action="store_true", help="profile only the selector heads (one analysis call per example; no steered-head search)")
    p.add_argument("-o", "--out", required=True, help="profile JSON to write (the work file OUT.partial.jsonl makes an interrupted run resume)")
    p.add_argument("--no-chat", action="store_true", help="completion-style prompts (base models)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from steerc.cli.common import rich_console
    from steerc.eval import load_dataset
    from steerc.runtime import Engine
    from steerc.steering.answer import Steerer
    from steerc.steering.profiling import ProfileSettings, profile_heads
    from steerc.stores import MemoryStore

    try:
        settings = ProfileSettings(args.num_selector, args.num_steered, args.top_layers, args.alpha, not args.selector_only)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    if args.limit < 1:
        raise SteercError(f"--limit must be at least 1, got {args.limit}")
    per_set = [load_dataset(name, split=args.split, seed=args.seed, limit=args.limit, gold_position=args.gold_position if name != "squad" else None,
                            encoding=args.encoding) for name in args.dataset]
    examples = [e for group in zip(*per_set) for e in group] + [e for group in per_set for e in group[min(map(len, per_set)) :]]  # interleaved
    out = Path(args.out)
    work = out.with_name(out.name + ".partial.jsonl")
    console = rich_console(stderr=True)
    engine = Engine.load(args.engine, threads=args.threads)
    steerer = Steerer(engine, store=MemoryStore(2 << 30), chat=not args.no_chat)
    console.print(f"[dim]profiling {engine.geometry.num_layers} layers x {engine.geometry.num_heads} heads on {len(examples)} {args.split} examples "
                  f"({', '.join(args.dataset)}); work file {work}[/]")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    tasks: dict = {}
    with Progress(*columns, console=console) as bar:
        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        try:
            profile = profile_heads(steerer, examples, settings, work=work, progress=progress)
        except ValueError as exc:
            raise SteercError(str(exc)) from None
    profile = type(profile)(profile.selector_heads, profile.steered_heads, profile.model, profile.geometry,
                            {**profile.made_with, "datasets": args.dataset, "split": args.split, "seed": args.seed, "limit": args.limit})
    profile.save(out)
    work.unlink(missing_ok=True)
    print(f"selector heads: {' '.join(f'{a}.{b}' for a, b in profile.selector_heads)}")
    if profile.steered_heads:
        print(f"steered heads:  {' '.join(f'{a}.{b}' for a, b in profile.steered_heads)}")
    console.print(f"[dim]wrote {out}; use it with --profile {out} (run, eval, serve)[/]")
    return 0
