"""Where a steered request on a stored context spends its time before the first token:
cProfile of ``Steerer.answer`` (query steering, the default) over a context already prepared,
four questions, one new token each.

    python tools/profile_reuse.py ENGINE

Prints the mean seconds per answer and the profile sorted by cumulative time (the question's
prefill is ``run_with_iobinding`` on an in-place engine; the query method's selector pass is
``select_scores``).
"""
import sys, time, cProfile, pstats
from steerc.runtime import Engine
from steerc.steering.answer import Steerer
from steerc.steering.config import SteerConfig
from steerc.stores import MemoryStore
eng = Engine.load(sys.argv[1], threads=2)
ctx = open("examples/super_bowl_50.txt").read()
st = Steerer(eng, SteerConfig(), MemoryStore(1 << 30))
st.answer(ctx, "Who won Super Bowl 50?", max_new_tokens=1)
qs = ["Where was the game played?", "Who was the MVP?", "Which team lost?", "When was it played?"]
t = time.perf_counter()
for q in qs: st.answer(ctx, q, max_new_tokens=1)
print("per reuse answer (1 token):", (time.perf_counter() - t) / len(qs))
pr = cProfile.Profile(); pr.enable()
for q in qs: st.answer(ctx, q, max_new_tokens=1)
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(28)
