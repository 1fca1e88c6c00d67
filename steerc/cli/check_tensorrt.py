"""``steerc check-tensorrt``: report what TensorRT's ONNX parser would refuse in an engine's ONNX
graphs (every one of the folder: step, analysis, selector) or in one ``.onnx`` file."""

from __future__ import annotations

import json
from pathlib import Path

from steerc.cli.common import rich_console
from steerc.errors import SteercError

__all__ = ["add_check_tensorrt_parser", "cmd_check_tensorrt"]


def _model_paths(target: str) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        from steerc.backends.tensorrt.check import engine_graph_paths

        models = engine_graph_paths(path)
        if not models[0].is_file():
            raise SteercError(f"engine {path} has no step graph {models[0].name}; recompile it with `steerc compile ... -o {path} --force`")
        return models
    if path.is_file():
        if path.suffix != ".onnx":
            raise SteercError(f"{path} is not an .onnx file; give an engine folder or an ONNX model")
        return [path]
    raise SteercError(f"{path} does not exist; give an engine folder (from `steerc compile`) or an .onnx file")


def _check(model: Path):
    from steerc.backends.tensorrt.check import check_model_summary

    try:
        return check_model_summary(model)
    except SteercError:
        raise
    except Exception as exc:  # a file that is not an ONNX model
        raise SteercError(f"{model}: cannot read it as an ONNX model ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from exc


def _as_dict(model: Path, result) -> dict:
    return {"model": str(model), "nodes_checked": result.nodes_checked, "ops_seen": result.ops_seen,
            "violations": [v.to_dict() for v in result.violations]}


def cmd_check_tensorrt(args) -> int:
    models = _model_paths(args.engine)
    results = [(model, _check(model)) for model in models]
    failed = [model.name for model, result in results if result.violations]
    if args.json:
        if Path(args.engine).is_dir():  # an engine folder: one entry per graph
            print(json.dumps({"engine": str(args.engine), "graphs": [_as_dict(m, r) for m, r in results], "failed": failed}, indent=2))
        else:
            print(json.dumps(_as_dict(*results[0]), indent=2))
        return 1 if failed else 0
    console = rich_console()
    for model, result in results:
        for violation in result.violations:
            console.print(f"{model.name}: {violation}", markup=False)
        ops = ", ".join(f"{op} {n}" for op, n in result.ops_seen.items())
        console.print(f"{model}: {result.nodes_checked} nodes checked, {len(result.ops_seen)} op types ({ops})", markup=False)
        if result.violations:
            rules = sorted({v.rule for v in result.violations})
            console.print(f"[bold red]{len(result.violations)} TensorRT violation(s)[/] in {model.name} ({', '.join(rules)})")
        else:
            console.print(f"[bold green]0 violations[/] in {model.name}: TensorRT's ONNX parser should accept this graph")
    if len(results) > 1:
        if failed:
            console.print(f"[bold red]{len(failed)} of {len(results)} graphs break TensorRT's parser rules[/]: {', '.join(failed)}")
        else:
            console.print(f"[bold green]all {len(results)} graphs pass[/] ({', '.join(m.name for m, _ in results)})")
    return 1 if failed else 0


def add_check_tensorrt_parser(sub) -> None:
    p = sub.add_parser("check-tensorrt", help="check an engine's ONNX graphs (step, analysis, selector) or one .onnx file against TensorRT's ONNX parser rules (no TensorRT needed)")
    p.add_argument("engine", help="an engine folder (every ONNX graph in it is checked) or an .onnx file")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for a folder: one entry per graph)")
    p.set_defaults(func=cmd_check_tensorrt)
