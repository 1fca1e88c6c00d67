"""Optimization profiles and the trtexec command of a ``--target tensorrt`` engine."""

import pytest

from steerc.capture.io_spec import DecoderGeometry, decoder_inputs
from steerc.backends.tensorrt.shape_profiles import shape_profiles, trtexec_command

G = DecoderGeometry(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, vocab_size=128)


@pytest.fixture
def profiles():
    return shape_profiles(decoder_inputs(G, "float16"), max_batch=4, max_seq_len=64)


def test_every_input_has_min_opt_max_within_the_engine_limits(profiles):
    assert [p["name"] for p in profiles] == ["prefill", "decode"]
    names = [s.name for s in decoder_inputs(G, "float16")]
    for profile in profiles:
        assert list(profile["shapes"]) == names
        for name, shape in profile["shapes"].items():
            lo, opt, hi = shape["min"], shape["opt"], shape["max"]
            assert len(lo) == len(opt) == len(hi)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (profile["name"], name, shape)
            assert hi[0] == 4  # batch up to max_batch
        bias = profile["shapes"]["steer_bias"]
        assert bias["min"][1:3] == [G.num_layers, G.num_heads] and bias["max"][3] == 64
        kv = profile["shapes"]["past_key_values.0.key"]
        assert kv["max"] == [4, G.num_kv_heads, 63, G.head_dim]


def test_prefill_starts_from_an_empty_cache_and_decode_is_one_token(profiles):
    prefill, decode = profiles
    assert prefill["shapes"]["past_key_values.1.value"]["min"][2] == 0
    assert prefill["shapes"]["input_ids"]["max"] == [4, 64]
    assert decode["shapes"]["input_ids"]["min"] == [1, 1] and decode["shapes"]["input_ids"]["max"] == [4, 1]
    assert decode["shapes"]["attention_mask"]["max"] == [4, 64]


def test_trtexec_command_has_one_shape_triple_per_profile(profiles):
    command = trtexec_command("model.onnx", profiles)
    assert command.split()[0] == "trtexec" and "--onnx=model.onnx" in command.split()
    assert "--saveEngine=model.plan" in command and "--stronglyTyped" in command
    for flag in ("--minShapes=", "--optShapes=", "--maxShapes="):
        assert command.count(flag) == 2
    assert "steer_bias:1x2x4x1" in command  # prefill min: [B, L, H, P+S] with one key
    assert "past_key_values.0.key:4x2x63x16" in command
