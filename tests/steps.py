"""Helpers the tests share: the tiny architectures captured once, random decoder-step inputs,
and the comparison of a step's outputs on real positions.

A plain module (``conftest`` re-exports it): test folders with their own ``conftest.py``
(tests/server) shadow the name ``conftest`` for modules collected after them, so new test
modules import these from here.
"""

import functools

import torch
from tiny_models import tiny_model

from steerc.build.steerable import capture_steerable
from steerc.settings import CompileSettings
from steerc.stores import MemoryStore, StoreUnavailableError

TEST_SETTINGS = CompileSettings(max_seq_len=256, max_batch=8)


@functools.lru_cache(maxsize=None)
def steerable(name: str):
    """(model, SteerableProgram) for a tiny architecture, captured once per session."""
    model = tiny_model(name)
    return model, capture_steerable(model, TEST_SETTINGS)


def step_inputs(g, batch: int, past: int, seq: int, left_pad: int = 0, seed: int = 1):
    """Random decoder-step inputs; the first row is left-padded by ``left_pad`` positions."""
    from steerc.capture import example_inputs
    from steerc.reference import padded_positions

    ids, _, mask, kv = example_inputs(g, torch.float32, batch, past, seq, seed=seed)
    if left_pad:
        mask[0, :left_pad] = 0
    positions = padded_positions(mask, past)
    return ids, positions, mask, kv


def assert_step_close(got, ref, mask: torch.Tensor, seq: int, atol: float = 1e-5):
    """Compare (logits, present) of a decoder step on the positions that are real tokens:
    query rows and key positions that left padding masks out carry no defined value."""
    got_logits, got_present = got
    ref_logits, ref_present = ref
    rows = mask[:, -seq:].bool()  # [B, S]
    torch.testing.assert_close(torch.as_tensor(got_logits)[rows], ref_logits[rows], atol=atol, rtol=0)
    keys = mask.bool()  # [B, P+S]
    for g_kv, r_kv in zip(got_present, ref_present):
        g_kv = torch.as_tensor(g_kv)
        torch.testing.assert_close(g_kv.transpose(1, 2)[keys], r_kv.transpose(1, 2)[keys], atol=atol, rtol=0)


class FailingStore(MemoryStore):
    """A memory store (named like Redis) that fails every operation while ``down`` and counts
    the operations tried; for the store-outage tests of tests/stores and tests/server."""

    tier = "redis"

    def __init__(self, capacity: int = 1 << 26):
        super().__init__(capacity)
        self.down, self.calls = False, 0

    def _check(self):
        self.calls += 1
        if self.down:
            raise StoreUnavailableError("the Redis context store at redis://127.0.0.1:1/0 failed: connection refused")

    def get(self, key):
        self._check()
        return super().get(key)

    def put(self, key, entry):
        self._check()
        super().put(key, entry)

    def __contains__(self, key):
        self._check()
        return super().__contains__(key)

    def add_ref(self, target, holder):
        self._check()
        super().add_ref(target, holder)

    def drop_ref(self, target, holder):
        self._check()
        return super().drop_ref(target, holder)

    def ping(self):
        self._check()
