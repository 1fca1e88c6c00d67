"""The KV cache in a Triton model, two ways (``kv``), and the ``sequence_batching`` state config
of the implicit one.

* ``explicit`` (default): ``past_key_values.{i}.*`` are ordinary inputs and ``present.{i}.*``
  ordinary outputs, exactly the engine's contract. The client holds the cache and sends it back
  each step; any batching, any scheduling, no server state.
* ``implicit``: Triton keeps the cache per sequence (correlation id) with its implicit state
  management: ``sequence_batching { state [...] }`` maps each ``present.{i}.*`` output to the
  ``past_key_values.{i}.*`` input of the sequence's next request. What Triton requires, from its
  docs (docs/user_guide/implicit_state_management.md) and sources (core
  src/sequence_batch_scheduler/sequence_batch_scheduler.cc ``GenerateInitialStateData``,
  src/sequence_state.cc ``SequenceStates::Initialize``, onnxruntime_backend src/onnxruntime.cc):

  - Without ``initial_state`` the first request of a sequence gets *uninitialized* state with
    every variable dim set to 1: a garbage one-token past. So every state has an
    ``initial_state`` with ``zero_data: true``, a ``name``, the state's dtype, the same rank,
    and fixed dims only: batch 1 and a zero-length ``past_sequence_length`` (0 elements, so the
    first request is an ordinary prefill over an empty cache).
  - State inputs/outputs are *not* listed under ``input``/``output`` (the onnxruntime backend
    counts them separately and refuses a config whose input count differs from the graph's);
    listing a state output under ``output`` would only send the cache back to the client.
  - No ``control_input`` (START/END/READY/CORRID): Triton feeds control tensors to the model as
    inputs, and the onnxruntime backend refuses controls the graph does not have. None are
    needed: the zero-length initial state already makes the first step a prefill. Clients still
    mark requests with ``sequence_start`` / ``sequence_end`` so Triton resets and frees the slot.
  - ``use_same_buffer_for_input_output`` / ``use_growable_memory`` are left off, also for
    TensorRT. Triton recommends one buffer only when the model reads its whole input state
    before writing the output state, and growable memory (KIND_GPU only, and it requires the
    single buffer) appends to the end of the buffer. steerc's cache is ``[B, Hkv, T, D]`` with
    ``present = concat(past, new)`` along ``T``, which is not the outermost dim: writing
    ``present`` into ``past``'s buffer, or growing it at the end, would move every head's rows,
    corrupting the cache. Separate buffers cost one copy of the cache per sequence.
  - ``oldest`` strategy with ``max_candidate_sequences`` = the engine's ``max_batch``: an instance
    interleaves that many sequences' steps (one request per execution, see max_batch_size in
    :func:`~steerc.deploy.triton.config.model_config`); more sequences wait in Triton's backlog
    until one ends or idles out.
"""

from __future__ import annotations

from steerc.deploy.triton.pbtxt import list_text, text, triton_dims, triton_dtype
from steerc.errors import EngineError

__all__ = ["KV_MODES", "PAST_PREFIX", "PRESENT_PREFIX", "SEQUENCE_IDLE_US", "kv_pairs", "initial_dims", "sequence_batching"]

KV_MODES = ("explicit", "implicit")
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
SEQUENCE_IDLE_US = 60_000_000  # implicit KV: a sequence idle this long (60 s) is dropped and its cache freed


def kv_pairs(inputs: list[dict], outputs: list[dict]) -> list[tuple[dict, dict]]:
    """(``past_key_values.X`` input, ``present.X`` output) pairs, in output order; the contract
    must pair every cache input with an output and vice versa."""
    past = {s["name"][len(PAST_PREFIX):]: s for s in inputs if s["name"].startswith(PAST_PREFIX)}
    present = {s["name"][len(PRESENT_PREFIX):]: s for s in outputs if s["name"].startswith(PRESENT_PREFIX)}
    if set(past) != set(present):
        odd = sorted({PAST_PREFIX + k for k in set(past) - set(present)} | {PRESENT_PREFIX + k for k in set(present) - set(past)})
        raise EngineError(f"the engine's KV tensors do not pair up ({', '.join(odd[:4])} …): implicit KV needs a present.X output for every past_key_values.X input; "
                          "use --kv explicit")
    pairs = []
    for key, out in present.items():
        inp = past[key]
        if triton_dtype(inp["dtype"]) != triton_dtype(out["dtype"]):
            raise EngineError(f"{inp['name']} is {inp['dtype']} but {out['name']} is {out['dtype']}: Triton state needs one dtype; use --kv explicit")
        pairs.append((inp, out))
    return pairs


def initial_dims(spec: dict) -> list[int]:
    """Fixed dims of an empty cache: batch 1 (one sequence), zero past tokens."""
    dims = []
    for d in spec["dims"]:
        if d == "batch_size":
            dims.append(1)
        elif d == "past_sequence_length":
            dims.append(0)
        elif isinstance(d, int):
            dims.append(d)
        else:
            raise EngineError(f"{spec['name']} has the dynamic dim {d!r}; implicit KV knows only batch_size and past_sequence_length: use --kv explicit")
    if 0 not in dims:
        raise EngineError(f"{spec['name']} has no past_sequence_length dim; implicit KV cannot start it empty: use --kv explicit")
    return dims


def sequence_batching(pairs: list[tuple[dict, dict]], max_batch) -> list[str]:
    """The ``config.pbtxt`` lines of implicit KV: ``sequence_batching`` with one state per pair."""
    states = []
    for inp, out in pairs:
        dtype = triton_dtype(inp["dtype"])
        states.append("\n".join([
            "    {",
            f"      input_name: {text(inp['name'])}",
            f"      output_name: {text(out['name'])}",
            f"      data_type: {dtype}",
            f"      dims: {list_text(triton_dims(inp['dims']))}  # {list_text(inp['dims'])}",
            "      initial_state: {",
            f"        name: {text('empty ' + inp['name'])}",
            f"        data_type: {dtype}",
            f"        dims: {list_text(initial_dims(inp))}",
            "        zero_data: true",
            "      }",
            "    }",
        ]))
    return [
        "# Implicit KV: Triton keeps past_key_values.* per sequence (correlation id), feeding each request's",
        "# present.* back as the next request's past_key_values.*; a sequence starts from an empty cache",
        "# (batch 1, zero past tokens), so its first request is the prefill. Mark requests sequence_start /",
        "# sequence_end. No control inputs: the graph has none and needs none.",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {SEQUENCE_IDLE_US}",
        "  oldest {",
        f"    max_candidate_sequences: {max(1, int(max_batch or 1))}",
        "  }",
        "  state [",
        ",\n".join(states),
        "  ]",
        "}",
    ]
