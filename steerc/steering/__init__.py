"""steerc steering: what to steer and how, on top of the engine runtime.

This package owns steering: the steering config (:mod:`steerc.steering.config`), the prompt
layout around a context and a question (:mod:`~steerc.steering.layout`), character spans and
sentences (:mod:`~steerc.steering.spans`), LLMSteer's token selection
(:mod:`~steerc.steering.selection`), context preparation into stored, reusable KV caches
(:mod:`~steerc.steering.contexts`), the :class:`Steerer` that answers questions
(:mod:`~steerc.steering.answer`), the selection page (:mod:`~steerc.steering.html`), the
steering methods, one object each behind one interface (:mod:`~steerc.steering.methods`),
query-aware evidence selection (:mod:`~steerc.steering.evidence`) and head profiles
(:mod:`~steerc.steering.profiles`, chosen by :mod:`~steerc.steering.profiling`). The engine it drives is :mod:`steerc.runtime`; prepared
contexts are kept in :mod:`steerc.stores`.

    from steerc.runtime import Engine
    from steerc.steering import SteerConfig, Steerer
    from steerc.stores import open_store
    steerer = Steerer(Engine.load("engines/smollm2-135m-instruct"), SteerConfig(), open_store(None))
    print(steerer.answer(context, "Who won?").text)
"""

from steerc.steering.answer import SteeredAnswer, Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import PreparedContext, prepare_context
from steerc.steering.layout import PromptLayout

__all__ = ["PreparedContext", "PromptLayout", "SteerConfig", "SteeredAnswer", "Steerer", "prepare_context"]
