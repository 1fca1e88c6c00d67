"""Runtime on the tiny engine: token-level loops against HF and the eager reference."""

import numpy as np
import pytest
import torch

from steerc.errors import EngineError
from steerc.models import load_model
from steerc.reference import reference_step
from steerc.runtime import ContextTooLongError, Engine, SamplingParams, SteerBias, decode_one_token, generate, prefill


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return Engine.load(tiny_engine)


@pytest.fixture(scope="module")
def hf(tiny_folder):
    return load_model(str(tiny_folder)).model


def _prompt(length, seed):
    return np.random.default_rng(seed).integers(0, 128, (1, length))


def test_greedy_equals_hf_generate(engine, hf):
    ids = _prompt(9, 0)
    got = np.stack(list(generate(engine, ids, max_new_tokens=20, stop_token_ids=set())), 1)
    eos, hf.generation_config.eos_token_id = hf.generation_config.eos_token_id, None  # 20 tokens, EOS or not
    try:
        with torch.no_grad():
            want = hf.generate(torch.tensor(ids), attention_mask=torch.ones(1, 9, dtype=torch.long), max_new_tokens=20, do_sample=False, pad_token_id=0)[:, 9:]
    finally:
        hf.generation_config.eos_token_id = eos
    assert got.tolist() == want.tolist()


def test_padded_batch_equals_one_by_one(engine):
    prompts = [_prompt(n, seed)[0] for n, seed in ((5, 1), (11, 2), (8, 3))]
    width = max(len(p) for p in prompts)
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    batched = np.stack(list(generate(engine, ids, mask, max_new_tokens=12, stop_token_ids=set())), 1)
    for i, p in enumerate(prompts):
        alone = np.stack(list(generate(engine, p[None], max_new_tokens=12, stop_token_ids=set())), 1)
        assert batched[i].tolist() == alone[0].tolist()


def test_chunked_prefill_equals_one_call(engine):
    ids = _prompt(20, 4)
    mask = np.ones((1, 20), np.int64)
    whole, cache_a = prefill(engine, ids, mask, engine.new_cache(1))
    calls = []
    parts, cache_b = prefill(engine, ids, mask, engine.new_cache(1), chunk=6, progress=lambda done, total: calls.append(done))
    assert calls == [6, 12, 18, 20]
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    for a, b in zip(cache_a.flat(), cache_b.flat()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_steered_steps_equal_eager_reference(engine, hf):
    g = engine.geometry
    ids = _prompt(10, 5)
    steering = SteerBias(np.random.default_rng(6).normal(0, 2, (g.num_layers, g.num_heads, 10)).astype(np.float32))
    logits, cache = prefill(engine, ids, np.ones((1, 10), np.int64), engine.new_cache(1), steering)
    past = [torch.zeros(1, g.num_kv_heads, 0, g.head_dim) for _ in range(2 * g.num_layers)]
    ref, ref_present = reference_step(hf, torch.tensor(ids), torch.arange(10)[None], torch.ones(1, 10, dtype=torch.long), past, torch.tensor(steering.for_keys(1, 10)))
    np.testing.assert_allclose(logits, ref[:, -1].numpy(), atol=1e-4)
    token = np.array([7])
    step_logits, _ = decode_one_token(engine, token, np.ones((1, 11), np.int64), cache, steering)
    ref_step, _ = reference_step(hf, torch.tensor([[7]]), torch.tensor([[10]]), torch.ones(1, 11, dtype=torch.long), ref_present, torch.tensor(steering.for_keys(1, 11)))
    np.testing.assert_allclose(step_logits, ref_step[:, -1].numpy(), atol=1e-4)
    plain, _ = prefill(engine, ids, np.ones((1, 10), np.int64), engine.new_cache(1))
    assert np.abs(plain - logits).max() > 1e-2  # the steering is not a no-op


def test_sampling_is_seeded_and_top_k_one_is_greedy(engine):
    ids = _prompt(6, 7)
    run = lambda params: np.stack(list(generate(engine, ids, max_new_tokens=10, sampling=params, stop_token_ids=set())), 1).tolist()  # noqa: E731
    greedy = run(SamplingParams())
    assert run(SamplingParams(temperature=1.5, seed=3)) == run(SamplingParams(temperature=1.5, seed=3))
    assert run(SamplingParams(temperature=1.5, top_k=1, seed=4)) == greedy
    assert run(SamplingParams(temperature=1.5, top_p=1e-6, seed=5)) == greedy
    assert run(SamplingParams(temperature=5.0, seed=6)) != greedy


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": -2}, {"top_p": 0}, {"top_p": 1.5}])
def test_invalid_sampling(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


class _CountingSession:
    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.session.run(*args, **kwargs)


def test_prompt_longer_than_engine_is_refused_before_work(engine):
    counting = _CountingSession(engine.session)
    engine.session, original = counting, engine.session
    try:
        with pytest.raises(ContextTooLongError, match="allows at most 64"):
            list(generate(engine, _prompt(65, 8), max_new_tokens=4))
        assert counting.calls == 0
    finally:
        engine.session = original


def test_generation_stops_at_engine_limit(engine):
    steps = list(generate(engine, _prompt(60, 9), max_new_tokens=50, stop_token_ids=set()))
    assert len(steps) == 5  # positions 61..64 are decoded from, the 5th token is the last one that fits


@pytest.mark.parametrize("target", ["steerc.json", "model.onnx.data"])
def test_corrupt_engine_is_refused(tiny_engine, tmp_path, target):
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(tiny_engine, copy)
    path = copy / target
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(EngineError):
        Engine.load(copy)
