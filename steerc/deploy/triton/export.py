"""``export_triton``: a steerc engine folder -> models in a Triton Inference Server model repository.

Every engine gives a model ``NAME`` for Triton's ``onnxruntime_onnx`` platform (``config.pbtxt``,
``1/model.onnx`` and its external weights file) and, when it has an analysis graph, ``NAME_analysis``
(its ``analysis.onnx`` as ``1/model.onnx``, the same weights file beside it: context preparation,
``attn_importance``); an engine whose manifest records a TensorRT plan
also gives ``NAME_trt`` for ``tensorrt_plan`` (``1/model.plan``; see
:mod:`~steerc.deploy.triton.platforms`). Every config is written and checked
(:mod:`~steerc.deploy.triton.config`) before any file is placed
(:mod:`~steerc.deploy.triton.repository`); an existing model is replaced only with ``force``.
The KV cache is ``explicit`` (the client's) or ``implicit`` (Triton's sequence state, see
:mod:`~steerc.deploy.triton.sequence_state`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from steerc.deploy.triton.config import model_config, validate_config
from steerc.deploy.triton.platforms import NO_PLAN_HINT, PLATFORMS, TRT_SUFFIX, inside, parse_platforms, tensorrt_plan
from steerc.deploy.triton.repository import ModelFolder, check_target, model_name, write_models
from steerc.deploy.triton.sequence_state import KV_MODES, kv_pairs
from steerc.engine_format import read_manifest
from steerc.errors import EngineError, SteercError

__all__ = ["export_triton", "ANALYSIS_SUFFIX"]

ANALYSIS_SUFFIX = "_analysis"  # the analysis graph's model: NAME_analysis


def export_triton(engine: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None, platforms: str | Iterable[str] | None = None,
                  force: bool = False, kv: str = "explicit") -> dict:
    """Write the engine folder ``engine`` as model(s) of the Triton model repository ``repo``.

    ``platforms``: ``None`` for every platform the engine has (ONNX Runtime always, TensorRT when
    it has a plan), else ``onnxruntime`` and/or ``tensorrt``. ``kv``: ``explicit`` or ``implicit``
    (see :mod:`~steerc.deploy.triton.sequence_state`). Returns a summary: ``repo``, ``engine``,
    ``kv``, ``validated`` (the configs were parsed with Triton's schema), ``models`` (name,
    platform, path, files and how each was placed, tensor counts) and ``command`` (a
    tritonserver line).
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
        if inside(engine, rel) is None or not (engine / rel).is_file():
            raise EngineError(f"engine {engine} is incomplete: {rel} is missing; recompile it with --force")
    plan = tensorrt_plan(engine, manifest)
    if wanted is None:
        wanted = ["onnxruntime"] + (["tensorrt"] if plan is not None else [])
    if "tensorrt" in wanted and plan is None:
        extra = ""
        if (manifest.get("tensorrt") or {}).get("trtexec"):
            extra = f" (its {manifest['tensorrt']['trtexec']} builds a plan with trtexec, but only a plan recorded in steerc.json is exported)"
        raise EngineError(f"engine {engine} has no TensorRT plan{extra}: {NO_PLAN_HINT}")
    name = model_name(name, engine)
    repo = Path(repo).expanduser().absolute()
    if repo.exists() and not repo.is_dir():
        raise EngineError(f"model repository {repo} exists and is not a folder; choose another REPO")
    if repo.resolve().is_relative_to(engine.resolve()):
        raise EngineError(f"model repository {repo} is inside the engine folder {engine}; choose a REPO outside it")

    trt = (manifest.get("backends") or {}).get("tensorrt") or {}
    jobs = []  # (model name, platform, [(relative source in engine, name in 1/)], config kwargs)
    if "onnxruntime" in wanted:
        jobs.append((name, "onnxruntime", [(rel, Path(rel).name) for rel in onnx_files], {}))
        analysis = manifest.get("analysis") or {}
        if analysis.get("model"):  # context preparation (attn_importance): ONNX Runtime, beside the step model
            files = [analysis["model"]] + ([analysis["data"]] if analysis.get("data") else [])
            for rel in files:
                if inside(engine, rel) is None or not (engine / rel).is_file():
                    raise EngineError(f"engine {engine} is incomplete: {rel} is missing; recompile it with --force")
            jobs.append((name + ANALYSIS_SUFFIX, "onnxruntime", [(files[0], "model.onnx")] + [(rel, Path(rel).name) for rel in files[1:]],
                         {"outputs": analysis["outputs"]}))
    if "tensorrt" in wanted:
        jobs.append((name + TRT_SUFFIX, "tensorrt", [(plan.relative_to(engine.resolve()).as_posix(), "model.plan")],
                     {"profiles": trt.get("profiles") or [], "inputs": trt.get("inputs"), "outputs": trt.get("outputs")}))
    for job_name, _, _, _ in jobs:
        check_target(repo / job_name, force)

    # Every config is written and checked before any file is placed.
    folders = []
    validated = True
    for job_name, platform, files, extra in jobs:
        text = model_config(manifest, job_name, platform, kv, source=str(engine), **extra)
        validated = validate_config(text, f"{job_name}/config.pbtxt") and validated
        folders.append(ModelFolder(job_name, text, tuple(files)))
    states = [len(kv_pairs(extra.get("inputs") or manifest["inputs"], extra.get("outputs") or manifest["outputs"])) if kv == "implicit" else 0
              for _, _, _, extra in jobs]

    placed = write_models(repo, engine, folders)
    models = [{"name": job_name, "platform": PLATFORMS[platform], "path": str(repo / job_name), "config": str(repo / job_name / "config.pbtxt"),
               "files": files, "states": n_state}
              for (job_name, platform, _, _), files, n_state in zip(jobs, placed, states)]
    return {
        "engine": str(engine),
        "repo": str(repo),
        "kv": kv,
        "validated": validated,
        "models": models,
        "command": f"tritonserver --model-repository={repo}",
    }
