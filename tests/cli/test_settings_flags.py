"""`steerc serve`'s flags are made from ServerSettings' declared fields: every setting has one,
each reads back to the setting (scaled to its unit), and what is not given keeps the default."""

import dataclasses

import pytest

from steerc.cli import build_parser
from steerc.cli.settings_flags import settings_from_args
from steerc.server.settings import ServerSettings
from steerc.settings_base import flag_of

NOT_FLAGS = {"api_key", "api_keys_file"}  # three sources (--api-key, --api-key-file, STEERC_API_KEY) and --api-keys, in steerc.cli.serve


def _settings(*argv):
    args = build_parser().parse_args(["serve", "ENGINE", *argv])
    return settings_from_args(ServerSettings, args, api_key=None, api_keys_file=None)


def test_every_server_setting_has_one_flag_declared_with_it():
    missing = [f.name for f in dataclasses.fields(ServerSettings) if flag_of(f) is None and f.name not in NOT_FLAGS]
    assert not missing, f"settings without a flag: {missing} (declare them with setting(...))"


def test_no_flags_give_the_declared_defaults():
    assert _settings() == ServerSettings()


@pytest.mark.parametrize("argv, field, value", [
    (["--port", "9001"], "port", 9001),
    (["--memory-store-mb", "64"], "memory_store_bytes", 64 << 20),
    (["--kv-store-max-gb", "0.5"], "kv_store_max_bytes", 1 << 29),
    (["--request-timeout", "12.5"], "request_timeout_s", 12.5),
    (["--gc-interval", "30"], "gc_interval_s", 30.0),
    (["--kv-store-dtype", "fp16"], "kv_store_dtype", "fp16"),
    (["--no-chat"], "chat", False),
    (["--no-ui"], "ui", False),
    (["--share-contexts"], "share_contexts", True),
    (["--kv-store", "memory"], "kv_store", "memory"),
])
def test_each_flag_reads_back_to_its_setting(argv, field, value):
    settings = _settings(*argv)
    assert getattr(settings, field) == value
    assert dataclasses.replace(settings, **{field: getattr(ServerSettings(), field)}) == ServerSettings()  # nothing else moved


def test_a_bad_value_is_the_settings_own_error():
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        _settings("--max-batch", "0")
    with pytest.raises(SystemExit):  # argparse: not a number
        _settings("--port", "eighty")
