"""``steerc generate``: generate text with an engine, streaming tokens."""

from __future__ import annotations

import sys

from steerc.cli.common import DEVICES, add_backend_option, add_encoding_option, rich_console
from steerc.errors import SteercError
from steerc.user_files import read_text

__all__ = ["add_generate_parser", "cmd_generate"]


def cmd_generate(args) -> int:
    from steerc.runtime import Engine, SamplingParams, TextStream
    from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK as PREFILL_CHUNK

    if args.prompt_file:
        prompt = read_text(args.prompt_file, "--prompt-file", encoding=args.encoding, flag="--encoding")
        if not prompt.strip():
            raise SteercError(f"--prompt-file {args.prompt_file} is empty; give a file with the prompt")
    else:
        prompt = args.prompt
    try:
        sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    if args.max_new_tokens < 1:
        raise SteercError(f"invalid option: --max-new-tokens must be at least 1, got {args.max_new_tokens}")
    engine = Engine.load(args.engine, device=args.device, threads=args.threads, backend=args.backend)
    from rich.progress import Progress

    progress = Progress(transient=True, console=rich_console(stderr=True))
    task = {}

    def on_prefill(done: int, total: int) -> None:  # shown for long prompts only
        if total <= PREFILL_CHUNK:
            return
        if not task:
            progress.start()
            task["id"] = progress.add_task("prefill", total=total)
        progress.update(task["id"], completed=done)
        if done == total:
            progress.stop()

    stream = TextStream(engine, prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, stop=tuple(args.stop or ()), chat=not args.no_chat,
                        prefill_chunk=PREFILL_CHUNK, progress=on_prefill)
    if args.no_stream:
        print("".join(stream), flush=True)
    else:
        for piece in stream:
            print(piece, end="", flush=True)
        print(flush=True)
    c = stream.completion
    print(
        f"[{c.prompt_tokens} prompt tokens, {len(c.token_ids)} generated ({c.finish_reason}); "
        f"prefill {c.prefill_tokens_per_s:.1f} tok/s ({c.prefill_s:.2f} s to first token), decode {c.decode_tokens_per_s:.1f} tok/s]",
        file=sys.stderr,
    )
    return 0


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text with an engine, streaming tokens")
    p.add_argument("engine")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the user message (the chat template is applied unless --no-chat)")
    src.add_argument("--prompt-file", help="read the prompt from a text file: UTF-8, or see --encoding")
    add_encoding_option(p, "--prompt-file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    add_backend_option(p, "what runs the step graph (the engine must have been compiled with that --backend)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.set_defaults(func=cmd_generate)
