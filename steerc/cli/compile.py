"""``steerc compile``: compile a model into a steerable engine folder."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from steerc.cli.common import DEVICES, add_backend_option, analysis_line, deploy_lines, rich_console, verify_line
from steerc.build.memory_estimate import SKIP_ENV, SKIP_FLAG
from steerc.errors import SteercError
from steerc.settings import ATTENTION_OPS

__all__ = ["STAGES", "add_compile_parser", "cmd_compile"]

STAGES = ("load", "capture", "rewrite", "export", "verify", "write")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cmd_compile(args) -> int:
    from steerc.backends import ENGINE_BACKEND
    from steerc.build import compile_engine
    from steerc.models import DEFAULT_MODEL
    from steerc.progress import StageTracker
    from steerc.settings import CompileSettings

    from steerc.passes.share_attention import parse_share_groups

    try:
        groups = parse_share_groups(args.share_attention) if args.share_attention else ()
        dtype = args.dtype or ("fp16" if args.target == "tensorrt" else "fp32")  # TensorRT deployments run fp16
        weights = args.weights or "full"
        if weights in ("fp32", "fp16"):  # full-precision weights in that dtype
            if args.dtype and args.dtype != weights:
                raise ValueError(f"--weights {weights} contradicts --dtype {args.dtype}; give one of them")
            dtype, weights = weights, "full"
        settings = CompileSettings(opset=args.opset, dtype=dtype, max_seq_len=args.max_seq_len, max_batch=args.max_batch, attn_implementation=args.attn, verify=not args.no_verify,
                                   importance=not args.no_importance, share_attention=groups, target=args.target, backend=args.backend, device=args.device,
                                   weights=weights, weight_block=args.weight_block, weight_symmetric=not args.weight_asymmetric, weight_method=args.weight_method, kv=args.kv,
                                   attention_op=args.attention_op)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    console = rich_console()
    model = args.model or DEFAULT_MODEL
    extra = f", target {settings.target}" if settings.target != "onnx" else ""
    extra += f", weights {settings.weights} {settings.resolved_weight_method} (block {settings.weight_block})" if settings.weights != "full" else ""
    extra += f", backend {settings.backend} ({settings.device})" if settings.backend != ENGINE_BACKEND else ""
    extra += ", kv in-place" if settings.kv == "in-place" else ""
    extra += f", attention {settings.attention_op}" if settings.attention_op != "standard" else ""
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
           f"{'GroupQueryAttention' if manifest['attention']['op'] == 'GroupQueryAttention' else 'TensorScatter'} (opset {manifest['kv']['opset']}); no genai_config.json\n"
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
    p.add_argument("--opset", type=int, default=23, help="ONNX opset (default 23: fused Attention; 20: decomposed)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="weights and KV dtype (default fp32; fp16 with --target tensorrt)")
    p.add_argument("--max-seq-len", type=int, default=2048, help="most tokens (past + new) one call may see")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation to capture")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime self-check")
    p.add_argument("--no-importance", action="store_true", help="do not build the analysis graph (attn_importance) LLMSteer selects tokens with")
    p.add_argument("--share-attention", metavar="GROUPS", default=None,
                   help="Shared Attention: layer groups FIRST-LAST, comma-separated (e.g. 20-29 or 20-24,25-29); the later layers of a group "
                   "reuse the first layer's attention probabilities and keep no key cache")
    p.add_argument("--target", default="onnx", choices=["onnx", "tensorrt"],
                   help="tensorrt: write the step graph to the TensorRT ONNX parser's rules (checked), with optimization profiles and a trtexec command")
    add_backend_option(p, "also build a compiled form of the same program beside the ONNX engine")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="device the compiled backend is built for (tensorrt: cuda)")
    p.add_argument("--weights", default=None, choices=["fp32", "fp16", "int8", "int4"],
                   help="int8/int4: weight-only quantization of every MatMul weight to ONNX Runtime's MatMulNBits (activations stay in --dtype); "
                   "fp32/fp16: full-precision weights in that dtype")
    p.add_argument("--weight-block", type=int, default=32, help="input channels per quantization block (power of two >= 16; default 32)")
    p.add_argument("--weight-method", default="auto", choices=["auto", "minmax", "rtn"],
                   help="minmax: each block from its minimum to its maximum, the minimum kept exactly (exact for weights from a Q4_1 GGUF); "
                   "rtn: ONNX Runtime's round-to-nearest quantizer; auto (default): minmax for int4, rtn for int8")
    p.add_argument("--weight-asymmetric", action="store_true", help="rtn: quantize with an integer zero point per block (default: symmetric)")
    p.add_argument("--kv", default="concat", choices=["concat", "in-place"],
                   help="KV update of the step graph: concat (present = past + new, a copy per call; default) or in-place "
                   "(preallocated buffers the graph writes into: no copy of the past per decode step)")
    p.add_argument("--attention-op", default="standard", choices=ATTENTION_OPS,
                   help="the op each layer attends with: standard (ONNX Attention; default) or group-query (ONNX Runtime's "
                   "GroupQueryAttention over the in-place KV buffers, needs --kv in-place: faster decode on long contexts)")
    p.add_argument("--force", action="store_true", help="replace an existing engine folder")
    p.add_argument(SKIP_FLAG, dest="skip_memory_check", action="store_true",
                   help=f"compile even when the peak memory estimated from the config exceeds the memory available (also {SKIP_ENV}=1)")
    p.set_defaults(func=cmd_compile)
