"""``steerc compile``: compile a model into a steerable engine folder."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from steerc.cli.common import add_backend_option, analysis_line, deploy_lines, rich_console, verify_line
from steerc.cli.settings_flags import add_settings_flags, settings_from_args
from steerc.build.memory_estimate import SKIP_ENV, SKIP_FLAG
from steerc.errors import SteercError
from steerc.settings import FULL_WEIGHT_DTYPES, CompileSettings

__all__ = ["STAGES", "add_compile_parser", "cmd_compile", "compile_settings"]

STAGES = ("load", "capture", "rewrite", "export", "verify", "write")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def compile_settings(args) -> CompileSettings:
    """CompileSettings from ``steerc compile``'s parsed flags: a flag given is its setting, one not
    given keeps the declared default (:mod:`steerc.cli.settings_flags`), but for these special
    cases. Raises ValueError from the flags' syntax and the settings' checks."""
    from steerc.passes.share_attention import parse_share_groups

    given = {"backend": args.backend}  # --backend is not generated (add_backend_option: the registry's choices)
    if hasattr(args, "share_attention"):  # "20-24,25-29" -> ((20, ..., 24), (25, ..., 29))
        given["share_attention"] = parse_share_groups(args.share_attention)
    dtype, weights = getattr(args, "dtype", None), getattr(args, "weights", None)
    if weights in FULL_WEIGHT_DTYPES:  # --weights fp16: full-precision weights in that dtype
        if dtype and dtype != weights:
            raise ValueError(f"--weights {weights} contradicts --dtype {dtype}; give one of them")
        given.update(dtype=weights, weights="full")
    elif dtype is None and getattr(args, "target", None) == "tensorrt":
        given["dtype"] = "fp16"  # TensorRT deployments run fp16
    return settings_from_args(CompileSettings, args, **given)


def cmd_compile(args) -> int:
    from steerc.backends import ENGINE_BACKEND
    from steerc.build import compile_engine
    from steerc.models import DEFAULT_MODEL
    from steerc.progress import StageTracker

    try:
        settings = compile_settings(args)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    console = rich_console()
    model = args.model or DEFAULT_MODEL
    extra = f", target {settings.target}" if settings.target != "onnx" else ""
    extra += f", weights {settings.weights} {settings.resolved_weight_method} (block {settings.weight_block})" if settings.weights != "full" else ""
    extra += f", backend {settings.backend} ({settings.device})" if settings.backend != ENGINE_BACKEND else ""
    extra += ", kv in-place" if settings.kv == "in-place" else ""
    extra += f", attention {settings.attention_op}" if settings.attention_op != "standard" else ""
    extra += f", kv cache {settings.kv_cache}" if settings.kv_cache != "fp32" else ""
    console.print(f"[bold]steerc compile[/] {model} -> {args.output}  (opset {settings.opset}, {settings.dtype}, max {settings.max_seq_len} tokens{extra})")
    stages = _stages(settings)
    index = {name: i + 1 for i, name in enumerate(stages)}
    status = {"live": None}

    def listener(event: str, stage: str, seconds: float | None) -> None:
        tag = f"[{index.get(stage, '?')}/{len(stages)}] {stage}"
        if event == "start":
            status["live"] = console.status(f"{tag} ...")
            status["live"].start()
            return
        if status["live"] is not None:
            status["live"].stop()
        mark = "[green]done[/]" if event == "done" else "[red]failed[/]"
        console.print(f"  {tag:<18} {mark} {seconds:6.1f} s")

    start = time.perf_counter()
    manifest = compile_engine(model, args.output, settings, force=args.force, tracker=StageTracker(listener), memory_check=not args.skip_memory_check)
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
        f"  analysis  {analysis_line(manifest)}\n"
        + (f"  shared    attention groups {', '.join(f'{grp[0]}-{grp[-1]}' for grp in manifest['share_attention']['groups'])} "
           f"({len(manifest['share_attention']['shared_layers'])} layers without Q/K and key cache; no genai_config.json)\n" if manifest.get("share_attention") else "")
        + (f"  kv        in place: {manifest['kv']['buffers']} buffers written by "
           f"{'GroupQueryAttention' if manifest['attention']['op'] == 'GroupQueryAttention' else 'TensorScatter'} (opset {manifest['kv']['opset']})"
           f"{', int8 (per-channel scales calibrated on ' + str(manifest['kv_cache']['calibration_tokens']) + ' tokens)' if manifest['kv_cache']['dtype'] == 'int8' else ''}"
           "; no genai_config.json\n"
           if (manifest.get("kv") or {}).get("layout") == "in-place" else "")
        + deploy_lines(manifest, Path(args.output))
        + f"  verify    {verify_line(manifest['verify'])}\n"
        f"  time      {total:.1f} s total; peak memory {_peak_rss_mib():.0f} MiB"
    )
    return 0


def _stages(settings) -> tuple[str, ...]:
    """The stages this compile runs, in order (a compiled backend adds one after export)."""
    from steerc.backends import get_backend

    stage = get_backend(settings.backend).stage
    return STAGES[:4] + ((stage,) if stage else ()) + STAGES[4:]


def add_compile_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a model into a steerable engine folder")
    p.add_argument("model", nargs="?", help="hub id (local cache only), local folder, .gguf file, or smollm2-135m-instruct (default)")
    p.add_argument("-o", "--output", required=True, help="engine folder to create")
    add_settings_flags(p, CompileSettings)  # every compile setting's flag, declared once in steerc/settings.py; special cases: compile_settings
    # Hand-written: its choices and help are the backend registry's at the time the parser is built (a backend added later is listed).
    add_backend_option(p, "also build a compiled form of the same program beside the ONNX engine")
    p.add_argument("--force", action="store_true", help="replace an existing engine folder")
    p.add_argument(SKIP_FLAG, dest="skip_memory_check", action="store_true",
                   help=f"compile even when the peak memory estimated from the config exceeds the memory available (also {SKIP_ENV}=1)")
    p.set_defaults(func=cmd_compile)
