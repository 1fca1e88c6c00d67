"""steerc steering: what to steer and how, on top of the engine runtime.

This package owns steering: the steering config (:mod:`steerc.steering.config`; every setting
declared once, with its limits and help, through :mod:`~steerc.steering.options`; the methods
named in :mod:`~steerc.steering.registry`), the prompt
layout around a context and a question (:mod:`~steerc.steering.layout`), character spans and
sentences (:mod:`~steerc.steering.spans`), LLMSteer's token selection
(:mod:`~steerc.steering.selection`), context preparation into stored, reusable KV caches
(:mod:`~steerc.steering.contexts`; the prepared context and its stored form in
:mod:`~steerc.steering.prepared`, each KV stored once in :mod:`~steerc.steering.stored_kv`, every
store key in :mod:`~steerc.steering.keys`, the one store fill in
:mod:`~steerc.steering.cache_fill`), compacted contexts (:mod:`~steerc.steering.compaction`), the
:class:`Steerer` that answers questions (:mod:`~steerc.steering.answer`), the selection page
(:mod:`~steerc.steering.html`), the steering methods, one object each behind one interface
(:mod:`~steerc.steering.methods`; their hooks are given a
:class:`~steerc.steering.method_context.MethodContext`, not the Steerer), query-aware evidence
selection (:mod:`~steerc.steering.evidence`), Q-LLM's blocks (:mod:`~steerc.steering.blocks`)
and head profiles (:mod:`~steerc.steering.profiles`, chosen by
:mod:`~steerc.steering.profiling`). The engine it drives is :mod:`steerc.runtime`; prepared
contexts are kept in :mod:`steerc.stores`.

    from steerc.runtime import Engine
    from steerc.steering import SteerConfig, Steerer
    from steerc.stores import open_store
    steerer = Steerer(Engine.load("engines/smollm2-135m-instruct"), SteerConfig(), open_store(None))
    print(steerer.answer(context, "Who won?").text)
"""

from steerc.steering.answer import SteeredAnswer, Steerer
from steerc.steering.config import SteerConfig
from steerc.steering.contexts import prepare_context
from steerc.steering.layout import PromptLayout
from steerc.steering.prepared import PreparedContext

__all__ = ["PreparedContext", "PromptLayout", "SteerConfig", "SteeredAnswer", "Steerer", "prepare_context"]
