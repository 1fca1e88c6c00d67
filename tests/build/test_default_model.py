"""End to end on the real default model (SmolLM2-135M-Instruct): `steerc compile` from the CLI,
then the engine's greedy tokens against HF `generate` for two chat prompts. Takes minutes."""

import json

import numpy as np
import pytest
import torch

from steerc.backends.onnx import create_session
from steerc.build import read_manifest

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def hf(default_hf):
    return default_hf


def onnx_greedy(session, manifest, prompt_ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    g = manifest["geometry"]
    names = [s["name"] for s in manifest["inputs"]]
    past = [np.zeros((1, g["num_kv_heads"], 0, g["head_dim"]), np.float32) for _ in range(2 * g["num_layers"])]
    ids = np.array([prompt_ids], np.int64)
    total, out = 0, []
    for _ in range(new_tokens):
        S = ids.shape[1]
        feed = [ids, np.arange(total, total + S, dtype=np.int64)[None], np.ones((1, total + S), np.int64), *past]
        feed.append(np.zeros((1, g["num_layers"], g["num_heads"], total + S), np.float32))
        logits, *past = session.run(None, dict(zip(names, feed)))
        total += S
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in eos:
            break
        ids = np.array([[token]], np.int64)
    return out


def test_manifest_of_default_engine(default_engine):
    manifest = read_manifest(default_engine)
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["source"]["spec"] == "smollm2-135m-instruct"
    assert manifest["geometry"]["num_layers"] == 30 and manifest["passes"][0]["num_sites"] == 30
    assert manifest["backend"]["op_counts"]["Attention"] == 30
    assert manifest["tokenizer"] and manifest["chat_template"]
    assert json.loads((default_engine / "genai_config.json").read_text())["model"]["type"] == "llama"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_equal_hf_generate(default_engine, hf, prompt):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_engine)  # the engine's own tokenizer files
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    with torch.no_grad():
        expected = hf.model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
    eos = {hf.model.generation_config.eos_token_id} if isinstance(hf.model.generation_config.eos_token_id, int) else set(hf.model.generation_config.eos_token_id)
    manifest = read_manifest(default_engine, check_files=False)
    got = onnx_greedy(create_session(default_engine / "model.onnx"), manifest, ids, NEW_TOKENS, eos)
    assert got == expected[: len(got)] and len(got) == len(expected), (tokenizer.decode(got), tokenizer.decode(expected))
    assert len(tokenizer.decode(got).strip()) > 0
