"""Tiny step graphs (fp32 and fp16) and their ONNX Runtime results, shared by the ONNX-pass and TensorRT-checker
tests (their exports: the ``exported_onnx`` fixture of tests/conftest.py)."""

import functools
import shutil

import numpy as np
import torch
from steps import TEST_SETTINGS, step_inputs, steerable

from tiny_models import tiny_model

from steerc.backends.onnx import create_session
from steerc.build.steerable import capture_steerable
from steerc.settings import CompileSettings

# (batch, past, new tokens, left padding of row 0): a prefill and a decode-shaped call
CALLS = {"prefill": (2, 0, 5, 1), "decode": (2, 6, 1, 2)}


@functools.lru_cache(maxsize=None)
def steerable_in(arch: str, dtype: str):
    if dtype == "fp32":
        return steerable(arch)[1]
    model = tiny_model(arch).half()
    return capture_steerable(model, CompileSettings(dtype="fp16", max_seq_len=TEST_SETTINGS.max_seq_len, max_batch=TEST_SETTINGS.max_batch, importance=False))


def step_feed(arch: str, dtype: str, call: str, seed: int = 3) -> dict:
    sp = steerable_in(arch, dtype)
    g = sp.geometry
    B, P, S, pad = CALLS[call]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad, seed=seed)
    bias = 2.0 * torch.randn(B, g.num_layers, g.num_heads, P + S, generator=torch.Generator().manual_seed(seed + 1))
    return {s.name: t.numpy().astype(s.dtype) for s, t in zip(sp.inputs, (ids, pos, mask, *kv, bias))}  # the engine contract's dtypes


def run(path, feed):
    session = create_session(path)
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in wanted})


def assert_outputs_equal(got, ref, dtype):
    atol = 1e-3 if dtype == "fp16" else 1e-6
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), atol=atol, rtol=0, equal_nan=True)


def rewritten_copies(source, rewrite, tmp_path_factory, tag):
    """``get(arch)``: a private copy of the folder of ``source(arch)``'s graph, ``rewrite`` run on the
    copy once per arch; ``(path, rewrite's report)``."""
    made = {}

    def get(arch):
        if arch not in made:
            src = source(arch)
            dest = tmp_path_factory.mktemp(f"{arch}-{tag}") / "engine"
            shutil.copytree(src.parent, dest)
            made[arch] = (dest / src.name, rewrite(dest / src.name))
        return made[arch]

    return get
