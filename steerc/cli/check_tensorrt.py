"""``steerc check-tensorrt``: report what TensorRT's ONNX parser would refuse in an engine's step graph."""

from __future__ import annotations

import json
from pathlib import Path

from steerc.cli.common import rich_console
from steerc.errors import SteercError

__all__ = ["add_check_tensorrt_parser", "cmd_check_tensorrt"]


def _model_path(target: str) -> Path:
    path = Path(target)
    if path.is_dir():
        from steerc.backends.tensorrt.check import engine_model_path

        model = engine_model_path(path)
        if not model.is_file():
            raise SteercError(f"engine {path} has no step graph {model.name}; recompile it with `steerc compile ... -o {path} --force`")
        return model
    if path.is_file():
        if path.suffix != ".onnx":
            raise SteercError(f"{path} is not an .onnx file; give an engine folder or an ONNX model")
        return path
    raise SteercError(f"{path} does not exist; give an engine folder (from `steerc compile`) or an .onnx file")


def cmd_check_tensorrt(args) -> int:
    from steerc.backends.tensorrt.check import check_model_summary

    model = _model_path(args.engine)
    try:
        result = check_model_summary(model)
    except SteercError:
        raise
    except Exception as exc:  # a file that is not an ONNX model
        raise SteercError(f"{model}: cannot read it as an ONNX model ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from exc
    if args.json:
        print(json.dumps({"model": str(model), "nodes_checked": result.nodes_checked, "ops_seen": result.ops_seen,
                          "violations": [v.to_dict() for v in result.violations]}, indent=2))
        return 1 if result.violations else 0
    console = rich_console()
    for violation in result.violations:
        console.print(str(violation), markup=False)
    ops = ", ".join(f"{op} {n}" for op, n in result.ops_seen.items())
    console.print(f"{model}: {result.nodes_checked} nodes checked, {len(result.ops_seen)} op types ({ops})", markup=False)
    if result.violations:
        rules = sorted({v.rule for v in result.violations})
        console.print(f"[bold red]{len(result.violations)} TensorRT violation(s)[/] ({', '.join(rules)})")
        return 1
    console.print("[bold green]0 violations[/]: TensorRT's ONNX parser should accept this graph")
    return 0


def add_check_tensorrt_parser(sub) -> None:
    p = sub.add_parser("check-tensorrt", help="check an engine's step graph against TensorRT's ONNX parser rules (no TensorRT needed)")
    p.add_argument("engine", help="an engine folder or an .onnx file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check_tensorrt)
