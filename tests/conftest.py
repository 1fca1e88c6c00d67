import functools
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A compile exports its analysis graph in a forked child (steerc/backends/onnx/forked.py). Forking
# this test process, which by then holds other threads (ONNX Runtime pools, the browser driver,
# store clients), can leave the child waiting forever on a lock one of them held (it hung a CI run),
# so in-process compiles here export serially; tests/backends/onnx/test_forked.py tests the fork.
os.environ.setdefault("STEERC_PARALLEL_EXPORT", "0")

from steps import TEST_SETTINGS, assert_step_close, steerable, step_inputs  # noqa: E402,F401  (re-exported for the tests)
from tiny_models import tiny_model  # noqa: E402

from steerc.settings import CompileSettings  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # GGUF conversions are shared across tests of a session but never touch the user's cache.
    monkeypatch.setenv("STEERC_CACHE", os.environ.get("STEERC_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "steerc-cache"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny Llama checkpoint folder (config + safetensors, no tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    return folder


# The default model's compiles the session needs (fixture name -> extra `steerc compile` arguments).
# They take minutes each, so they start as the session does, one after the other in a background
# thread, and run beside the tests that come before their first user.
DEFAULT_COMPILES = {"default_engine": (), "default_tensorrt_compile": ("--target", "tensorrt")}


@pytest.fixture(scope="session", autouse=True)
def _default_compiles(request, tmp_path_factory):
    """name -> Future of (engine folder, CompletedProcess) for each compile a collected test uses."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "STEERC_CACHE": os.environ.get("STEERC_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "steerc-cache")}
    running: list[subprocess.Popen] = []

    def compile_(name: str, args: tuple[str, ...]):
        out = tmp_path_factory.mktemp(name) / "smollm2"
        proc = subprocess.Popen([sys.executable, "-m", "steerc.cli", "compile", "-o", str(out), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
        running.append(proc)
        stdout, stderr = proc.communicate(timeout=1500)
        return out, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    used = {name for item in request.session.items for name in getattr(item, "fixturenames", ()) if name in DEFAULT_COMPILES}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="default-compile")
    futures = _LazyCompiles(pool, compile_)
    for name in DEFAULT_COMPILES:  # in this order: the second finds the first's GGUF conversion in the cache
        if name in used:
            futures[name]
    yield futures
    for proc in running:  # a session that stopped early does not wait for a compile nobody needs
        if proc.poll() is None:
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


class _LazyCompiles(dict):
    """Futures of the default compiles, submitted when first asked for."""

    def __init__(self, pool, compile_):
        super().__init__()
        self._pool, self._compile = pool, compile_

    def __missing__(self, name):
        future = self[name] = self._pool.submit(self._compile, name, DEFAULT_COMPILES[name])
        return future


@pytest.fixture(scope="session")
def default_engine(_default_compiles):
    """The real default model compiled once per session with `steerc compile` (minutes)."""
    out, result = _default_compiles["default_engine"].result()
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="session")
def default_tensorrt_compile(_default_compiles):
    """The real default model compiled with `steerc compile --target tensorrt` (fp16): the engine
    folder and the compile's CompletedProcess (a test asserts on it)."""
    return _default_compiles["default_tensorrt_compile"].result()


@pytest.fixture(scope="session")
def default_hf():
    """The default model in transformers (``load_model(None)``: model and tokenizer), loaded once
    per session for the tests that compare the default engine with it."""
    from steerc.models import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def compiled_engine(tmp_path_factory):
    """``compiled_engine(checkpoint_folder, **settings)``: the engine folder of ``compile_engine``
    with ``CompileSettings(**settings)``, compiled once per session for each (checkpoint, settings).
    Shared: a test that changes the folder copies it first (``read_manifest`` gives the manifest
    ``compile_engine`` returned)."""
    from steerc.build import compile_engine

    built = {}

    def get(folder, **settings) -> Path:
        key = (str(folder), CompileSettings(**settings))
        if key not in built:
            out = tmp_path_factory.mktemp("compiled") / "engine"
            compile_engine(str(folder), out, key[1])
            built[key] = out
        return built[key]

    return get


@pytest.fixture(scope="session")
def exported_onnx(tmp_path_factory):
    """``exported_onnx(arch, opset=23, dtype="fp32")``: a tiny architecture's step graph
    (``onnx_steps.steerable_in``, TEST_SETTINGS) exported with ``export_onnx`` once per session; the
    path of its model.onnx (weights in model.onnx.data beside it). Shared: copy the folder before changing it."""
    from onnx_steps import steerable_in

    from steerc.backends.onnx import export_onnx

    @functools.cache
    def export(arch: str, opset: int, dtype: str) -> Path:
        sp = steerable_in(arch, dtype)
        folder = tmp_path_factory.mktemp(f"{arch}-{dtype}-{opset}")
        return export_onnx(sp.program, folder, sp.inputs, sp.outputs, opset)

    def get(arch: str, opset: int = 23, dtype: str = "fp32") -> Path:
        return export(arch, opset, dtype)

    return get


@pytest.fixture(scope="session")
def tiny_engine(tiny_folder, compiled_engine):
    """The tiny Llama compiled into an engine folder (no tokenizer)."""
    return compiled_engine(tiny_folder, max_seq_len=64, max_batch=4)


@pytest.fixture(scope="session")
def tiny_text_folder(tmp_path_factory):
    """A tiny random Llama checkpoint with the default model's tokenizer (and chat template)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerc.models.loading import _default_gguf

    gguf = _default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    folder = tmp_path_factory.mktemp("tiny-text")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_engine(tiny_text_folder, tmp_path_factory):
    """The tiny text model compiled: text-level runtime tests (eval, steering over text
    contexts) without the real weights."""
    from steerc.build import compile_engine

    out = tmp_path_factory.mktemp("tiny-text-engine") / "engine"
    compile_engine(str(tiny_text_folder), out, CompileSettings(max_seq_len=384, max_batch=8))
    return out


@pytest.fixture(scope="session")
def aoti_text_engine(tiny_text_folder, tmp_path_factory):
    """``tiny_text_folder`` compiled with ``steerc compile --backend aoti``, run as a user runs it
    (an AOTInductor compile takes tens of seconds, so the CLI test and the backend tests share
    it): the engine folder and the compile's finished process (returncode, stdout, stderr)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("aoti-text") / "engine"
    result = subprocess.run([sys.executable, "-m", "steerc.cli", "compile", str(tiny_text_folder), "-o", str(out), "--backend", "aoti",
                             "--max-seq-len", "384", "--max-batch", "4"], capture_output=True, text=True, timeout=1200)
    return out, result


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port (tests/redis_server.py)."""
    from redis_server import Redis

    r = Redis(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()
