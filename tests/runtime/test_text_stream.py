"""TextStream over a prompt the caller tokenized equals the same prompt given as text."""

import pytest

from steerc.runtime import Engine, TextStream
from steerc.runtime.engine import ContextTooLongError
from steerc.runtime.text import _tokenize, chat_ids


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def test_prompt_ids_stream_equals_the_text_stream(engine):
    ids = chat_ids(engine.tokenizer, [{"role": "user", "content": "Name a river."}])
    assert ids == _tokenize(engine, "Name a river.", chat=True)
    by_text, by_ids = TextStream(engine, "Name a river.", max_new_tokens=6), TextStream(engine, prompt_ids=ids, max_new_tokens=6)
    assert "".join(by_text) == "".join(by_ids)
    assert by_ids.completion.token_ids == by_text.completion.token_ids and by_ids.completion.prompt_tokens == len(ids)


def test_prompt_ids_are_checked(engine):
    with pytest.raises(ValueError, match="exactly one"):
        TextStream(engine, "x", prompt_ids=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        TextStream(engine)
    with pytest.raises(ContextTooLongError, match="at most 384"):
        TextStream(engine, prompt_ids=[1] * 384)
