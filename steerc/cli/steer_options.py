"""The steering options ``steerc run``, ``eval`` and ``serve`` share, and the SteerConfig they describe."""

from __future__ import annotations

from steerc.errors import SteercError

__all__ = ["add_steer_options", "steer_config", "check_profile"]


def _ints(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SteercError(f"expected a comma-separated list of integers or 'all', got {text!r}") from None


def _profile(args):
    from steerc.steering.profiles import load_profile

    if not getattr(args, "profile", None):
        return None
    try:
        return load_profile(args.profile)
    except ValueError as exc:
        raise SteercError(str(exc)) from None


def steer_config(args, method: str | None = None):
    """The SteerConfig the shared steering options (``add_steer_options``) describe."""
    from steerc.steering.config import DEFAULT_PREFIXES, SteerConfig
    from steerc.steering.spans import parse_spans

    fields = {"window": args.window}
    if method or args.method:
        fields["method"] = method or args.method
    for name in ("layers", "heads"):  # 'all' = every one; left out = SteerConfig's default
        value = getattr(args, name)
        if value is not None:
            fields[name] = value if name == "layers" and value in ("auto", "first-third", "middle-third", "last-third") else _ints(value)
    for name in ("steer_at", "alpha", "evidence", "unit", "rank_by", "target_share", "min_share", "blocks", "block_size", "initial", "local", "block_mask",
                 "retrieve_for", "keep_sinks", "keep_recent", "keep_unit"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if getattr(args, "keep", None) is not None:
        fields["keep"] = int(args.keep) if args.keep > 1 and args.keep == int(args.keep) else args.keep
    if args.top_k is not None:
        fields["top_k"] = int(args.top_k) if args.top_k >= 1 else args.top_k
    if args.prefix:
        if len(args.prefix) != 2:
            raise SteercError(f"--prefix must be given twice (LLMSteer's two instruction prefixes), got {len(args.prefix)}")
        fields["prefixes"] = tuple(args.prefix)
    else:
        fields["prefixes"] = DEFAULT_PREFIXES
    profile = _profile(args)
    if profile is not None:
        fields["selector"] = profile.selector_heads
        fields["profile"] = profile.steered_heads
    try:
        if getattr(args, "highlight", None):
            fields["highlights"] = tuple(parse_spans(args.highlight))
        return SteerConfig(**fields)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None


def check_profile(args, engine) -> dict | None:
    """Refuse a ``--profile`` made for another engine; returns what the run records of it."""
    profile = _profile(args)
    if profile is None:
        return None
    try:
        profile.check(engine)
    except ValueError as exc:
        raise SteercError(str(exc)) from None
    return {"path": str(args.profile), "selector_heads": [list(p) for p in profile.selector_heads], "steered_heads": [list(p) for p in profile.steered_heads]}


def add_steer_options(p) -> None:
    """Steering options shared by ``steerc run``, ``eval`` and ``serve`` (defaults: SteerConfig's)."""
    p.add_argument("--alpha", type=float, default=None, help="down-weighting of the other context keys, in (0, 1] (default: SteerConfig's)")
    p.add_argument("--top-k", type=float, default=None, help="llmsteer: tokens kept per layer and pass: a ratio < 1 or a count (default: SteerConfig's)")
    p.add_argument("--steer-at", default=None, choices=["prefill", "decode", "both"], help="default: SteerConfig's")
    p.add_argument("--layers", default=None, help="steered layers: e.g. 8,9,10, all, a band first-third|middle-third|last-third, or auto (the method's default band)")
    p.add_argument("--heads", default=None, help="steered query heads within those layers (default all)")
    p.add_argument("--profile", default=None, help="head profile JSON from steerc profile: selector heads (query) and steered heads (replace --layers/--heads)")
    p.add_argument("--prefix", action="append", help="an instruction prefix (give it twice; default: LLMSteer's two)")
    p.add_argument("--window", type=int, default=0, help="llmsteer: count only the last N context tokens' attention (0 = all)")
    p.add_argument("--evidence", type=int, default=None, help="query: how many units (sentences or documents) to steer towards (default: SteerConfig's)")
    p.add_argument("--unit", default=None, choices=["auto", "sentence", "paragraph"], help="query: what a unit is (auto: lines of a multi-document input, else sentences)")
    p.add_argument("--rank-by", default=None, choices=["attention", "lexical"], help="query: rank units by the question's calibrated attention, or by word overlap")
    p.add_argument("--target-share", type=float, default=None, help="query: adaptive bias, per head lift the evidence's attention share to this (0 = fixed alpha)")
    p.add_argument("--min-share", type=float, default=None, help="query: steer only when the best unit holds at least this share of the score (0 = always)")
    p.add_argument("--blocks", type=int, default=None, help="qllm: context blocks retrieved per question (default: SteerConfig's)")
    p.add_argument("--block-size", type=int, default=None, help="qllm: tokens per block (default: SteerConfig's)")
    p.add_argument("--initial", type=int, default=None, help="qllm: first context tokens always attended (default: SteerConfig's)")
    p.add_argument("--local", type=int, default=None, help="qllm: last context tokens always attended (default: SteerConfig's)")
    p.add_argument("--block-mask", default=None, choices=["hard", "soft"], help="qllm: drop the other blocks (hard) or down-weight them by alpha (soft)")
    p.add_argument("--retrieve-for", default=None, choices=["question", "answer"],
                   help="qllm: the question and answer attend to the retrieved blocks, or only the answer (the question is read once)")
    p.add_argument("--keep", type=float, default=None,
                   help="store only this share (0-1] or count of the context's tokens' KV, the most important by dual-prefix attention (default 1: all)")
    p.add_argument("--keep-sinks", type=int, default=None, help="--keep: first context tokens always kept (default: SteerConfig's)")
    p.add_argument("--keep-recent", type=int, default=None, help="--keep: last context tokens always kept (default 0)")
    p.add_argument("--keep-unit", default=None, choices=["token", "auto", "sentence", "paragraph"],
                   help="--keep: keep single tokens, or whole sentences / documents (auto: documents of a multi-document input, else sentences)")
