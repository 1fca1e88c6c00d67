"""``steerc`` command line. Only the CLI prints; the library logs."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

from steerc.errors import SteercError

__all__ = ["main"]

STAGES = ("load", "capture", "rewrite", "export", "verify", "write")




def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cmd_compile(args) -> int:
    from steerc.engine import compile_engine
    from steerc.models import DEFAULT_MODEL
    from steerc.progress import StageTracker
    from steerc.settings import CompileSettings

    try:
        settings = CompileSettings(opset=args.opset, dtype=args.dtype, max_seq_len=args.max_seq_len, max_batch=args.max_batch, attn_implementation=args.attn, verify=not args.no_verify,
                                   importance=not args.no_importance)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    console = _console()
    model = args.model or DEFAULT_MODEL
    console.print(f"[bold]steerc compile[/] {model} -> {args.output}  (opset {settings.opset}, {settings.dtype}, max {settings.max_seq_len} tokens)")
    index = {name: i + 1 for i, name in enumerate(STAGES)}
    status = {"live": None}

    def listener(event: str, stage: str, seconds: float | None) -> None:
        tag = f"[{index.get(stage, '?')}/{len(STAGES)}] {stage}"
        if event == "start":
            status["live"] = console.status(f"{tag} ...")
            status["live"].start()
            return
        if status["live"] is not None:
            status["live"].stop()
        mark = "[green]done[/]" if event == "done" else "[red]failed[/]"
        console.print(f"  {tag:<18} {mark} {seconds:6.1f} s")

    start = time.perf_counter()
    manifest = compile_engine(model, args.output, settings, force=args.force, tracker=StageTracker(listener))
    total = time.perf_counter() - start
    report = manifest["passes"][0]
    g = manifest["geometry"]
    counts = manifest["backend"]["op_counts"]
    attention_ops = {k: v for k, v in counts.items() if k.split("::")[-1] in ("Attention", "Softmax", "GroupQueryAttention")}
    console.print(
        f"[bold green]engine ready[/] {Path(args.output)}\n"
        f"  model     {manifest['architecture']} ({manifest['model_type']}), {g['num_layers']} layers, {g['num_heads']} heads / {g['num_kv_heads']} kv heads, head dim {g['head_dim']}\n"
        f"  rewrite   {report['num_sites']} attention sites steered ({', '.join(f'{k}: {v}' for k, v in report['kinds'].items())}); "
        f"passes: {', '.join(p['name'] + ' (' + str(p['num_sites']) + ')' for p in manifest['passes'])}\n"
        f"  onnx      opset {manifest['backend']['opset']}, {sum(counts.values())} nodes, attention ops {attention_ops}\n"
        f"  analysis  {_analysis_line(manifest)}\n"
        f"  verify    {_verify_line(manifest['verify'])}\n"
        f"  time      {total:.1f} s total; peak memory {_peak_rss_mib():.0f} MiB"
    )
    return 0


def _verify_line(check: dict) -> str:
    if "skipped" in check:
        return f"skipped: {check['skipped']}"
    line = f"ONNX Runtime vs eager: prefill {check['prefill_zero_bias_rel_err']:.1e}, steered decode {check['decode_steered_rel_err']:.1e} (tolerance {check['tolerance']:.0e})"
    if "importance" in check:
        line += f"; attn_importance {check['importance']['attn_importance_abs_err']:.1e}"
    return line


def _analysis_line(manifest: dict) -> str:
    analysis = manifest.get("analysis")
    if not analysis:
        return "none (compiled with --no-importance: LLMSteer selection is unavailable)"
    return f"{analysis['model']} outputs attn_importance (shares {analysis['data']})"


def cmd_inspect(args) -> int:
    from steerc.engine import read_manifest

    manifest = read_manifest(Path(args.engine), check_files=not args.no_hash_check)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    console = _console()
    g = manifest["geometry"]
    console.print(f"[bold]{args.engine}[/]: steerc engine v{manifest['format_version']} (steerc {manifest['steerc_version']})")
    src = manifest["source"]
    console.print(f"  source    {src['spec']} [{src['kind']}] sha256 {src['sha256'][:16]}…")
    console.print(f"  model     {manifest['architecture']} ({manifest['model_type']}), dtype {manifest['dtype']}, max {manifest['max_seq_len']} tokens, batch ≤ {manifest['max_batch']}")
    console.print(f"  geometry  {g['num_layers']} layers, {g['num_heads']} heads, {g['num_kv_heads']} kv heads, head dim {g['head_dim']}, vocab {g['vocab_size']}")
    console.print(f"  backend   {manifest['backend']['name']} opset {manifest['backend']['opset']}: {sum(manifest['backend']['op_counts'].values())} nodes")
    console.print(f"  verify    {_verify_line(manifest['verify'])}")
    console.print(f"  analysis  {_analysis_line(manifest)}")
    console.print("  inputs")
    for spec in manifest["inputs"]:
        if spec["name"].startswith("past_key_values.") and not spec["name"].startswith("past_key_values.0."):
            continue
        console.print(f"    {spec['name']:<28} {spec['dtype']:<8} {spec['dims']}")
    console.print(f"    (past_key_values.0 … {g['num_layers'] - 1}.key|value)")
    for report in [*manifest["passes"], *(manifest.get("analysis") or {}).get("passes", [])]:
        console.print(f"  pass {report['name']}: {report['num_sites']} site(s)")
        for site in report["sites"]:
            console.print(f"    layer {site['layer']:>3}  {site['kind']:<14} {site['target']:<44} mask={site['mask']:<9} heads={site['heads']}  ({site['node']})")
    if not args.no_hash_check:
        console.print(f"  files     {len(manifest['files'])} verified against their sha256")
    return 0


def cmd_generate(args) -> int:
    from steerc.runtime import Engine, SamplingParams, TextStream
    from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK as PREFILL_CHUNK

    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text()
        except OSError as exc:
            raise SteercError(f"cannot read --prompt-file {args.prompt_file}: {exc.strerror}") from None
    else:
        prompt = args.prompt
    try:
        sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    if args.max_new_tokens < 1:
        raise SteercError(f"invalid option: --max-new-tokens must be at least 1, got {args.max_new_tokens}")
    engine = Engine.load(args.engine, device=args.device, threads=args.threads)
    from rich.progress import Progress

    progress = Progress(transient=True, console=_console(stderr=True))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerc", description="Attention-steering compiler for Hugging Face causal language models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's log")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a model into a steerable engine folder")
    p.add_argument("model", nargs="?", help="hub id (local cache only), local folder, .gguf file, or smollm2-135m-instruct (default)")
    p.add_argument("-o", "--output", required=True, help="engine folder to create")
    p.add_argument("--opset", type=int, default=23, help="ONNX opset (default 23: fused Attention; 20: decomposed)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--max-seq-len", type=int, default=2048, help="most tokens (past + new) one call may see")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation to capture")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime self-check")
    p.add_argument("--no-importance", action="store_true", help="do not build the analysis graph (attn_importance) LLMSteer selects tokens with")
    p.add_argument("--force", action="store_true", help="replace an existing engine folder")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("inspect", help="print an engine's manifest and rewritten attention sites")
    p.add_argument("engine")
    p.add_argument("--json", action="store_true", help="print the raw steerc.json")
    p.add_argument("--no-hash-check", action="store_true", help="do not verify file hashes")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("generate", help="generate text with an engine, streaming tokens")
    p.add_argument("engine")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the user message (the chat template is applied unless --no-chat)")
    src.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.set_defaults(func=cmd_generate)

    from steerc.cli_run import add_run_parser

    add_run_parser(sub)
    from steerc.cli_eval import add_eval_parser

    add_eval_parser(sub)
    from steerc.cli_serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def _quiet_dependencies() -> None:
    """Keep third-party progress bars and warnings out of the CLI's own progress display."""
    import os
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch  # noqa: F401  (torch configures its loggers on import; override afterwards)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for name in ("torch", "torch.onnx", "torch.export", "torch._export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        _quiet_dependencies()
    try:
        return args.func(args)
    except SteercError as exc:
        if args.debug:
            raise
        print(f"steerc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("steerc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"steerc: internal error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
