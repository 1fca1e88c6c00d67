import pytest

from steerc.passes import SteeringBiasSettings
from steerc.settings import CompileSettings


def test_defaults_and_json_round_trip():
    s = CompileSettings()
    assert (s.opset, s.dtype, s.max_seq_len) == (23, "fp32", 2048)
    t = CompileSettings(opset=20, dtype="fp16", max_seq_len=512, max_batch=4, attn_implementation="eager", verify=False)
    assert CompileSettings.from_json(t.to_json()) == t
    b = SteeringBiasSettings(num_layers=30, num_heads=9, architecture="LlamaForCausalLM")
    assert SteeringBiasSettings.from_json(b.to_json()) == b


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 17}, "opset"),
        ({"dtype": "int8"}, "dtype"),
        ({"max_seq_len": 4}, "max_seq_len"),
        ({"max_seq_len": "2048"}, "max_seq_len"),
        ({"max_batch": 1}, "max_batch"),
        ({"attn_implementation": "flash"}, "attn_implementation"),
        ({"verify": "yes"}, "verify"),
    ],
)
def test_invalid_values_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileSettings(**kwargs)


def test_unknown_json_key_is_rejected():
    with pytest.raises(ValueError, match="unknown field"):
        CompileSettings.from_dict({"opset": 23, "fast": True})


@pytest.mark.parametrize("kwargs", [{"num_layers": 0, "num_heads": 1}, {"num_layers": 2, "num_heads": True}, {"num_layers": 2, "num_heads": 2, "input_name": "steer.bias"}])
def test_steering_settings_validation(kwargs):
    with pytest.raises(ValueError):
        SteeringBiasSettings(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "trt"}, "target must be one of"),
    ({"backend": "tvm"}, "backend must be one of"),
    ({"device": "tpu"}, "device must be one of"),
    ({"backend": "torch-tensorrt"}, "--device cuda"),
    ({"target": "tensorrt", "dtype": "bf16"}, "fp16"),
])
def test_deployment_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileSettings(**kwargs)


def test_deployment_settings_round_trip():
    s = CompileSettings(target="tensorrt", dtype="fp16", backend="aoti", device="cpu")
    assert CompileSettings.from_json(s.to_json()) == s


def test_weight_settings_round_trip():
    s = CompileSettings(weights="int4", weight_block=64, weight_symmetric=False)
    assert CompileSettings.from_json(s.to_json()) == s and CompileSettings().weights == "full"


@pytest.mark.parametrize("kwargs, message", [
    ({"attention_op": "flash"}, "attention_op must be one of"),
    ({"attention_op": "group-query"}, "add --kv in-place"),
    ({"attention_op": "group-query", "kv": "in-place", "dtype": "fp16"}, "fp32 only"),
    ({"kv_cache": "int4"}, "kv_cache must be one of"),
    ({"kv_cache": "int8", "kv": "in-place"}, "add --kv in-place --attention-op group-query"),
])
def test_attention_op_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileSettings(**kwargs)


def test_attention_op_round_trip():
    s = CompileSettings(weights="int4", kv="in-place", attention_op="group-query")
    assert CompileSettings.from_json(s.to_json()) == s and CompileSettings().attention_op == "standard"
