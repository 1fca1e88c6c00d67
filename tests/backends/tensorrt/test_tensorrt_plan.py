"""TensorRT backend (``--backend torch-tensorrt``) and the AOTInductor CUDA path.

The CPU tests run everywhere: without torch-tensorrt, TensorRT or CUDA a compile fails with one
line saying what to install, and leaves nothing behind; an engine without a plan says how to
build one. The ``gpu`` tests need CUDA (and torch-tensorrt + TensorRT for the plan) and skip
with a one-line reason otherwise.
"""

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
from steps import assert_step_close, step_inputs

from tiny_models import tiny_model

from steerc.backends.tensorrt.plan import plan_shape_profile, require_tensorrt
from steerc.backends.tensorrt.runner import tensorrt_session
from steerc.capture.io_spec import DecoderGeometry, decoder_inputs
from steerc.cli import main
from steerc.engine_format import read_manifest
from steerc.errors import EngineError, MissingDependencyError
from steerc.settings import CompileSettings

MAX_SEQ_LEN, MAX_BATCH = 64, 4


def _leftovers(parent, name: str) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --- CPU: what a machine without TensorRT says --------------------------------------------------


@pytest.mark.parametrize("blocked", ["torch_tensorrt", "tensorrt"])
def test_compile_without_tensorrt_is_one_line(tiny_folder, tmp_path, capsys, monkeypatch, blocked):
    monkeypatch.setitem(sys.modules, blocked, None)  # not importable, whatever this machine has
    out = tmp_path / "engine"
    code = main(["compile", str(tiny_folder), "-o", str(out), "--backend", "tensorrt", "--device", "cuda"])
    assert code != 0
    err = _one_error_line(capsys)
    assert "pip install 'steerc[tensorrt]'" in err and "NVIDIA GPU" in err and blocked in err
    assert _leftovers(tmp_path, "engine") == []


def test_compile_without_cuda_is_one_line(tiny_folder, tmp_path, capsys, monkeypatch):
    for name in ("torch_tensorrt", "tensorrt"):  # "installed" (never imported: the CUDA check fails first)
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "engine"
    code = main(["compile", str(tiny_folder), "-o", str(out), "--backend", "tensorrt", "--device", "cuda"])
    assert code != 0
    err = _one_error_line(capsys)
    assert "no CUDA device" in err and "pip install 'steerc[tensorrt]'" in err
    assert _leftovers(tmp_path, "engine") == []


def test_compile_on_this_machine(tiny_folder, tmp_path, capsys):
    """The real environment: here (no TensorRT) one line; on a TensorRT machine see the gpu tests."""
    try:
        require_tensorrt()
    except MissingDependencyError:
        pass
    else:
        pytest.skip("torch-tensorrt, TensorRT and CUDA are all here: the gpu tests compile for real")
    out = tmp_path / "engine"
    assert main(["compile", str(tiny_folder), "-o", str(out), "--backend", "tensorrt", "--device", "cuda"]) == 2
    err = _one_error_line(capsys)
    assert err.startswith("steerc: error: --backend tensorrt needs torch-tensorrt 2.13 and TensorRT 11")
    assert _leftovers(tmp_path, "engine") == []


def test_compile_for_cpu_is_refused(tiny_folder, tmp_path, capsys):
    out = tmp_path / "engine"
    code = main(["compile", str(tiny_folder), "-o", str(out), "--backend", "tensorrt", "--device", "cpu"])
    assert code != 0
    err = _one_error_line(capsys)
    assert "--device cuda" in err
    assert _leftovers(tmp_path, "engine") == []


def test_settings_refuse_tensorrt_on_cpu():
    for name in ("tensorrt", "torch-tensorrt"):  # the old name is an alias
        with pytest.raises(ValueError, match="--device cuda"):
            CompileSettings(backend=name, device="cpu")
        assert CompileSettings(backend=name, device="cuda").device == "cuda"
    assert CompileSettings(backend="torch-tensorrt", device="cuda").backend == "tensorrt"


def test_compile_with_the_old_name_is_the_same_one_line(tiny_folder, tmp_path, capsys):
    """``--backend torch-tensorrt`` (the old compile-time name) still parses and means ``tensorrt``."""
    out = tmp_path / "engine"
    code = main(["compile", str(tiny_folder), "-o", str(out), "--backend", "torch-tensorrt", "--device", "cpu"])
    assert code != 0
    assert "backend 'tensorrt' builds a TensorRT plan" in _one_error_line(capsys)
    assert _leftovers(tmp_path, "engine") == []


def test_session_without_plan_names_the_fix(tiny_engine):
    manifest = read_manifest(tiny_engine)
    with pytest.raises(EngineError, match=r"no TensorRT plan.*--backend tensorrt --device cuda"):
        tensorrt_session(tiny_engine, manifest, "cuda")
    from steerc.runtime import Engine

    with pytest.raises(EngineError, match="no TensorRT plan"):
        Engine.load(tiny_engine, device="cuda", backend="tensorrt")


def test_session_refuses_cpu_and_a_missing_plan(tiny_engine):
    manifest = {**read_manifest(tiny_engine), "backends": {"tensorrt": {"plan": "model.plan", "device": "cuda"}}}
    with pytest.raises(EngineError, match="--device cuda"):
        tensorrt_session(tiny_engine, manifest, "cpu")
    with pytest.raises(EngineError, match="model.plan is missing"):
        tensorrt_session(tiny_engine, manifest, "cuda")


def test_plan_profile_is_the_union_of_prefill_and_decode():
    g = DecoderGeometry(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, vocab_size=128)
    inputs = decoder_inputs(g, "float16")
    profile = plan_shape_profile(inputs, MAX_BATCH, MAX_SEQ_LEN)
    assert profile["dims"] == {
        "batch_size": [1, 1, MAX_BATCH],
        "sequence_length": [1, 1, MAX_SEQ_LEN],  # prefill's range, decode's opt (S = 1)
        "past_sequence_length": [0, MAX_SEQ_LEN // 4, MAX_SEQ_LEN - 1],  # a fresh prefill has P = 0
        "total_sequence_length": [1, MAX_SEQ_LEN // 4 + 1, MAX_SEQ_LEN],
    }
    assert list(profile["shapes"]) == [s.name for s in inputs]
    assert profile["shapes"]["steer_bias"] == {"min": [1, 2, 4, 1], "opt": [1, 2, 4, 17], "max": [MAX_BATCH, 2, 4, MAX_SEQ_LEN]}
    assert profile["shapes"]["past_key_values.0.key"]["min"] == [1, 2, 0, 16]


# --- GPU ------------------------------------------------------------------------------------------


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"needs CUDA; this torch ({torch.__version__}) sees no GPU")


def _need_tensorrt() -> None:
    _need_cuda()
    pytest.importorskip("torch_tensorrt", reason="needs torch-tensorrt 2.13 (pip install 'steerc[tensorrt]')")
    pytest.importorskip("tensorrt", reason="needs TensorRT 11 (pip install 'steerc[tensorrt]')")


DTYPES = {"fp16": (torch.float16, 1e-2), "fp32": (torch.float32, 1e-3)}  # tiny llama logits are ~0.5; fp16 rounding ~5e-4 there


def _compile(tiny_folder, out, *extra) -> None:
    code = main(["compile", str(tiny_folder), "-o", str(out), "--max-seq-len", str(MAX_SEQ_LEN), "--max-batch", str(MAX_BATCH), *extra])
    assert code == 0, f"steerc compile {' '.join(extra)} failed"


@pytest.fixture(scope="module", params=list(DTYPES))
def plan_engine(request, tiny_folder, tmp_path_factory):
    _need_tensorrt()
    out = tmp_path_factory.mktemp(f"trt-{request.param}") / "engine"
    _compile(tiny_folder, out, "--backend", "tensorrt", "--device", "cuda", "--dtype", request.param)
    return request.param, out


@pytest.fixture(scope="module")
def aoti_cuda_engine(tiny_folder, tmp_path_factory):
    _need_cuda()
    out = tmp_path_factory.mktemp("aoti-cuda") / "engine"
    _compile(tiny_folder, out, "--backend", "aoti", "--device", "cuda")
    return out


def _steered_calls(g, dtype):
    """A steered fresh prefill (P = 0: where a causal rewrite would drop the bias) and a steered
    decode step after it: ``[(ids, pos, mask, kv, bias, S)]`` on the host, KV in ``dtype``."""
    calls = []
    for batch, past, seq, seed in ((2, 0, 6, 1), (2, 6, 1, 2)):
        ids, pos, mask, kv = step_inputs(g, batch, past, seq, seed=seed)
        bias = 2.0 * torch.randn(batch, g.num_layers, g.num_heads, past + seq, generator=torch.Generator().manual_seed(seed))
        calls.append((ids, pos, mask, [t.to(dtype) for t in kv], bias, seq))
    return calls


def _check_parity(session, folder, dtype, atol):
    manifest = read_manifest(folder)
    g = DecoderGeometry(**manifest["geometry"])
    model = tiny_model("llama")  # tiny_folder holds it; the fp32 reference is fed the same (dtype-rounded) cache
    names = [s["name"] for s in manifest["inputs"]]
    for ids, pos, mask, kv, bias, seq in _steered_calls(g, dtype):
        feed = dict(zip(names, [t.numpy() for t in (ids, pos, mask, *kv, bias)]))
        logits, *present = session.run(None, feed)
        kv = [t.float() for t in kv]
        ref_logits, ref_present = _reference(model, ids, pos, mask, kv, bias)
        got = (torch.from_numpy(logits).float(), [torch.from_numpy(p).float() for p in present])
        assert_step_close(got, (ref_logits.float(), [p.float() for p in ref_present]), mask, seq, atol=atol)
        unsteered = _reference(model, ids, pos, mask, kv, None)[0].float()
        assert (unsteered - ref_logits.float()).abs().max() > 10 * atol, "the bias must visibly change the logits for this check to mean anything"


def _reference(model, ids, pos, mask, kv, bias):
    from steerc.reference import reference_step

    return reference_step(model, ids, pos, mask, kv, bias)


def _hf_greedy(model, ids: torch.Tensor, new: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(new):
            token = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(token))
            ids = torch.cat([ids, token], 1)
    return out


def _device_tokens(step, folder, prompt, new, dtype):
    from steerc.backends.torch_session import greedy_decode_on_device

    g = DecoderGeometry(**read_manifest(folder)["geometry"])
    tokens, ttft, per_step = greedy_decode_on_device(step, prompt.cuda(), g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, new, dtype)
    assert ttft > 0 and per_step > 0
    return tokens.tolist()


def _engine_tokens(folder, prompt, new, **load) -> list[int]:
    from steerc.runtime import Engine, generate

    engine = Engine.load(folder, **load)
    return [int(t[0]) for t in generate(engine, prompt.numpy(), max_new_tokens=new, stop_token_ids=set())]


PROMPT = torch.tensor([[5, 17, 99, 3, 42, 8, 61, 7]])
NEW = 8


@pytest.mark.gpu
def test_plan_manifest(plan_engine):
    name, folder = plan_engine
    entry = read_manifest(folder)["backends"]["tensorrt"]
    assert entry["plan"] == "model.plan" and (folder / "model.plan").stat().st_size > 0
    assert entry["device"] == "cuda" and entry["attn_bias_is_causal"] is False and entry["precision"] == name
    assert len(entry["profiles"]) == 1 and entry["profiles"][0]["dims"]["past_sequence_length"][0] == 0


@pytest.mark.gpu
def test_plan_parity_with_eager_reference(plan_engine):
    name, folder = plan_engine
    dtype, atol = DTYPES[name]
    _check_parity(tensorrt_session(folder, read_manifest(folder), "cuda"), folder, dtype, atol)


@pytest.mark.gpu
def test_plan_greedy_tokens(plan_engine):
    name, folder = plan_engine
    dtype, _ = DTYPES[name]
    session = tensorrt_session(folder, read_manifest(folder), "cuda")
    on_device = _device_tokens(session.step, folder, PROMPT, NEW, dtype)
    through_engine = _engine_tokens(folder, PROMPT, NEW, device="cuda", backend="tensorrt")  # the Engine interface: host KV cache
    assert on_device == through_engine
    if name == "fp32":  # fp16 near-ties of a random tiny model may break differently in other kernels
        assert on_device == _engine_tokens(folder, PROMPT, NEW)  # the ONNX engine (ONNX Runtime, CPU)
        assert on_device == _hf_greedy(tiny_model("llama"), PROMPT, NEW)


@pytest.mark.gpu
def test_plan_rejects_wrong_dtype(plan_engine):
    name, folder = plan_engine
    session = tensorrt_session(folder, read_manifest(folder), "cuda")
    g = DecoderGeometry(**read_manifest(folder)["geometry"])
    ids, pos, mask, kv = (t.cuda() if isinstance(t, torch.Tensor) else [x.cuda() for x in t] for t in step_inputs(g, 1, 0, 3))
    wrong = torch.float32 if name == "fp16" else torch.float16
    bias = torch.zeros(1, g.num_layers, g.num_heads, 3, device="cuda")
    with pytest.raises(TypeError, match="past_key_values.0.key must be"):
        session.step(ids, pos, mask, [t.to(wrong) for t in kv], bias)


@pytest.mark.gpu
def test_aoti_cuda_parity_and_tokens(aoti_cuda_engine):
    from steerc.backends.aoti import aoti_session

    folder = aoti_cuda_engine
    session = aoti_session(folder, read_manifest(folder), "cuda")
    _check_parity(session, folder, torch.float32, 1e-3)
    on_device = _device_tokens(session.step, folder, PROMPT, NEW, torch.float32)
    assert on_device == _hf_greedy(tiny_model("llama"), PROMPT, NEW)
    assert on_device == _engine_tokens(folder, PROMPT, NEW, device="cuda", backend="aoti")
    assert np.array_equal(on_device, _engine_tokens(folder, PROMPT, NEW))
