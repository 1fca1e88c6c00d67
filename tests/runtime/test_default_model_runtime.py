"""Runtime on the real default model: greedy tokens against HF generate, streaming, the CLI."""


import pytest
import torch
from cli_process import run_cli

from steerc.runtime import Engine, TextStream, complete

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Give me three tips for staying focused.", "Translate 'good morning' into Spanish."]


@pytest.fixture(scope="module")
def engine(default_engine):
    return Engine.load(default_engine)


@pytest.fixture(scope="module")
def hf(default_hf):
    return default_hf.model


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_hf_generate(engine, hf, prompt):
    (c,) = complete(engine, [prompt], max_new_tokens=32)
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    eos = engine.eos_token_ids
    want = want[: next((i for i, t in enumerate(want) if t in eos), len(want))]
    assert c.token_ids == want, (c.text, engine.tokenizer.decode(want))


def test_streaming_equals_non_streaming(engine):
    stream = TextStream(engine, PROMPTS[1], max_new_tokens=32)
    pieces = list(stream)
    (batch,) = complete(engine, [PROMPTS[1]], max_new_tokens=32)
    assert "".join(pieces) == batch.text == stream.completion.text
    assert stream.completion.token_ids == batch.token_ids and len(pieces) > 3


def test_padded_chat_batch_equals_one_by_one(engine):
    together = complete(engine, PROMPTS, max_new_tokens=16)
    for prompt, got in zip(PROMPTS, together):
        assert got.token_ids == complete(engine, [prompt], max_new_tokens=16)[0].token_ids


def test_stop_string_cuts_the_answer(engine):
    full = complete(engine, [PROMPTS[1]], max_new_tokens=32)[0].text
    word = full.split()[3]
    stream = TextStream(engine, PROMPTS[1], max_new_tokens=32, stop=(word,))
    text = "".join(stream)
    assert word not in text and full.startswith(text) and stream.completion.finish_reason == "stop"


def test_generate_cli(default_engine):
    result = run_cli("generate", default_engine, "--prompt", PROMPTS[0], "--max-new-tokens", "16", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "prefill" in result.stderr and "decode" in result.stderr and "tok/s" in result.stderr


def test_generate_cli_refuses_long_prompt(default_engine, tmp_path):
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 3000)
    result = run_cli("generate", default_engine, "--prompt-file", long_prompt, timeout=300)
    assert result.returncode == 2 and "allows at most 2048" in result.stderr and len(result.stderr.strip().splitlines()) == 1
