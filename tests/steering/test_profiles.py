"""Head profiles: JSON round trip, the checks against an engine, the shipped profiles, and
profiling itself on the tiny text engine (resumable; the log-probability metric against a
direct computation)."""

import json

import numpy as np
import pytest

from steerc.eval.data import load_jsonl
from steerc.runtime import Engine
from steerc.runtime.generate import positions_for
from steerc.steering.answer import Steerer
from steerc.steering.profiles import HeadProfile, builtin_profile, fallback_selector, load_profile, selector_heads
from steerc.steering.profiling import ProfileSettings, answer_logprob, profile_heads
from steerc.stores import MemoryStore


class _Engine:
    """What HeadProfile.check reads of an engine."""

    def __init__(self, layers=2, heads=4, sha="a" * 64):
        from steerc.capture.io_spec import DecoderGeometry

        self.geometry = DecoderGeometry(num_layers=layers, num_heads=heads, num_kv_heads=2, head_dim=16, hidden_size=64, vocab_size=100)
        self.manifest = {"source": {"spec": "tiny", "sha256": sha}}


def test_profile_json_round_trip_and_old_form(tmp_path):
    profile = HeadProfile(((1, 2), (0, 3)), ((1, 0),), {"spec": "tiny", "sha256": "a" * 64}, {"num_layers": 2, "num_heads": 4}, {"examples": 3})
    path = tmp_path / "p.json"
    profile.save(path)
    assert load_profile(path) == HeadProfile(((0, 3), (1, 2)), ((1, 0),), profile.model, profile.geometry, {"examples": 3})
    assert "[0, 3]" in path.read_text()  # one pair per line, readable
    path.write_text(json.dumps({"heads": [[0, 1], [1, 2]]}))
    assert load_profile(path).steered_heads == ((0, 1), (1, 2)) and load_profile(path).selector_heads == ()


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must be a JSON object"),
    ("{", "not valid JSON"),
    ('{"steerc_profile": 9, "selector_heads": [[0, 1]]}', "format version 9"),
    ('{"steerc_profile": 1, "selector_heads": [[0, -1]]}', "pairs of non-negative integers"),
    ('{"steerc_profile": 1}', "needs selector_heads, steered_heads or both"),
])
def test_bad_profiles_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_profile(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_profile_check_against_the_engine():
    ok = HeadProfile(((1, 3),), ((0, 0),), {"spec": "tiny", "sha256": "a" * 64}, {"num_layers": 2, "num_heads": 4})
    ok.check(_Engine())
    with pytest.raises(ValueError, match="made for tiny .* not this engine's"):
        ok.check(_Engine(sha="b" * 64))
    with pytest.raises(ValueError, match="for 2 layers x 4 heads, this engine has 3 x 4"):
        ok.check(_Engine(layers=3))
    with pytest.raises(ValueError, match=r"profile head \[1, 4\] is outside the engine"):
        HeadProfile(((1, 4),)).check(_Engine())


def test_shipped_profile_matches_the_default_weights():
    import hashlib

    from steerc.models.loading import _default_gguf

    gguf = _default_gguf()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    profile = builtin_profile(_Engine(30, 9, digest))
    assert profile is not None and profile.selector_heads and profile.model["sha256"] == digest
    assert builtin_profile(_Engine(sha="c" * 64)) is None
    assert fallback_selector(30, 9)[0] == (7, 0) and fallback_selector(30, 9)[-1] == (21, 8) and fallback_selector(1, 2) == ((0, 0), (0, 1))


@pytest.mark.parametrize("logits", ["last", "all"])
def test_answer_logprob_is_the_teacher_forced_mean(tiny_text_folder, compiled_engine, logits):
    """The mean log-probability of the answer tokens from one call over question + answer of an
    engine returning every position; a ``--logits last`` engine (one row per call) gives the same."""
    full = Engine.load(compiled_engine(tiny_text_folder, max_seq_len=384, max_batch=8, logits="all"), threads=1)
    engine = Engine.load(compiled_engine(tiny_text_folder, max_seq_len=384, max_batch=8, logits=logits), threads=1)
    assert engine.last_logits == (logits == "last") and not full.last_logits
    s = Steerer(full)
    prepared, _ = s.prepare("Alpha beta gamma. Delta epsilon.", s.config.__class__(method="none"))
    query, answer = s.layout.query_ids(s.config.prefixes[0], "What?"), np.array([10, 20, 30], np.int64)
    ids = np.concatenate([query, answer])
    mask = np.ones((1, prepared.length + len(ids)), np.int64)
    g = full.geometry
    out, _ = full.forward(ids[None], positions_for(mask, len(ids)), mask, prepared.kv, np.zeros((1, g.num_layers, g.num_heads, mask.shape[1]), np.float32))
    assert out.shape[1] == len(ids)
    rows = out[0, len(query) - 1 : -1].astype(np.float64)
    want = np.mean([r[t] - np.log(np.exp(r - r.max()).sum()) - r.max() for r, t in zip(rows, answer)])
    assert answer_logprob(engine, prepared.kv, query, answer, None) == pytest.approx(want, abs=1e-5)
    bias = np.random.default_rng(0).normal(0, 2, (g.num_layers, g.num_heads, prepared.length)).astype(np.float32)
    assert answer_logprob(engine, prepared.kv, query, answer, bias) == pytest.approx(answer_logprob(full, prepared.kv, query, answer, bias), abs=1e-5)
    assert answer_logprob(engine, prepared.kv, query, answer, bias) != pytest.approx(want, abs=1e-3)  # the bias is applied


def test_profile_heads_resumes_and_stays_inside_the_engine(tiny_text_engine, tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"id": f"q{i}", "context": "The cat sat on the mat. The dog ran to the park. Birds sing at dawn.", "question": q, "answers": [a]}
            for i, (q, a) in enumerate([("Where did the dog run?", "the park"), ("Who sat on the mat?", "The cat"), ("When do birds sing?", "dawn")])]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    examples = load_jsonl(data)
    engine = Engine.load(tiny_text_engine, threads=1)
    settings = ProfileSettings(num_selector=3, num_steered=2, top_layers=1)
    work, stages = tmp_path / "work.jsonl", []
    first = profile_heads(Steerer(engine, store=MemoryStore(1 << 30)), examples, settings, work=work, progress=lambda st, d, t: stages.append((st, d, t)))
    assert len(first.selector_heads) == 3 and 1 <= len(first.steered_heads) <= 4
    assert all(a < 2 and b < 4 for a, b in (*first.selector_heads, *first.steered_heads))
    assert stages[-1][1:] == (3, 3) and first.geometry == {"num_layers": 2, "num_heads": 4}
    # Drop the last row (an interrupted run): the rerun computes only that one and gives the same profile.
    lines = work.read_text().splitlines()
    work.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    stages.clear()
    again = profile_heads(Steerer(engine, store=MemoryStore(1 << 30)), examples, settings, work=work, progress=lambda st, d, t: stages.append((st, d, t)))
    assert again == first and [s for s in stages if s[0].startswith("heads")] == [(stages[-1][0], 3, 3)]
    with pytest.raises(ValueError, match="another engine or other settings"):
        profile_heads(Steerer(engine), examples, ProfileSettings(num_selector=4), work=work)
    assert selector_heads(engine) == fallback_selector(2, 4)  # no shipped profile for random weights
