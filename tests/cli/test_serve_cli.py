"""`steerc serve` refuses bad options and unusable stores before it binds anything."""

import subprocess

from cli_process import run_cli


def _serve(*args: str) -> subprocess.CompletedProcess:
    return run_cli("serve", *args, timeout=120)


def test_bad_options_are_refused_with_the_reason(tiny_text_engine):
    r = _serve(str(tiny_text_engine), "--max-concurrency", "0")
    assert r.returncode == 2 and "max_concurrency must be an integer >= 1" in r.stderr
    r = _serve(str(tiny_text_engine), "--api-key", "short")
    assert r.returncode == 2 and "at least 8 characters" in r.stderr


def test_unreachable_redis_is_refused_at_start(tiny_text_engine):
    r = _serve(str(tiny_text_engine), "--kv-store", "redis://127.0.0.1:1/0")
    assert r.returncode == 2 and "redis-server is running" in r.stderr and "Traceback" not in r.stderr


def test_missing_engine_is_refused(tmp_path):
    r = _serve(str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_the_banner_says_when_batched_rows_may_differ_from_solo_runs(tiny_text_engine, tiny_folder, compiled_engine):
    from steerc.cli.serve import batch_note
    from steerc.runtime import Engine

    concat = Engine.load(tiny_text_engine)
    assert "--kv in-place" in batch_note(concat, 8) and "--max-batch 1" in batch_note(concat, 8)
    assert batch_note(concat, 1) is None  # nothing is batched
    in_place = Engine.load(compiled_engine(tiny_folder, max_seq_len=64, max_batch=4, kv="in-place"))
    assert in_place.aligned_rows and batch_note(in_place, 8) is None
