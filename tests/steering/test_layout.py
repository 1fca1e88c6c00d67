"""PromptLayout with a real tokenizer (the tiny text engine carries SmolLM2's)."""

import numpy as np
import pytest

from steerc.runtime import Engine
from steerc.runtime.text import Detokenizer
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.layout import PromptLayout


@pytest.fixture(scope="module")
def engine(tiny_text_engine):
    return Engine.load(tiny_text_engine, threads=1)


def test_pieces_join_to_the_whole_prompt(engine):
    tok = engine.tokenizer
    for chat in (True, False):
        layout = PromptLayout.for_tokenizer(tok, chat)
        ids = np.concatenate([layout.head_ids("Read this."), layout.context_ids("Paris is in France.")[0], layout.query_ids("Read this.", "Where is Paris?")])
        text = tok.decode(ids)
        assert "Read this." in text and "Paris is in France." in text and text.rstrip().endswith(("assistant", "Answer:"))


def test_completion_prompts_stop_where_a_base_model_runs_on(engine):
    chat, plain = PromptLayout.for_tokenizer(engine.tokenizer, True), PromptLayout.for_tokenizer(engine.tokenizer, False)
    assert chat.stop == () and "\nQuestion:" in plain.stop
    text = Detokenizer(engine.tokenizer, plain.stop)
    for t in engine.tokenizer(" Paris\nQuestion: Where is Rome?", add_special_tokens=False)["input_ids"]:
        text.push(t)
        if text.stopped:
            break
    assert text.stopped and text.text.strip() == "Paris"
    answer = Steerer(engine, SteerConfig(method="none"), chat=False).answer("Paris is in France.", "Where is Paris?", max_new_tokens=8)
    assert not any(s in answer.text for s in plain.stop)
