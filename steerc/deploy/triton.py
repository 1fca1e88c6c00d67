"""``export_triton``: a steerc engine folder -> models in a Triton Inference Server model repository.

Every engine gives a model ``NAME`` for Triton's ``onnxruntime_onnx`` platform (``config.pbtxt``,
``1/model.onnx`` and its external weights file, hard-linked from the engine when the repository
is on the same filesystem, else copied). An engine whose manifest records a TensorRT plan
(``backends.tensorrt.plan``) also gives ``NAME_trt`` for ``tensorrt_plan`` (``1/model.plan``).

The configs are written here as protobuf text and, when ``tritonclient[grpc]`` is installed,
parsed with Triton's own ``ModelConfig`` schema before anything is moved into the repository.
Each model folder is built in a hidden temporary folder inside the repository and renamed into
place, so Triton never sees half a model; an existing model is replaced only with ``force``.

KV cache, two ways (``kv``):

* ``explicit`` (default): ``past_key_values.{i}.*`` are ordinary inputs and ``present.{i}.*``
  ordinary outputs, exactly the engine's contract. The client holds the cache and sends it back
  each step; any batching, any scheduling, no server state.
* ``implicit``: Triton keeps the cache per sequence (correlation id) with its implicit state
  management: ``sequence_batching { state [...] }`` maps each ``present.{i}.*`` output to the
  ``past_key_values.{i}.*`` input of the sequence's next request. What Triton requires, from its
  docs (docs/user_guide/implicit_state_management.md) and sources (core
  src/sequence_batch_scheduler/sequence_batch_scheduler.cc ``GenerateInitialStateData``,
  src/sequence_state.cc ``SequenceStates::Initialize``, onnxruntime_backend src/onnxruntime.cc):

  - Without ``initial_state`` the first request of a sequence gets *uninitialized* state with
    every variable dim set to 1: a garbage one-token past. So every state has an
    ``initial_state`` with ``zero_data: true``, a ``name``, the state's dtype, the same rank,
    and fixed dims only: batch 1 and a zero-length ``past_sequence_length`` (0 elements, so the
    first request is an ordinary prefill over an empty cache).
  - State inputs/outputs are *not* listed under ``input``/``output`` (the onnxruntime backend
    counts them separately and refuses a config whose input count differs from the graph's);
    listing a state output under ``output`` would only send the cache back to the client.
  - No ``control_input`` (START/END/READY/CORRID): Triton feeds control tensors to the model as
    inputs, and the onnxruntime backend refuses controls the graph does not have. None are
    needed: the zero-length initial state already makes the first step a prefill. Clients still
    mark requests with ``sequence_start`` / ``sequence_end`` so Triton resets and frees the slot.
  - ``use_same_buffer_for_input_output`` / ``use_growable_memory`` are left off, also for
    TensorRT. Triton recommends one buffer only when the model reads its whole input state
    before writing the output state, and growable memory (KIND_GPU only, and it requires the
    single buffer) appends to the end of the buffer. steerc's cache is ``[B, Hkv, T, D]`` with
    ``present = concat(past, new)`` along ``T``, which is not the outermost dim: writing
    ``present`` into ``past``'s buffer, or growing it at the end, would move every head's rows,
    corrupting the cache. Separate buffers cost one copy of the cache per sequence.
  - ``oldest`` strategy with ``max_candidate_sequences`` = the engine's ``max_batch``: an instance
    interleaves that many sequences' steps (one request per execution, see max_batch_size
    below); more sequences wait in Triton's backlog until one ends or idles out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from steerc.atomic import install_folder
from steerc.engine_format import read_manifest
from steerc.errors import EngineError, SteercError

__all__ = ["export_triton", "model_config", "validate_config", "tensorrt_plan", "triton_dtype", "triton_dims", "PLATFORMS", "KV_MODES"]

log = logging.getLogger(__name__)

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
_PLATFORM_ALIASES = {
    "onnxruntime": "onnxruntime", "onnx": "onnxruntime", "ort": "onnxruntime", "onnxruntime_onnx": "onnxruntime",
    "tensorrt": "tensorrt", "trt": "tensorrt", "tensorrt_plan": "tensorrt",
}
KV_MODES = ("explicit", "implicit")
VERSION = "1"  # Triton model version folder
TRT_SUFFIX = "_trt"
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
SEQUENCE_IDLE_US = 60_000_000  # implicit KV: a sequence idle this long (60 s) is dropped and its cache freed

TRITON_DTYPES = {
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL",
    "float32": "TYPE_FP32", "fp32": "TYPE_FP32", "float": "TYPE_FP32",
    "float16": "TYPE_FP16", "fp16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16", "bf16": "TYPE_BF16",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

NO_PLAN_HINT = ("build one with `steerc compile MODEL -o ENGINE --backend tensorrt --device cuda` on a machine with an NVIDIA GPU and TensorRT, "
                "or export only --platform onnxruntime")


def triton_dtype(dtype: str) -> str:
    """Triton's ``DataType`` name (``TYPE_FP32`` …) for a manifest dtype (``float32`` …)."""
    try:
        return TRITON_DTYPES[str(dtype).lower()]
    except KeyError:
        raise EngineError(f"tensor dtype {dtype!r} has no Triton equivalent known to steerc (known: {', '.join(sorted(set(TRITON_DTYPES)))})") from None


def triton_dims(dims: Iterable[str | int]) -> list[int]:
    """Manifest dims -> Triton dims: named (dynamic) dims become -1, fixed ones stay."""
    out = []
    for d in dims:
        if isinstance(d, str):
            out.append(-1)
        elif isinstance(d, int) and d >= 1:
            out.append(int(d))
        else:
            raise EngineError(f"tensor dim {d!r} is neither a dimension name nor a size >= 1; the engine manifest is corrupt")
    return out


def _text(value: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(c) < 0x20 for c in value):
        raise EngineError(f"name {value!r} contains control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: Iterable[Any]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def parse_platforms(platforms: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (every platform the engine has) or a list of ``onnxruntime`` / ``tensorrt``;
    accepts a comma-separated string and the Triton platform names."""
    if platforms is None:
        return None
    items = platforms.split(",") if isinstance(platforms, str) else list(platforms)
    wanted: list[str] = []
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        if key not in _PLATFORM_ALIASES:
            raise SteercError(f"unknown platform {item!r}: choose onnxruntime and/or tensorrt (comma-separated)")
        if _PLATFORM_ALIASES[key] not in wanted:
            wanted.append(_PLATFORM_ALIASES[key])
    if not wanted:
        raise SteercError("no platform given: choose onnxruntime and/or tensorrt (comma-separated)")
    return wanted


def _inside(folder: Path, rel: str) -> Path | None:
    path = (folder / rel).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def tensorrt_plan(engine: Path, manifest: dict) -> Path | None:
    """The engine's TensorRT plan file (``backends.tensorrt.plan``), or ``None`` when it has none.
    A plan the manifest names but the folder lacks is a broken engine: :class:`EngineError`."""
    rel = ((manifest.get("backends") or {}).get("tensorrt") or {}).get("plan")
    if not rel:
        return None
    path = _inside(Path(engine), str(rel))
    if path is None or not path.is_file():
        raise EngineError(f"engine {engine} names the TensorRT plan {rel!r} in its manifest but the file is not in the folder; "
                          "rebuild the engine with --force")
    return path


def _kv_pairs(inputs: list[dict], outputs: list[dict]) -> list[tuple[dict, dict]]:
    """(``past_key_values.X`` input, ``present.X`` output) pairs, in output order; the contract
    must pair every cache input with an output and vice versa."""
    past = {s["name"][len(PAST_PREFIX):]: s for s in inputs if s["name"].startswith(PAST_PREFIX)}
    present = {s["name"][len(PRESENT_PREFIX):]: s for s in outputs if s["name"].startswith(PRESENT_PREFIX)}
    if set(past) != set(present):
        odd = sorted({PAST_PREFIX + k for k in set(past) - set(present)} | {PRESENT_PREFIX + k for k in set(present) - set(past)})
        raise EngineError(f"the engine's KV tensors do not pair up ({', '.join(odd[:4])} …): implicit KV needs a present.X output for every past_key_values.X input; "
                          "use --kv explicit")
    pairs = []
    for key, out in present.items():
        inp = past[key]
        if triton_dtype(inp["dtype"]) != triton_dtype(out["dtype"]):
            raise EngineError(f"{inp['name']} is {inp['dtype']} but {out['name']} is {out['dtype']}: Triton state needs one dtype; use --kv explicit")
        pairs.append((inp, out))
    return pairs


def _initial_dims(spec: dict) -> list[int]:
    """Fixed dims of an empty cache: batch 1 (one sequence), zero past tokens."""
    dims = []
    for d in spec["dims"]:
        if d == "batch_size":
            dims.append(1)
        elif d == "past_sequence_length":
            dims.append(0)
        elif isinstance(d, int):
            dims.append(d)
        else:
            raise EngineError(f"{spec['name']} has the dynamic dim {d!r}; implicit KV knows only batch_size and past_sequence_length: use --kv explicit")
    if 0 not in dims:
        raise EngineError(f"{spec['name']} has no past_sequence_length dim; implicit KV cannot start it empty: use --kv explicit")
    return dims


def _tensor_block(key: str, specs: list[dict]) -> list[str]:
    if not specs:
        return []
    entries = []
    for spec in specs:
        entries.append("\n".join([
            "  {",
            f"    name: {_text(spec['name'])}",
            f"    data_type: {triton_dtype(spec['dtype'])}",
            f"    dims: {_list(triton_dims(spec['dims']))}  # {_list(spec['dims'])}",
            "  }",
        ]))
    return [f"{key} [", ",\n".join(entries), "]"]


def model_config(manifest: dict, name: str, platform: str = "onnxruntime", kv: str = "explicit", *, source: str | None = None,
                 profiles: list[dict] | None = None, inputs: list[dict] | None = None, outputs: list[dict] | None = None) -> str:
    """The ``config.pbtxt`` text of one model (``platform`` is ``onnxruntime`` or ``tensorrt``)."""
    if kv not in KV_MODES:
        raise SteercError(f"unknown KV mode {kv!r}: choose explicit or implicit")
    inputs = list(inputs if inputs is not None else manifest["inputs"])
    outputs = list(outputs if outputs is not None else manifest["outputs"])
    pairs = _kv_pairs(inputs, outputs) if kv == "implicit" else []
    state_names = {s["name"] for pair in pairs for s in pair}
    g = manifest.get("geometry", {})
    lines = [
        f"# Written by `steerc export-triton`{' from ' + source if source else ''}: steerc engine format {manifest.get('format_version')}, "
        f"steerc {manifest.get('steerc_version', '?')}.",
        f"# {manifest.get('architecture', '?')}, {manifest.get('dtype', '?')}, {g.get('num_layers', '?')} layers, {g.get('num_heads', '?')} heads, "
        f"{g.get('num_kv_heads', '?')} kv heads; KV cache {kv}.",
        f"# Limits Triton does not enforce: past_sequence_length + sequence_length <= {manifest.get('max_seq_len', '?')} tokens, "
        f"batch_size <= {manifest.get('max_batch', '?')}.",
        "# steer_bias [batch, layers, heads, past+new]: additive log-space bias on attention logits over key positions",
        "# (per layer and query head, broadcast over query rows); zeros = the unsteered model, log(alpha) down-weights a key.",
        f"name: {_text(name)}",
        f"platform: {_text(PLATFORMS[platform])}",
        # max_batch_size 0: Triton does no batching of its own and each request's tensors reach the
        # model as sent, batch dim included (-1 in dims). A request is one decoder step of a batch
        # whose rows share one past length (left padding in attention_mask handles ragged prompts).
        # Triton's batchers stack independent requests along dim 0, which needs every other dim to
        # match, but requests at different steps differ in sequence_length / past_sequence_length
        # and KV caches of different lengths cannot be stacked. So clients batch, Triton does not;
        # the dims keep the graph's full rank, which the onnxruntime and TensorRT backends check.
        "max_batch_size: 0",
    ]
    lines += _tensor_block("input", [s for s in inputs if s["name"] not in state_names])
    lines += _tensor_block("output", [s for s in outputs if s["name"] not in state_names])
    if pairs:
        states = []
        for inp, out in pairs:
            dtype = triton_dtype(inp["dtype"])
            states.append("\n".join([
                "    {",
                f"      input_name: {_text(inp['name'])}",
                f"      output_name: {_text(out['name'])}",
                f"      data_type: {dtype}",
                f"      dims: {_list(triton_dims(inp['dims']))}  # {_list(inp['dims'])}",
                "      initial_state: {",
                f"        name: {_text('empty ' + inp['name'])}",
                f"        data_type: {dtype}",
                f"        dims: {_list(_initial_dims(inp))}",
                "        zero_data: true",
                "      }",
                "    }",
            ]))
        lines += [
            "# Implicit KV: Triton keeps past_key_values.* per sequence (correlation id), feeding each request's",
            "# present.* back as the next request's past_key_values.*; a sequence starts from an empty cache",
            "# (batch 1, zero past tokens), so its first request is the prefill. Mark requests sequence_start /",
            "# sequence_end. No control inputs: the graph has none and needs none.",
            "sequence_batching {",
            f"  max_sequence_idle_microseconds: {SEQUENCE_IDLE_US}",
            "  oldest {",
            f"    max_candidate_sequences: {max(1, int(manifest.get('max_batch') or 1))}",
            "  }",
            "  state [",
            ",\n".join(states),
            "  ]",
            "}",
        ]
    if platform == "tensorrt" and profiles:
        names = ", ".join(f"{i} = {p.get('name', '?')}" for i, p in enumerate(profiles))
        lines += [
            f"# TensorRT optimization profiles ({names}): the backend uses only profile 0 unless told;",
            "# listing all lets each request run on the profile that fits its shapes.",
            "instance_group [",
            "  {",
            "    kind: KIND_GPU",
            f"    profile: {_list(_text(str(i)) for i in range(len(profiles)))}",
            "  }",
            "]",
        ]
    return "\n".join(lines) + "\n"


def validate_config(text: str, what: str = "config.pbtxt") -> bool:
    """Parse ``text`` with Triton's ``ModelConfig`` schema (``tritonclient[grpc]``); ``False``
    when tritonclient is not installed (nothing checked), an error when the text does not parse."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        log.debug("tritonclient[grpc] is not installed: %s not checked against Triton's ModelConfig schema", what)
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:  # a bug in model_config, not in the user's input
        raise RuntimeError(f"steerc wrote a {what} that Triton's ModelConfig schema rejects: {exc}") from exc
    return True


def _model_name(name: str | None, engine: Path) -> str:
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", engine.name).lstrip("._-") or "steerc"
    if not _NAME_RE.match(name):
        raise SteercError(f"invalid Triton model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def _check_target(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise EngineError(f"{folder} exists and is not a folder; remove it or choose another name with --name")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise EngineError(f"Triton model {folder} already exists and is not empty; pass --force to replace it, or choose another name with --name")
        if not (folder / "config.pbtxt").is_file():
            raise EngineError(f"{folder} is not empty and is not a Triton model (no config.pbtxt); refusing to replace it even with --force")


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` to ``dst`` (same filesystem), else copy it; returns which."""
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        return "copied"


def export_triton(engine: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None, platforms: str | Iterable[str] | None = None,
                  force: bool = False, kv: str = "explicit") -> dict:
    """Write the engine folder ``engine`` as model(s) of the Triton model repository ``repo``.

    ``platforms``: ``None`` for every platform the engine has (ONNX Runtime always, TensorRT when
    it has a plan), else ``onnxruntime`` and/or ``tensorrt``. ``kv``: ``explicit`` or ``implicit``
    (see the module docstring). Returns a summary: ``repo``, ``engine``, ``kv``, ``validated``
    (the configs were parsed with Triton's schema), ``models`` (name, platform, path, files and how
    each was placed, tensor counts) and ``command`` (a tritonserver line).
    """
    if kv not in KV_MODES:
        raise SteercError(f"unknown KV mode {kv!r}: choose explicit or implicit")
    wanted = parse_platforms(platforms)
    engine = Path(engine).expanduser().absolute()
    manifest = read_manifest(engine)
    backend = manifest.get("backend") or {}
    if backend.get("name") != "onnx" or not backend.get("model"):
        raise EngineError(f"engine {engine} has no ONNX model in its manifest (backend {backend.get('name')!r}); recompile it with `steerc compile`")
    onnx_files = [backend["model"]] + ([backend["data"]] if backend.get("data") else [])
    for rel in onnx_files:
        if _inside(engine, rel) is None or not (engine / rel).is_file():
            raise EngineError(f"engine {engine} is incomplete: {rel} is missing; recompile it with --force")
    plan = tensorrt_plan(engine, manifest)
    if wanted is None:
        wanted = ["onnxruntime"] + (["tensorrt"] if plan is not None else [])
    if "tensorrt" in wanted and plan is None:
        extra = ""
        if (manifest.get("tensorrt") or {}).get("trtexec"):
            extra = f" (its {manifest['tensorrt']['trtexec']} builds a plan with trtexec, but only a plan recorded in steerc.json is exported)"
        raise EngineError(f"engine {engine} has no TensorRT plan{extra}: {NO_PLAN_HINT}")
    name = _model_name(name, engine)
    repo = Path(repo).expanduser().absolute()
    if repo.exists() and not repo.is_dir():
        raise EngineError(f"model repository {repo} exists and is not a folder; choose another REPO")
    if repo.resolve().is_relative_to(engine.resolve()):
        raise EngineError(f"model repository {repo} is inside the engine folder {engine}; choose a REPO outside it")

    trt = (manifest.get("backends") or {}).get("tensorrt") or {}
    jobs = []  # (model name, platform, [(relative source in engine, name in 1/)], config kwargs)
    if "onnxruntime" in wanted:
        jobs.append((name, "onnxruntime", [(rel, Path(rel).name) for rel in onnx_files], {}))
    if "tensorrt" in wanted:
        jobs.append((name + TRT_SUFFIX, "tensorrt", [(plan.relative_to(engine.resolve()).as_posix(), "model.plan")],
                     {"profiles": trt.get("profiles") or [], "inputs": trt.get("inputs"), "outputs": trt.get("outputs")}))
    for model_name, _, _, _ in jobs:
        _check_target(repo / model_name, force)

    # Every config is written and checked before any file is placed.
    configs = {}
    validated = True
    for model_name, platform, _, extra in jobs:
        text = model_config(manifest, model_name, platform, kv, source=str(engine), **extra)
        validated = validate_config(text, f"{model_name}/config.pbtxt") and validated
        configs[model_name] = text

    repo.mkdir(parents=True, exist_ok=True)
    built: list[tuple[Path, Path]] = []
    models = []
    try:
        for model_name, platform, files, extra in jobs:
            tmp = Path(tempfile.mkdtemp(prefix=f".{model_name}.partial-", dir=repo))
            built.append((tmp, repo / model_name))
            os.chmod(tmp, 0o755)
            (tmp / VERSION).mkdir()
            placed = {}
            for rel, dst_name in files:
                placed[f"{VERSION}/{dst_name}"] = _link_or_copy(engine / rel, tmp / VERSION / dst_name)
            (tmp / "config.pbtxt").write_text(configs[model_name], encoding="utf-8")
            os.chmod(tmp / "config.pbtxt", 0o644)
            n_state = len(_kv_pairs(extra.get("inputs") or manifest["inputs"], extra.get("outputs") or manifest["outputs"])) if kv == "implicit" else 0
            models.append({"name": model_name, "platform": PLATFORMS[platform], "path": str(repo / model_name),
                           "config": str(repo / model_name / "config.pbtxt"), "files": placed, "states": n_state})
        for tmp, target in built:
            install_folder(tmp, target)
            log.info("Triton model %s written", target)
    except BaseException:
        for tmp, _ in built:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "engine": str(engine),
        "repo": str(repo),
        "kv": kv,
        "validated": validated,
        "models": models,
        "command": f"tritonserver --model-repository={repo}",
    }
