"""Assembly on the other KV layouts: --kv in-place engines and shared-attention engines (no keys on shared layers)."""

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.generate import prefill
from steerc.steering.documents import assemble
from steerc.stores import MemoryStore


@pytest.mark.parametrize("settings", [dict(kv="in-place"), dict(share_attention=((0, 1),))], ids=["in-place", "shared-attention"])
def test_recompute_one_equals_a_full_prefill_on_every_layout(tiny_folder, compiled_engine, settings):
    engine = Engine.load(compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, **settings), threads=1)
    rng = np.random.default_rng(0)
    head, docs = rng.integers(0, 128, 5), [rng.integers(0, 128, n) for n in (8, 6, 9)]
    assembled = assemble(engine, head, docs, MemoryStore(), 1.0)
    ids = np.concatenate([head, *docs])[None]
    full = prefill(engine, ids, np.ones_like(ids), engine.new_cache(1))[1]
    assert assembled.kv.keyless == full.keyless == engine.keyless_layers
    for a, b in zip(assembled.kv.flat(), full.flat()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    cheap = assemble(engine, head, docs, MemoryStore(), 0.25)
    assert cheap.kv.length == full.length and cheap.report.recomputed_tokens == 2 + 3
