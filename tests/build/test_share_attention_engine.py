"""The engine contract of a shared-attention engine: manifest, I/O names, no genai config,
the runtime (generate, KV layout, KV files, stores) and its refusal of a cache of another layout."""


import numpy as np
import pytest
import torch

from steerc.build import compile_engine, read_manifest
from steerc.errors import EngineError
from steerc.runtime import Engine, KVCache
from steerc.runtime.generate import generate, prefill
from steerc.settings import CompileSettings

GROUPS = ((1, 2, 3),)


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory):
    """A 4-layer tiny Llama (GQA) compiled with layers 1-3 shared, and the model itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import COMMON

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**COMMON, "num_hidden_layers": 4}, num_attention_heads=4, num_key_value_heads=2)).eval()
    folder = tmp_path_factory.mktemp("tiny-4") / "model"
    model.save_pretrained(folder)
    out = tmp_path_factory.mktemp("shared-engine") / "engine"
    manifest = compile_engine(str(folder), out, CompileSettings(max_seq_len=64, max_batch=4, share_attention=GROUPS))
    return out, manifest, model


def test_manifest_records_the_groups_and_the_io(shared_engine):
    out, manifest, _ = shared_engine
    assert read_manifest(out) == manifest
    assert manifest["share_attention"]["groups"] == [[1, 2, 3]] and manifest["share_attention"]["shared_layers"] == [2, 3]
    assert manifest["settings"]["share_attention"] == [[1, 2, 3]]
    inputs = [s["name"] for s in manifest["inputs"]]
    outputs = [s["name"] for s in manifest["outputs"]]
    assert inputs[3:-1] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value",
                            "past_key_values.2.value", "past_key_values.3.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value", "present.2.value", "present.3.value"]
    assert [p["name"] for p in manifest["passes"]] == ["insert_steering_bias", "use_native_gqa", "share_attention"]
    assert not (out / "genai_config.json").exists() and "genai" in manifest["share_attention"]["genai_config"]
    assert manifest["verify"]["reference"] == "reference_shared_step" and manifest["verify"]["decode_steered_rel_err"] < 1e-4
    assert manifest["verify"]["importance"]["attn_importance_abs_err"] < 1e-4
    assert manifest["backend"]["op_counts"]["Attention"] == 1  # layer 0 keeps fused attention; layer 1 computes P explicitly
    import onnx

    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert [v.name for v in proto.graph.input] == inputs and [v.name for v in proto.graph.output] == outputs


def test_generate_matches_the_eager_sharing_reference(shared_engine):
    from steerc.reference import reference_shared_step

    out, _, model = shared_engine
    engine = Engine.load(out)
    assert engine.keyless_layers == (2, 3) and engine.new_cache(2).keyless == (2, 3)
    prompt = np.array([[5, 17, 3, 99, 42, 7]])
    got = [int(t[0]) for t in generate(engine, prompt, max_new_tokens=6, stop_token_ids=set())]
    ids = torch.tensor(prompt)
    past = [torch.zeros(1, 2, 0, 16) for _ in range(6)]
    want = []
    for _ in range(6):
        P, S = past[0].shape[2], ids.shape[1]
        logits, past = reference_shared_step(model, ids, torch.arange(P, P + S)[None], torch.ones(1, P + S, dtype=torch.long), past, GROUPS)
        ids = logits[:, -1].argmax(-1, keepdim=True)
        want.append(int(ids))
    assert got == want


def test_kv_file_and_store_round_trip(shared_engine, tmp_path):
    from steerc.steering.contexts import plain_context
    from steerc.steering.prepared import PreparedContext
    from steerc.stores.base import entry_from_bytes, entry_to_bytes
    from steerc.steering.stored_kv import kv_entry, kv_from_entry

    out, _, _ = shared_engine
    engine = Engine.load(out)
    ids = np.arange(1, 11)[None]
    _, cache = prefill(engine, ids, np.ones((1, 10), np.int64), engine.new_cache(1))
    assert cache.keyless == (2, 3) and len(cache.flat()) == 6 and cache.length == 10
    cache.save(tmp_path / "kv.safetensors")
    loaded, _ = KVCache.load(tmp_path / "kv.safetensors", keyless=engine.keyless_layers)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.flat(), cache.flat()))
    prepared = plain_context(engine, ids[0, :2], ids[0, 2:], cache, 0.0)
    kv_back = kv_from_entry(prepared.kv_key, entry_from_bytes(prepared.kv_key, entry_to_bytes(prepared.kv_key, kv_entry(cache))))
    back = PreparedContext.from_stored(prepared.key, entry_from_bytes(prepared.key, entry_to_bytes(prepared.key, prepared.to_stored())), kv_back)
    assert back.kv.keyless == (2, 3) and all(np.array_equal(a, b) for a, b in zip(back.kv.flat(), cache.flat()))
    # The restored cache continues exactly like the original one.
    nxt = np.array([[12]])
    a, _ = prefill(engine, nxt, np.ones((1, 11), np.int64), cache)
    b, _ = prefill(engine, nxt, np.ones((1, 11), np.int64), back.kv)
    np.testing.assert_array_equal(a, b)


def test_a_cache_of_another_layout_is_refused(shared_engine, tiny_engine):
    out, _, _ = shared_engine
    engine = Engine.load(out)
    full = KVCache.empty(4, 1, 2, 16)
    with pytest.raises(EngineError, match=r"cache is full .* expects shared attention \(no keys for layers 2-3\)"):
        prefill(engine, np.array([[1, 2]]), np.ones((1, 2), np.int64), full)
    plain = Engine.load(tiny_engine)
    assert plain.keyless_layers == ()
    with pytest.raises(EngineError, match=r"cache is shared attention .* expects full"):
        prefill(plain, np.array([[1, 2]]), np.ones((1, 2), np.int64), KVCache.empty(2, 1, 2, 16, keyless=(1,)))
