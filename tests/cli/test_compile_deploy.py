"""``steerc compile --target tensorrt`` and ``--backend aoti`` as a user runs them, then
``check-tensorrt``, ``inspect`` and the runtime commands with ``--backend aoti``."""

import json
import os

import pytest
import torch
from test_cli import steerc
from test_run_cli import SUPER_BOWL


def test_target_tensorrt_end_to_end(tiny_text_folder, tmp_path):
    out = tmp_path / "trt"
    result = steerc("compile", str(tiny_text_folder), "-o", str(out), "--target", "tensorrt", "--max-seq-len", "128", "--max-batch", "2")
    assert result.returncode == 0, result.stderr
    assert "fp16" in result.stdout and "model.onnx and analysis.onnx pass the TensorRT parser rules" in result.stdout
    manifest = json.loads((out / "steerc.json").read_text())
    assert manifest["dtype"] == "fp16" and manifest["settings"]["target"] == "tensorrt"
    assert [p["name"] for p in manifest["tensorrt"]["profiles"]] == ["prefill", "decode"]
    script = out / manifest["tensorrt"]["trtexec"]
    assert os.access(script, os.X_OK) and "--onnx=model.onnx" in script.read_text() and script.read_text().count("--maxShapes=") == 2
    check = steerc("check-tensorrt", str(out))
    assert check.returncode == 0 and "all 2 graphs pass (model.onnx, analysis.onnx)" in check.stdout, check.stdout + check.stderr
    assert not (out / "selector.onnx").exists()
    assert "tensorrt" in steerc("inspect", str(out)).stdout
    # The rewritten fp16 graph still answers on ONNX Runtime.
    gen = steerc("generate", str(out), "--prompt", "Hello", "--max-new-tokens", "4", "--no-stream")
    assert gen.returncode == 0, gen.stderr


def test_backend_aoti_end_to_end(aoti_text_engine, tmp_path):
    out, result = aoti_text_engine  # `steerc compile TINY -o OUT --backend aoti --max-seq-len 384 --max-batch 4` (tests/conftest.py)
    assert result.returncode == 0, result.stderr
    assert "model.pt2" in result.stdout and "AOTInductor vs eager" in result.stdout
    context = tmp_path / "context.txt"
    context.write_text(SUPER_BOWL)
    answers = {}
    for backend in ("onnx", "aoti"):
        gen = steerc("generate", str(out), "--prompt", "Name a color.", "--max-new-tokens", "8", "--no-stream", "--backend", backend)
        run = steerc("run", str(out), "--context", str(context), "--query", "Who won?", "--store", "memory", "--backend", backend)
        assert gen.returncode == 0 and run.returncode == 0, gen.stderr + run.stderr
        answers[backend] = (gen.stdout, run.stdout)
    assert answers["aoti"] == answers["onnx"]  # same greedy text through the compiled package


def test_backend_without_its_compiled_form_is_one_line(tiny_engine):
    result = steerc("generate", str(tiny_engine), "--prompt", "x", "--backend", "aoti")
    assert result.returncode != 0 and "--backend aoti" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_aoti_for_cuda_without_a_gpu_is_one_line(tiny_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--backend", "aoti", "--device", "cuda")
    assert result.returncode != 0 and "CUDA" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".e.partial")]


@pytest.mark.slow
def test_check_tensorrt_passes_on_the_default_model(default_engine, default_tensorrt_compile):
    """The default model compiled for TensorRT (fp16, about 3 minutes: `steerc compile --target
    tensorrt`, started with the session, tests/conftest.py) passes the parser rules in every
    graph; its ONNX Runtime engine as compiled for `make demo` in the step graph only (its derived
    analysis and selector graphs return Attention's probabilities, which TensorRT refuses)."""
    out, compiled = default_tensorrt_compile
    assert compiled.returncode == 0, compiled.stderr
    result = steerc("check-tensorrt", str(out))
    assert result.returncode == 0 and "all 2 graphs pass (model.onnx, analysis.onnx)" in result.stdout, result.stdout + result.stderr
    assert "Attention 30" in result.stdout  # the fused op of every layer was checked
    result = steerc("check-tensorrt", str(default_engine))
    assert result.returncode == 1 and "0 violations in model.onnx" in result.stdout and "Attention 30" in result.stdout
    assert "graphs break TensorRT's parser rules: analysis.onnx" in result.stdout, result.stdout


def test_fp16_graph_onnx_runtime_cannot_load_is_one_clear_line(tmp_path):
    """Gemma's fp16 export mixes fp16 activations with an fp32 norm scale, which ONNX Runtime's
    CPU provider refuses: the compile says so and how to go on, and leaves nothing behind."""
    from tiny_models import tiny_model

    folder = tmp_path / "gemma3"
    tiny_model("gemma3").save_pretrained(folder)
    result = steerc("compile", str(folder), "-o", str(tmp_path / "e"), "--target", "tensorrt", "--max-seq-len", "64", "--max-batch", "2")
    assert result.returncode != 0 and "--dtype fp32" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists()
