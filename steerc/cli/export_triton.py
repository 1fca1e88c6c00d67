"""``steerc export-triton``: write a Triton Inference Server model repository from an engine folder."""

from __future__ import annotations

__all__ = ["add_export_triton_parser", "cmd_export_triton"]


def cmd_export_triton(args) -> int:
    from steerc.cli.common import rich_console
    from steerc.deploy.triton import export_triton

    summary = export_triton(args.engine, args.repo, name=args.name, platforms=args.platform, force=args.force, kv=args.kv)
    console = rich_console()
    console.print(f"[bold green]Triton model repository[/] {summary['repo']}  (from {summary['engine']}, KV cache {summary['kv']})")
    for model in summary["models"]:
        console.print(f"  {model['name']:<24} {model['platform']:<18} {model['path']}")
        console.print(f"    config.pbtxt{'' if summary['validated'] else ' (not checked: pip install tritonclient[grpc] to parse it with Triton schema)'}")
        for rel, how in model["files"].items():
            console.print(f"    {rel:<24} {how}")
        if model["states"]:
            console.print(f"    {model['states']} KV tensors kept by Triton as sequence state (send sequence_start / sequence_end)")
    console.print(f"  start     {summary['command']}")
    return 0


def add_export_triton_parser(sub) -> None:
    p = sub.add_parser("export-triton", help="write a Triton Inference Server model repository from an engine folder",
                       description="Write the engine as a Triton model NAME (onnxruntime_onnx) and, when it has a TensorRT plan, NAME_trt (tensorrt_plan).")
    p.add_argument("engine", help="steerc engine folder (from `steerc compile`)")
    p.add_argument("repo", help="Triton model repository folder (created if missing; other models in it are left alone)")
    p.add_argument("--name", help="Triton model name (default: the engine folder's name)")
    p.add_argument("--platform", help="onnxruntime and/or tensorrt, comma-separated (default: onnxruntime, plus tensorrt when the engine has a plan)")
    p.add_argument("--kv", choices=["explicit", "implicit"], default="explicit",
                   help="explicit: the client sends and receives the KV cache (default); implicit: Triton keeps it per sequence (sequence_batching state)")
    p.add_argument("--force", action="store_true", help="replace existing models of the same name")
    p.set_defaults(func=cmd_export_triton)
