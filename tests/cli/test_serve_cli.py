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
