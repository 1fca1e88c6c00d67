"""`steerc export-triton`: Triton model repositories from engine folders, checked against the
engine manifest with Triton's own ModelConfig schema (tritonclient[grpc])."""

import json
import os
import shutil

import numpy as np
import pytest
from google.protobuf import text_format

from steerc.cli import main
from steerc.deploy import export_triton
from steerc.deploy.triton import model_config, validate_config
from steerc.engine_format import read_manifest, write_manifest
from steerc.errors import EngineError, SteercError

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")

DTYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "bfloat16": mc.TYPE_BF16}
DYNAMIC = {"batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"}


def parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def expected_dims(dims):
    assert all(d in DYNAMIC or (isinstance(d, int) and d > 0) for d in dims), dims
    return [-1 if isinstance(d, str) else d for d in dims]


def check_tensors(config_tensors, specs):
    """Name, dtype, rank and dims (-1 for dynamic) of every tensor, in the manifest's order."""
    assert [t.name for t in config_tensors] == [s["name"] for s in specs]
    for tensor, spec in zip(config_tensors, specs):
        assert tensor.data_type == DTYPES[spec["dtype"]], spec["name"]
        assert len(tensor.dims) == len(spec["dims"]), spec["name"]
        assert list(tensor.dims) == expected_dims(spec["dims"]), spec["name"]


def is_kv(name):
    return name.startswith(("past_key_values.", "present."))


@pytest.fixture(scope="module")
def manifest(tiny_engine):
    return read_manifest(tiny_engine)


@pytest.fixture(scope="module")
def plan_engine(tiny_engine, tmp_path_factory):
    """A copy of the tiny engine whose manifest records a (fake) TensorRT plan with two profiles."""
    folder = tmp_path_factory.mktemp("plan") / "engine"
    shutil.copytree(tiny_engine, folder)
    (folder / "model.plan").write_bytes(b"not really a TensorRT plan \x00\x01\x02")
    data = json.loads((folder / "steerc.json").read_text())
    shapes = {s["name"]: {"min": [1] * len(s["dims"]), "opt": [1] * len(s["dims"]), "max": [4] * len(s["dims"])} for s in data["inputs"]}
    data["backends"] = {"tensorrt": {"plan": "model.plan", "profiles": [{"name": "prefill", "shapes": shapes}, {"name": "decode", "shapes": shapes}]}}
    write_manifest(folder, data)
    read_manifest(folder)  # re-hashed: a valid engine
    return folder


def test_explicit_kv_config_matches_the_manifest(tiny_engine, manifest, tmp_path):
    summary = export_triton(tiny_engine, tmp_path / "repo", name="tiny")
    model = tmp_path / "repo" / "tiny"
    assert summary["validated"] is True and summary["kv"] == "explicit"
    assert [m["name"] for m in summary["models"]] == ["tiny", "tiny_analysis"]
    config = parse(model / "config.pbtxt")
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0  # batch dim stays in dims as -1
    check_tensors(config.input, manifest["inputs"])
    check_tensors(config.output, manifest["outputs"])
    analysis = parse(tmp_path / "repo" / "tiny_analysis" / "config.pbtxt")  # context preparation: the analysis graph
    assert analysis.platform == "onnxruntime_onnx" and "attn_importance" in {t.name for t in analysis.output}
    check_tensors(analysis.input, manifest["inputs"])
    check_tensors(analysis.output, manifest["analysis"]["outputs"])
    files = sorted(p.name for p in (tmp_path / "repo" / "tiny_analysis" / "1").iterdir())
    assert files == sorted(["model.onnx", manifest["analysis"]["data"]])
    assert (tmp_path / "repo" / "tiny_analysis" / "1" / "model.onnx").read_bytes() == (tiny_engine / manifest["analysis"]["model"]).read_bytes()
    names = {t.name for t in config.input}
    assert "steer_bias" in names and "past_key_values.1.value" in names
    assert "present.0.key" in {t.name for t in config.output}
    steer = next(t for t in config.input if t.name == "steer_bias")
    g = manifest["geometry"]
    assert list(steer.dims) == [-1, g["num_layers"], g["num_heads"], -1] and steer.data_type == mc.TYPE_FP32
    assert not config.HasField("sequence_batching")


def test_model_files_are_the_engines_bytes(tiny_engine, manifest, tmp_path):
    summary = export_triton(tiny_engine, tmp_path / "repo", name="tiny")
    version = tmp_path / "repo" / "tiny" / "1"
    backend = manifest["backend"]
    assert sorted(p.name for p in version.iterdir()) == sorted([backend["model"], backend["data"]])
    for rel in (backend["model"], backend["data"]):
        assert (version / rel).read_bytes() == (tiny_engine / rel).read_bytes()
        assert os.path.samefile(version / rel, tiny_engine / rel)  # same filesystem: hard-linked
    assert set(summary["models"][0]["files"].values()) == {"hard-linked"}
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["tiny", "tiny_analysis"]  # no temporary folders left


def test_files_are_copied_across_filesystems(tiny_engine, manifest, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    summary = export_triton(tiny_engine, tmp_path / "repo", name="tiny")
    data = tmp_path / "repo" / "tiny" / "1" / manifest["backend"]["data"]
    assert set(summary["models"][0]["files"].values()) == {"copied"}
    assert not os.path.samefile(data, tiny_engine / manifest["backend"]["data"])
    assert data.read_bytes() == (tiny_engine / manifest["backend"]["data"]).read_bytes()


def test_implicit_kv_config_keeps_the_cache_as_sequence_state(tiny_engine, manifest, tmp_path):
    export_triton(tiny_engine, tmp_path / "repo", name="tiny", kv="implicit")
    config = parse(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 0
    check_tensors(config.input, [s for s in manifest["inputs"] if not is_kv(s["name"])])
    check_tensors(config.output, [s for s in manifest["outputs"] if not is_kv(s["name"])])
    assert [t.name for t in config.output] == ["logits"]
    batcher = config.sequence_batching
    assert len(batcher.control_input) == 0  # the graph has no START/READY inputs
    assert batcher.WhichOneof("strategy_choice") == "oldest" and batcher.oldest.max_candidate_sequences == manifest["max_batch"]
    past = {s["name"]: s for s in manifest["inputs"] if s["name"].startswith("past_key_values.")}
    present = [s for s in manifest["outputs"] if s["name"].startswith("present.")]
    assert len(batcher.state) == len(present) == len(past) == 2 * manifest["geometry"]["num_layers"]
    for state, out in zip(batcher.state, present):
        inp = past[state.input_name]
        assert state.output_name == out["name"] and state.input_name == "past_key_values." + out["name"][len("present."):]
        assert state.data_type == DTYPES[inp["dtype"]] == DTYPES[out["dtype"]]
        assert list(state.dims) == expected_dims(inp["dims"]) and len(state.dims) == 4
        assert not state.use_same_buffer_for_input_output and not state.use_growable_memory
        (initial,) = state.initial_state
        assert initial.zero_data and initial.name and initial.data_type == state.data_type
        g = manifest["geometry"]
        assert list(initial.dims) == [1, g["num_kv_heads"], 0, g["head_dim"]]  # one sequence, empty past


def test_zero_length_initial_state_is_a_prefill(tiny_engine, manifest, tmp_path):
    """What Triton does with implicit KV, done by hand with ONNX Runtime on the exported model:
    the zero initial state (past length 0), then each step's present fed back as the next past."""
    import onnxruntime as ort

    export_triton(tiny_engine, tmp_path / "repo", name="tiny", kv="implicit")
    session = ort.InferenceSession(str(tmp_path / "repo" / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    config = parse(tmp_path / "repo" / "tiny" / "config.pbtxt")
    g = manifest["geometry"]
    ids = np.random.default_rng(0).integers(0, g["vocab_size"], size=(1, 6))

    def step(tokens, start, state):
        seq = tokens.shape[1]
        feeds = {"input_ids": tokens, "position_ids": np.arange(start, start + seq)[None], "attention_mask": np.ones((1, start + seq), np.int64),
                 "steer_bias": np.zeros((1, g["num_layers"], g["num_heads"], start + seq), np.float32), **state}
        names = [o.name for o in session.get_outputs()]
        result = dict(zip(names, session.run(None, feeds)))
        return result["logits"], {s.input_name: result[s.output_name] for s in config.sequence_batching.state}

    initial = {s.input_name: np.zeros(list(s.initial_state[0].dims), np.float32) for s in config.sequence_batching.state}
    _, state = step(ids[:, :5], 0, initial)
    last, _ = step(ids[:, 5:], 5, state)
    full, _ = step(ids, 0, initial)
    np.testing.assert_allclose(last[:, -1], full[:, -1], atol=1e-4)


def test_engine_with_a_plan_gets_a_tensorrt_model(plan_engine, tmp_path):
    manifest = read_manifest(plan_engine)
    summary = export_triton(plan_engine, tmp_path / "repo", name="tiny")
    assert [(m["name"], m["platform"]) for m in summary["models"]] == [("tiny", "onnxruntime_onnx"), ("tiny_analysis", "onnxruntime_onnx"), ("tiny_trt", "tensorrt_plan")]
    trt = tmp_path / "repo" / "tiny_trt"
    assert (trt / "1" / "model.plan").read_bytes() == (plan_engine / "model.plan").read_bytes()
    assert sorted(p.name for p in (trt / "1").iterdir()) == ["model.plan"]
    config = parse(trt / "config.pbtxt")
    assert config.name == "tiny_trt" and config.platform == "tensorrt_plan" and config.max_batch_size == 0
    check_tensors(config.input, manifest["inputs"])
    check_tensors(config.output, manifest["outputs"])
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.profile) == ["0", "1"]
    assert parse(tmp_path / "repo" / "tiny" / "config.pbtxt").platform == "onnxruntime_onnx"


def test_tensorrt_only_and_implicit(plan_engine, tmp_path):
    summary = export_triton(plan_engine, tmp_path / "repo", name="tiny", platforms="tensorrt", kv="implicit")
    assert [m["name"] for m in summary["models"]] == ["tiny_trt"] and not (tmp_path / "repo" / "tiny").exists()
    config = parse(tmp_path / "repo" / "tiny_trt" / "config.pbtxt")
    assert len(config.sequence_batching.state) == 4 and [t.name for t in config.output] == ["logits"]


def test_existing_model_needs_force(tiny_engine, tmp_path):
    repo = tmp_path / "repo"
    export_triton(tiny_engine, repo, name="tiny")
    (repo / "tiny" / "config.pbtxt").write_text("stale")
    with pytest.raises(EngineError, match="--force"):
        export_triton(tiny_engine, repo, name="tiny")
    assert (repo / "tiny" / "config.pbtxt").read_text() == "stale"
    export_triton(tiny_engine, repo, name="tiny", kv="implicit", force=True)
    assert parse(repo / "tiny" / "config.pbtxt").sequence_batching.state
    assert sorted(p.name for p in repo.iterdir()) == ["tiny", "tiny_analysis"]
    (repo / "other").mkdir()
    (repo / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EngineError, match="not a Triton model"):
        export_triton(tiny_engine, repo, name="other", force=True)
    assert (repo / "other" / "notes.txt").read_text() == "mine"
    (repo / "empty").mkdir()
    export_triton(tiny_engine, repo, name="empty")  # an empty folder is not in the way


def test_tensorrt_without_a_plan_is_refused(tiny_engine, tmp_path):
    with pytest.raises(EngineError, match="has no TensorRT plan") as err:
        export_triton(tiny_engine, tmp_path / "repo", platforms=["onnxruntime", "tensorrt"])
    assert "--backend tensorrt" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "repo").exists()


def test_not_an_engine_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(EngineError, match="not a steerc engine"):
        export_triton(tmp_path / "folder", tmp_path / "repo")
    with pytest.raises(EngineError, match="does not exist"):
        export_triton(tmp_path / "missing", tmp_path / "repo")


def test_corrupt_engine_is_refused(tiny_engine, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(tiny_engine, copy)
    with open(copy / "model.onnx.data", "r+b") as fh:
        fh.write(b"\xff\xfe")
    with pytest.raises(EngineError, match="corrupt"):
        export_triton(copy, tmp_path / "repo")


def test_bad_options(tiny_engine, tmp_path):
    with pytest.raises(SteercError, match="unknown platform"):
        export_triton(tiny_engine, tmp_path / "repo", platforms="tensorflow")
    with pytest.raises(SteercError, match="explicit or implicit"):
        export_triton(tiny_engine, tmp_path / "repo", kv="server")
    with pytest.raises(SteercError, match="invalid Triton model name"):
        export_triton(tiny_engine, tmp_path / "repo", name="../up")
    with pytest.raises(EngineError, match="inside the engine folder"):
        export_triton(tiny_engine, tiny_engine / "triton")
    assert not (tiny_engine / "triton").exists()


def test_a_failed_write_leaves_nothing(tiny_engine, tmp_path, monkeypatch):
    import steerc.deploy.triton.repository as repository

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(repository, "_link_or_copy", broken)
    with pytest.raises(OSError, match="disk full"):
        export_triton(tiny_engine, tmp_path / "repo", name="tiny")
    assert list((tmp_path / "repo").iterdir()) == []


def test_shared_attention_contract_and_unpaired_kv(manifest):
    """A shared-attention engine lacks some .key tensors: both modes follow the manifest lists."""
    shared = json.loads(json.dumps(manifest))
    shared["inputs"] = [s for s in shared["inputs"] if s["name"] != "past_key_values.1.key"]
    shared["outputs"] = [s for s in shared["outputs"] if s["name"] != "present.1.key"]
    explicit = text_format.Parse(model_config(shared, "s"), mc.ModelConfig())
    check_tensors(explicit.input, shared["inputs"])
    check_tensors(explicit.output, shared["outputs"])
    implicit = text_format.Parse(model_config(shared, "s", kv="implicit"), mc.ModelConfig())
    assert [s.output_name for s in implicit.sequence_batching.state] == ["present.0.key", "present.0.value", "present.1.value"]
    broken = json.loads(json.dumps(shared))
    broken["outputs"] = [s for s in broken["outputs"] if s["name"] != "present.0.value"]
    with pytest.raises(EngineError, match="do not pair up"):
        model_config(broken, "s", kv="implicit")


def test_fp16_and_bf16_dtypes(manifest):
    half = json.loads(json.dumps(manifest))
    for spec in half["inputs"] + half["outputs"]:
        if is_kv(spec["name"]) or spec["name"] == "logits":
            spec["dtype"] = "bfloat16"
    config = text_format.Parse(model_config(half, "h", kv="implicit"), mc.ModelConfig())
    assert config.output[0].data_type == mc.TYPE_BF16
    assert {s.data_type for s in config.sequence_batching.state} == {mc.TYPE_BF16}
    assert {s.initial_state[0].data_type for s in config.sequence_batching.state} == {mc.TYPE_BF16}
    half["outputs"][0]["dtype"] = "float16"
    assert text_format.Parse(model_config(half, "h"), mc.ModelConfig()).output[0].data_type == mc.TYPE_FP16


def test_validation_is_skipped_without_tritonclient(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    assert validate_config('name: "x"') is False
    monkeypatch.undo()
    assert validate_config('name: "x"\nmax_batch_size: 0') is True
    with pytest.raises(RuntimeError, match="schema rejects"):
        validate_config("no_such_field: 1")


# --- the command line ------------------------------------------------------------------------


def one_line_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerc: error: "), err
    for fragment in fragments:
        assert fragment in err[0]


def test_cli_writes_the_repository(tiny_engine, manifest, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(tiny_engine), str(repo), "--name", "tiny", "--kv", "implicit"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "onnxruntime_onnx" in out and f"tritonserver --model-repository={repo}" in out
    assert "1/model.onnx.data" in out and f"{2 * manifest['geometry']['num_layers']} KV tensors" in out
    config = parse(repo / "tiny" / "config.pbtxt")
    assert config.sequence_batching.state and (repo / "tiny" / "1" / "model.onnx").is_file()

    one_line_error(capsys, main(["export-triton", str(tiny_engine), str(repo), "--name", "tiny"]), "already exists", "--force")
    assert main(["export-triton", str(tiny_engine), str(repo), "--name", "tiny", "--force"]) == 0
    assert not parse(repo / "tiny" / "config.pbtxt").HasField("sequence_batching")


def test_cli_default_name_and_tensorrt(plan_engine, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(plan_engine), str(repo), "--platform", "onnxruntime,tensorrt"]) == 0
    assert "tensorrt_plan" in capsys.readouterr().out
    assert (repo / "engine" / "config.pbtxt").is_file() and (repo / "engine_trt" / "1" / "model.plan").is_file()


def test_cli_errors(tiny_engine, tmp_path, capsys):
    one_line_error(capsys, main(["export-triton", str(tiny_engine), str(tmp_path / "r"), "--platform", "tensorrt"]), "has no TensorRT plan")
    one_line_error(capsys, main(["export-triton", str(tmp_path), str(tmp_path / "r")]), "not a steerc engine")
    one_line_error(capsys, main(["export-triton", str(tiny_engine), str(tmp_path / "r"), "--platform", "tpu"]), "unknown platform")
    assert not (tmp_path / "r").exists()
