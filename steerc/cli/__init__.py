"""``steerc`` command line. Only the CLI prints; the library logs.

One module per command (``compile``, ``inspect``, ``check-tensorrt``, ``export-triton``, ``generate``,
``run``, ``eval``, ``profile``, ``serve``), each with its ``add_*_parser`` and ``cmd_*``; this module
assembles the parser and runs ``main``. Shared pieces: :mod:`~steerc.cli.common` (engine loading,
``--backend``/``--device`` from the backend registry, progress) and :mod:`~steerc.cli.steer_options`
(the steering flags, generated from the methods' option declarations).
"""

from __future__ import annotations

import argparse
import logging
import sys

from steerc.errors import SteercError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage of ``run`` or ``eval`` is dozens of
    lines of steering flags that bury the message); ``--help`` still shows it. Its subcommands'
    parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from steerc.cli.check_tensorrt import add_check_tensorrt_parser
    from steerc.cli.compile import add_compile_parser
    from steerc.cli.eval import add_eval_parser
    from steerc.cli.export_triton import add_export_triton_parser
    from steerc.cli.generate import add_generate_parser
    from steerc.cli.inspect import add_inspect_parser
    from steerc.cli.profile import add_profile_parser
    from steerc.cli.run import add_run_parser
    from steerc.cli.serve import add_serve_parser

    parser = _Parser(prog="steerc", description="Attention-steering compiler for Hugging Face causal language models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's log")
    sub = parser.add_subparsers(dest="command", required=True)

    add_compile_parser(sub)
    add_inspect_parser(sub)
    add_generate_parser(sub)
    add_run_parser(sub)
    add_eval_parser(sub)
    add_export_triton_parser(sub)
    add_profile_parser(sub)
    add_serve_parser(sub)
    add_check_tensorrt_parser(sub)
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
