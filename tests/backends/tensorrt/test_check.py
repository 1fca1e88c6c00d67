"""check_tensorrt on deliberately broken graphs (each rejected, with the node named), the rewrite
of the fixable ones, check_engine, and the ``steerc check-tensorrt`` CLI."""

import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper
from onnx_steps import assert_outputs_equal, run, step_feed

from steerc.cli import main
from steerc.backends.tensorrt import Violation, check_engine, check_tensorrt
from steerc.passes.onnx.make_tensorrt_ready import tensorrt_ready_file


@pytest.fixture
def llama(exported_onnx, tmp_path):
    """A private copy of the tiny Llama step graph (fp32) with its weights."""
    src = exported_onnx("llama")
    shutil.copytree(src.parent, tmp_path / "llama")
    return tmp_path / "llama" / src.name


def load(path):
    return onnx.load(str(path), load_external_data=False)


def save(proto, path):
    onnx.save_model(proto, str(path))
    return path


def attention_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == "Attention"]


def set_attr(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def fuse_kv_cache(proto):
    """Move each layer's KV concat into its Attention node: past_key/past_value inputs and
    present_key/present_value outputs, the form TensorRT refuses."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    drop = []
    for node in attention_nodes(proto):
        concat_k, concat_v = producer[node.input[1]], producer[node.input[2]]
        assert concat_k.op_type == concat_v.op_type == "Concat"
        present_k, present_v = node.input[1], node.input[2]
        past_k, new_k = concat_k.input
        past_v, new_v = concat_v.input
        node.input[1], node.input[2] = new_k, new_v
        node.input.extend([past_k, past_v])
        node.output.extend([present_k, present_v])
        drop += [concat_k, concat_v]
    kept = [n for n in proto.graph.node if all(n is not d for d in drop)]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto


def rules(violations):
    return {v.rule for v in violations}


def test_clean_export_has_no_violations(llama):
    assert check_tensorrt(llama) == []
    assert check_tensorrt(load(llama)) == []  # a ModelProto works too


def test_violation_is_one_line_naming_the_node():
    v = Violation("/model/layers.0/attn/Attention", "Attention", "attention.past_kv", "past_key input present: no KV inputs")
    assert str(v) == "node /model/layers.0/attn/Attention (Attention): past_key input present: no KV inputs"
    assert "\n" not in str(v)


def test_past_kv_inputs_are_rejected_then_split_out_without_changing_results(llama):
    feeds = {call: step_feed("llama", "fp32", call) for call in ("prefill", "decode")}
    before = {call: run(llama, feed) for call, feed in feeds.items()}
    proto = fuse_kv_cache(load(llama))
    names = [n.name for n in attention_nodes(proto)]
    save(proto, llama)
    onnx.checker.check_model(str(llama))
    found = check_tensorrt(llama)
    past = [v for v in found if v.rule == "attention.past_kv"]
    assert [v.node for v in past] == names
    assert all("past_key and past_value input present" in v.message and names[0] in str(found[0]) for v in past)
    assert {v.node for v in found if v.rule == "attention.outputs"} == set(names)
    assert "present_key, present_value output present" in str([v for v in found if v.rule == "attention.outputs"][0])
    fused = {call: run(llama, feed) for call, feed in feeds.items()}  # ONNX Runtime runs the fused form
    for call in feeds:
        assert_outputs_equal(fused[call], before[call], "fp32")

    report = tensorrt_ready_file(llama)
    assert report["attention_past_kv_split"] == len(names)
    assert check_tensorrt(llama) == []
    for call, feed in feeds.items():
        assert_outputs_equal(run(llama, feed), before[call], "fp32")


def test_extra_present_output_is_rejected(llama):
    proto = load(llama)
    node = attention_nodes(proto)[0]
    node.output.extend(["", "", "qk_scores"])
    save(proto, llama)
    found = check_tensorrt(llama)
    assert [(v.node, v.rule) for v in found] == [(node.name, "attention.outputs")]
    assert "qk_matmul_output output present" in found[0].message
    tensorrt_ready_file(llama)  # cannot be rewritten away: the checker still reports it
    assert [(v.node, v.rule) for v in check_tensorrt(llama)] == [(node.name, "attention.outputs")]


def test_present_outputs_without_past_are_split_out(llama):
    proto = load(llama)
    node = attention_nodes(proto)[1]
    node.output.extend(["layer1_present_k", "layer1_present_v"])
    save(proto, llama)
    assert rules(check_tensorrt(llama)) == {"attention.outputs"}
    assert tensorrt_ready_file(llama)["attention_present_split"] == 1
    assert check_tensorrt(llama) == []


def test_nonzero_softcap_is_rejected_and_kept(llama):
    proto = load(llama)
    node = attention_nodes(proto)[0]
    set_attr(node, "softcap", 30.0)
    save(proto, llama)
    found = check_tensorrt(llama)
    assert [(v.node, v.op, v.rule) for v in found] == [(node.name, "Attention", "attention.softcap")]
    assert f"node {node.name} (Attention): softcap=30.0" in str(found[0])
    report = tensorrt_ready_file(llama)
    assert report["attention_softcap_dropped"] == 1  # only the other layer's softcap=0
    assert rules(check_tensorrt(llama)) == {"attention.softcap"}


def test_zero_softcap_is_tolerated_but_removed(llama):
    assert any(a.name == "softcap" for a in attention_nodes(load(llama))[0].attribute)  # what the exporter writes
    assert check_tensorrt(llama) == []
    report = tensorrt_ready_file(llama)
    assert report["attention_softcap_dropped"] == report["attention_qk_mode_dropped"] == 2


@pytest.mark.parametrize("attr, value, rule", [("is_causal", 1, "attention.causal_with_mask"), ("softmax_precision", 1, "attention.softmax_precision"),
                                               ("qk_matmul_output_mode", 2, "attention.qk_matmul_output_mode")])
def test_attention_attributes_are_rejected(llama, attr, value, rule):
    proto = load(llama)
    node = attention_nodes(proto)[0]
    set_attr(node, attr, value)
    save(proto, llama)
    assert [(v.node, v.rule) for v in check_tensorrt(llama)] == [(node.name, rule)]


def test_mask_dtype_must_match_q_and_is_cast(llama):
    proto = load(llama)
    node = attention_nodes(proto)[0]
    cast = helper.make_node("Cast", [node.input[3]], ["mask_fp16"], name="to_fp16", to=TensorProto.FLOAT16)
    index = list(proto.graph.node).index(node)
    proto.graph.node.insert(index, cast)
    attention_nodes(proto)[0].input[3] = "mask_fp16"
    save(proto, llama)
    found = check_tensorrt(llama)
    assert [(v.node, v.rule) for v in found] == [(node.name, "attention.mask_dtype")]
    assert "float16 but Q is float32" in found[0].message
    assert tensorrt_ready_file(llama)["attention_mask_cast"] == 1
    assert check_tensorrt(llama) == []


def test_foreign_domain_node_is_rejected(llama):
    proto = load(llama)
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    proto.graph.node.append(helper.make_node("FastGelu", [proto.graph.output[0].name], ["ms_out"], name="ms_gelu", domain="com.microsoft"))
    save(proto, llama)
    found = check_tensorrt(llama)
    assert [(v.node, v.op, v.rule) for v in found] == [("ms_gelu", "com.microsoft::FastGelu", "domain")]
    assert str(found[0]).startswith("node ms_gelu (com.microsoft::FastGelu): ")


def test_unsupported_op_is_rejected(llama):
    proto = load(llama)
    proto.graph.node.append(helper.make_node("Unique", [proto.graph.output[0].name], ["uniq"], name="my_unique"))
    proto.graph.node.append(helper.make_node("Det", [proto.graph.output[0].name], ["det"], name=""))
    save(proto, llama)
    found = check_tensorrt(llama)
    assert [(v.node, v.rule) for v in found] == [("my_unique", "unsupported-op"), ("#%d -> det" % (len(proto.graph.node) - 1), "unsupported-op")]
    assert "op Unique is not supported" in str(found[0])


def test_float_position_ids_are_rejected(llama):
    proto = load(llama)
    pos = next(i for i in proto.graph.input if i.name == "position_ids")
    pos.type.tensor_type.elem_type = TensorProto.FLOAT
    save(proto, llama)
    found = check_tensorrt(llama)
    assert ("input position_ids", "rotary.position_ids") in {(v.node, v.rule) for v in found}
    # a graph input is the engine's contract: the rewrite leaves it, the checker keeps reporting it
    tensorrt_ready_file(llama)
    assert ("input position_ids", "rotary.position_ids") in {(v.node, v.rule) for v in check_tensorrt(llama)}


def test_rotary_position_ids_input_is_cast_to_int64(llama):
    proto = load(llama)
    rotary = next(n for n in proto.graph.node if n.op_type == "RotaryEmbedding")
    index = list(proto.graph.node).index(rotary)
    proto.graph.node.insert(index, helper.make_node("Cast", ["position_ids"], ["pos_f"], name="pos_to_float", to=TensorProto.FLOAT))
    rotary = proto.graph.node[index + 1]
    assert len(rotary.input) == 3  # the exporter gathers cos/sin itself: no position_ids input
    rotary.input.append("pos_f")
    found = check_tensorrt(proto)
    assert (rotary.name, "rotary.position_ids") in {(v.node, v.rule) for v in found}
    from steerc.passes.onnx.make_tensorrt_ready import rewrite_for_tensorrt

    assert rewrite_for_tensorrt(proto)["rotary_position_ids_cast"] == 1
    assert (rotary.name, "rotary.position_ids") not in {(v.node, v.rule) for v in check_tensorrt(proto)}


def test_static_restrictions():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="dyn_unsqueeze"),
        helper.make_node("Unsqueeze", ["x", "const_axes"], ["u2"], name="ok_unsqueeze"),
        helper.make_node("Squeeze", ["x"], ["s"], name="squeeze_dynamic"),
        helper.make_node("ReduceSum", ["x", "axes"], ["r"], name="dyn_reduce"),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], name="topk_unsorted", sorted=0),
        helper.make_node("Constant", [], ["k"], name="k_const", value=helper.make_tensor("kv", TensorProto.INT64, [1], [2])),
    ]
    graph = helper.make_graph(nodes, "g", [x, axes], [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("const_axes", TensorProto.INT64, [1], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    found = {(v.node, v.rule) for v in check_tensorrt(model)}
    assert found == {("dyn_unsqueeze", "constant-input"), ("squeeze_dynamic", "constant-input"), ("dyn_reduce", "constant-input"),
                     ("topk_unsorted", "attribute")}


def test_opset_out_of_range():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    found = check_tensorrt(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)]))
    assert [(v.node, v.rule) for v in found] == [("graph", "opset")]


# -- engines and the CLI ---------------------------------------------------------------------


def test_check_engine_checks_every_graph(tiny_engine):
    """An ONNX Runtime engine: its step graph meets the rules, its derived analysis and selector
    graphs do not (their Attention nodes return the probabilities as a fourth output)."""
    found = check_engine(tiny_engine)
    assert list(found) == ["model.onnx", "analysis.onnx", "selector.onnx"]
    assert found["model.onnx"] == []
    for name in ("analysis.onnx", "selector.onnx"):
        assert rules(found[name]) >= {"attention.outputs", "attention.qk_matmul_output_mode"}


@pytest.fixture(scope="module")
def tiny_tensorrt_engine(tiny_folder, compiled_engine):
    return compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, target="tensorrt")


def test_tensorrt_target_writes_every_graph_to_the_rules(tiny_tensorrt_engine):
    """``--target tensorrt`` exports the analysis program (explicit softmax probabilities) instead of
    deriving it, rewrites it like the step graph, and writes no selector graph."""
    from steerc.engine_format import read_manifest

    assert check_engine(tiny_tensorrt_engine) == {"model.onnx": [], "analysis.onnx": []}
    manifest = read_manifest(tiny_tensorrt_engine)
    assert manifest["tensorrt"]["graphs"] == {"model.onnx": 0, "analysis.onnx": 0}
    assert manifest["selector"] is None and not (tiny_tensorrt_engine / "selector.onnx").exists()
    # The compile's self-check compared this analysis graph's attn_importance with the eager reference.
    importance = manifest["verify"]["importance"]
    assert importance["attn_importance_abs_err"] <= importance["tolerance"]


def test_tensorrt_target_analysis_importance_matches_the_reference(tiny_tensorrt_engine, tiny_folder):
    """Parity on a prompt other than the compile's self-check (5 tokens, another seed)."""
    from steerc.backends.onnx.session import create_session
    from steerc.build.verify import importance_check
    from steerc.capture.io_spec import DecoderGeometry, TensorSpec
    from steerc.engine_format import read_manifest
    from steerc.models import load_model

    manifest = read_manifest(tiny_tensorrt_engine)
    geometry = DecoderGeometry(**manifest["geometry"])
    inputs = [TensorSpec(spec["name"], spec["dtype"], tuple(spec["dims"])) for spec in manifest["inputs"]]
    model = load_model(str(tiny_folder)).model
    result = importance_check(create_session(tiny_tensorrt_engine / "analysis.onnx"), model, geometry, inputs, manifest["dtype"], prompt_len=5, seed=3)
    assert result["attn_importance_abs_err"] <= result["tolerance"]


def test_cli_clean_and_broken(llama, tmp_path, capsys):
    assert main(["check-tensorrt", str(llama)]) == 0
    out = capsys.readouterr().out
    assert "0 violations" in out and "nodes checked" in out and "Attention 2" in out

    broken = tmp_path / "broken" / "model.onnx"
    shutil.copytree(llama.parent, broken.parent)
    proto = load(broken)
    node = attention_nodes(proto)[0]
    set_attr(node, "softcap", 50.0)
    save(proto, broken)
    assert main(["check-tensorrt", str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"node {node.name} (Attention): softcap=50.0" in out and "1 TensorRT violation(s)" in out

    assert main(["check-tensorrt", str(broken), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(v["node"], v["rule"]) for v in data["violations"]] == [(node.name, "attention.softcap")]
    assert data["nodes_checked"] == len(proto.graph.node) and data["ops_seen"]["Attention"] == 2


def test_cli_engine_folder_reports_each_graph(tiny_engine, tiny_tensorrt_engine, capsys):
    assert main(["check-tensorrt", str(tiny_tensorrt_engine)]) == 0
    out = capsys.readouterr().out
    assert "0 violations in model.onnx" in out and "0 violations in analysis.onnx" in out and "all 2 graphs pass" in out

    assert main(["check-tensorrt", str(tiny_engine)]) == 1  # its derived analysis and selector graphs break the rules
    out = capsys.readouterr().out
    assert "0 violations in model.onnx" in out and "analysis.onnx: node " in out
    assert "2 of 3 graphs break TensorRT's parser rules: analysis.onnx, selector.onnx" in out

    assert main(["check-tensorrt", str(tiny_engine), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [g["model"].rsplit("/", 1)[-1] for g in data["graphs"]] == ["model.onnx", "analysis.onnx", "selector.onnx"]
    assert data["failed"] == ["analysis.onnx", "selector.onnx"] and data["graphs"][0]["violations"] == []

    assert main(["check-tensorrt", str(tiny_engine / "model.onnx")]) == 0  # one file: that graph only
    assert "0 violations in model.onnx" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["check-tensorrt", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check-tensorrt", str(tmp_path)]) == 2  # a folder that is no engine
    assert "not a steerc engine" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    assert main(["check-tensorrt", str(junk)]) == 2
    assert "cannot read it as an ONNX model" in capsys.readouterr().err
