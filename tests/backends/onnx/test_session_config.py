"""Session config entries of every steerc session: the defaults, and $STEERC_ORT_CONFIG on top."""

import pytest

from steerc.backends.onnx.session import SESSION_CONFIG, session_config


def test_onnx_runtimes_defaults_by_default(monkeypatch):
    monkeypatch.delenv("STEERC_ORT_CONFIG", raising=False)
    assert session_config() == SESSION_CONFIG == {}  # spinning stays on: faster on an idle machine (docs/BENCHMARKS.md)


def test_environment_entries_override_and_add(monkeypatch):
    monkeypatch.setenv("STEERC_ORT_CONFIG", "session.intra_op.allow_spinning=1; session.dynamic_block_base = 4;")
    assert session_config() == {"session.intra_op.allow_spinning": "1", "session.dynamic_block_base": "4"}


def test_a_malformed_entry_is_refused(monkeypatch):
    monkeypatch.setenv("STEERC_ORT_CONFIG", "allow_spinning")
    with pytest.raises(ValueError, match="key=value"):
        session_config()
