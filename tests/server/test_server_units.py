"""Server pieces without a server: settings, error messages, admission, route labels, formats."""

import asyncio
import time

import pytest

from steerc.server.errors import ApiError, validation_message
from steerc.server.limits import Admission
from steerc.server.tenants import Tenants
from steerc.server.metrics import route_label
from steerc.server.schemas import CompletionRequest
from steerc.server.settings import ServerSettings


def test_settings_round_trip_and_hide_the_key():
    s = ServerSettings(port=9000, max_queue=0, kv_store="redis://h:1/0", api_key="secret-key-1")
    data = s.to_dict()
    assert data["api_key"] == "***" and "secret-key-1" not in s.to_json()
    assert ServerSettings.from_dict({**data, "api_key": None}) == ServerSettings(port=9000, max_queue=0, kv_store="redis://h:1/0")


@pytest.mark.parametrize("field, value, words", [
    ("max_concurrency", 0, "max_concurrency must be an integer >= 1"),
    ("max_queue", -1, "max_queue must be an integer >= 0"),
    ("port", 70000, "port must be in"),
    ("request_timeout_s", 0, "positive number of seconds"),
    ("request_timeout_s", float("inf"), "positive number of seconds"),
    ("store_timeout_s", 0, "store_timeout_s must be a positive number of seconds"),
    ("max_body_bytes", 10, "max_body_bytes must be an integer >= 1024"),
    ("api_key", "short", "at least 8 characters"),
    ("api_key", "has a space", "at least 8 characters"),
    ("host", " ", "host"),
    ("kv_store", "", "kv_store"),
    ("max_concurrency", True, "max_concurrency"),
])
def test_settings_refuse_bad_values(field, value, words):
    with pytest.raises(ValueError, match=words):
        ServerSettings(**{field: value})


def _errors(body):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    return info.value.errors()


def test_validation_messages_name_the_field_and_the_value():
    message, param = validation_message(_errors({"prompt": "x", "max_tokens": -3}))
    assert message == "max_tokens: Input should be greater than or equal to 1, got -3" and param == "max_tokens"
    message, _ = validation_message(_errors({"prompt": 5}))
    assert message.startswith("prompt: ") and "got 5" in message and "list[" not in message  # union branches folded
    message, _ = validation_message(_errors({"prompt": "x", "logprobs": 3}))
    assert "supports only the default" in message
    message, _ = validation_message(_errors({"prompt": "x", "steer": {"context": "a", "alpha": 2}}))
    assert message.startswith("steer.alpha: ")


def test_api_key_check():
    assert Tenants().check(None) is None
    one = Tenants(api_key="k" * 10)
    assert one.check("Bearer " + "k" * 10) is None and one.check("bearer " + "k" * 10) is None
    many = Tenants(keys={"a" * 10: "team-a", "b" * 10: "team-b"})
    assert many.check("Bearer " + "a" * 10) == "team-a" and many.check("Bearer " + "b" * 10) == "team-b"
    for tenants in (one, many):
        for header in (None, "", "Bearer wrong", "Basic " + "k" * 10, "k" * 10, "Bearer " + "a" * 9):
            with pytest.raises(ApiError) as info:
                tenants.check(header)
            assert info.value.status == 401


def test_admission_queues_then_refuses_then_times_out():
    async def scenario():
        a = Admission(max_active=1, max_queue=1)
        far = time.monotonic() + 10
        await a.acquire(far)  # runs
        waiter = asyncio.ensure_future(a.acquire(far))  # queues
        await asyncio.sleep(0.01)
        assert (a.active, a.waiting) == (1, 1)
        with pytest.raises(ApiError) as full:
            await a.acquire(far)
        assert full.value.status == 429
        a.release()
        await waiter
        assert (a.active, a.waiting) == (1, 0)
        with pytest.raises(ApiError) as late:
            await a.acquire(time.monotonic() + 0.05)  # queued, never admitted
        assert late.value.status == 504 and a.waiting == 0
        a.release()
        assert a.active == 0

    asyncio.run(scenario())


def test_route_labels_are_bounded():
    assert route_label("/v1/contexts/ctx-" + "a" * 64) == "/v1/contexts/{id}"
    assert route_label("/v1/completions") == "/v1/completions"
    assert route_label("/wp-admin/x.php") == "other"
