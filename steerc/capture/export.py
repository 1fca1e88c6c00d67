"""Capture a decoder step with ``torch.export`` and hand its graph to passes.

:func:`capture_decoder_step` runs a non-strict export of :class:`DecoderStep`: ATen
pre-dispatch IR, parameters lifted, attention still one SDPA (or eager softmax) node per
site. Passes rewrite ``ep.graph_module`` in place, before any decomposition; they may
append inputs and outputs, which :func:`rebuild_program` registers in a new program's
signature. Backends then export that program (ONNX decomposes it itself).

Rewritten graphs are never re-exported: re-tracing the captured HF graph re-derives
reshape/index guards that pin ``sequence_length != 1`` and would forbid decode.

Dynamic dimensions are named and bounded (an unbounded dim invites specialisation
guards). Sizes 0 and 1 must stay legal (prefill has past length 0, decode has one new
token), so export runs with size-oblivious reasoning for backed sizes. HF's SDPA
integration evaluates ``q_len == 1`` before checking for compilation, which leaves a
spurious ``seq != 1`` guard; the taken branch does not depend on it (parity at S = 1 and
P = 0 is tested), so programs run without the export-time guard check.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import torch
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec, TensorArgument
from torch.utils import _pytree as pytree

from steerc.capture.decoder_step import DecoderStep
from steerc.capture.io_spec import DecoderGeometry, TensorSpec

__all__ = ["CaptureShapes", "capture_decoder_step", "rebuild_program", "run_program", "example_inputs"]

log = logging.getLogger(__name__)

# Traced example: batch 2, 3 past tokens, 5 new ones; none of these may be 0 or 1.
EXAMPLE_BATCH, EXAMPLE_PAST, EXAMPLE_SEQ = 2, 3, 5


@dataclass(frozen=True)
class CaptureShapes:
    max_batch: int
    max_seq_len: int

    def dims(self) -> dict[str, Dim]:
        return {
            "batch_size": Dim("batch_size", min=1, max=self.max_batch),
            "sequence_length": Dim("sequence_length", min=1, max=self.max_seq_len),
            "past_sequence_length": Dim("past_sequence_length", min=0, max=self.max_seq_len - 1),
            "total_sequence_length": Dim("total_sequence_length", min=1, max=self.max_seq_len),
        }


@contextlib.contextmanager
def _size_oblivious():
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        yield


def example_inputs(g: DecoderGeometry, dtype: torch.dtype, batch=EXAMPLE_BATCH, past=EXAMPLE_PAST, seq=EXAMPLE_SEQ, seed=0):
    """Random, valid decoder-step inputs: ``(ids, positions, mask, [k0, v0, ...])``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, g.vocab_size, (batch, seq), generator=gen)
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    kv = [torch.randn(batch, g.num_kv_heads, past, g.head_dim, generator=gen).to(dtype) for _ in range(2 * g.num_layers)]
    return ids, positions, mask, kv


def _dynamic_shapes(specs: list[TensorSpec], dims: dict[str, Dim]) -> list[dict[int, Dim]]:
    return [{axis: dims[d] for axis, d in enumerate(spec.dims) if isinstance(d, str)} for spec in specs]


def capture_decoder_step(model, g: DecoderGeometry, inputs: list[TensorSpec], shapes: CaptureShapes) -> ExportedProgram:
    """Export ``DecoderStep(model)`` (inputs without ``steer_bias``) with named dynamic dims."""
    step = DecoderStep(model, g.num_layers).eval()
    dtype = next(model.parameters()).dtype
    ids, positions, mask, kv = example_inputs(g, dtype)
    per_input = _dynamic_shapes(inputs, shapes.dims())
    dynamic = {"input_ids": per_input[0], "position_ids": per_input[1], "attention_mask": per_input[2], "past_key_values": per_input[3:]}
    with torch.no_grad(), _size_oblivious():
        ep = torch.export.export(
            step, (ids, positions, mask, kv), dynamic_shapes=dynamic, strict=False, prefer_deferred_runtime_asserts_over_guards=True
        )
    dropped = drop_shape_asserts(ep.graph_module)
    if dropped:
        log.info("dropped %d trace-time shape assertion(s): %s", len(dropped), "; ".join(dropped))
    ep.graph_module.meta["steerc_dropped_asserts"] = dropped
    return ep


_ASSERT_TARGETS = {torch.ops.aten._assert_scalar.default, torch.ops.aten.sym_constrain_range_for_size.default, torch.ops.aten.sym_constrain_range.default}


def drop_shape_asserts(gm: torch.fx.GraphModule) -> list[str]:
    """Remove runtime shape assertions that tracing recorded (``_assert_scalar`` and range
    constraints) together with the symbolic arithmetic only they used; return their messages.

    They encode which decomposition path the trace took for the example sizes (view vs copy in
    ``matmul``, HF's ``q_len == 1`` check), not conditions for correct values; kept, they would
    reject decode (S = 1) or a fresh prefill (P = 0)."""
    dropped = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _ASSERT_TARGETS:
            message = node.args[1] if node.target == torch.ops.aten._assert_scalar.default and len(node.args) > 1 else str(node.target)
            dropped.append(str(message))
            gm.graph.erase_node(node)
    changed = True
    while changed:  # the SymInt/SymBool arithmetic that only fed the assertions
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.op == "call_function" and not node.users and _is_symbolic(node):
                gm.graph.erase_node(node)
                changed = True
    gm.recompile()
    return dropped


def _is_symbolic(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), (torch.SymInt, torch.SymBool, torch.SymFloat, bool, int))


def rebuild_program(ep: ExportedProgram, gm: torch.fx.GraphModule | None = None) -> ExportedProgram:
    """A new ExportedProgram over ``ep``'s (pass-mutated) graph whose signature lists the
    placeholders and outputs that passes added as user inputs / outputs, in graph order, after
    the original ones. Passes that only append keep the original calling convention:
    ``program.module()(*original_args, *added_inputs)``.

    Passes may also remove user inputs (their placeholder is gone) and user outputs (the
    output node no longer returns them; the others keep their order): those are dropped from
    the signature and from the call's input/output structure, so e.g. a removed element of
    the ``past_key_values`` list makes that list shorter. A graph with no removal gets exactly
    the signature of the append-only case."""
    gm = gm if gm is not None else ep.graph_module
    sig = ep.graph_signature
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    known_inputs = {spec.arg.name for spec in sig.input_specs if hasattr(spec.arg, "name")}
    added_inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name not in known_inputs]
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = list(output_node.args[0])
    removed_inputs = {spec.arg.name for spec in sig.input_specs if hasattr(spec.arg, "name") and spec.arg.name not in placeholders}
    kept_outputs = _kept_outputs(sig.output_specs, outputs)
    added_outputs = outputs[len(kept_outputs) :]
    input_specs = [*sig.input_specs, *(InputSpec(InputKind.USER_INPUT, TensorArgument(n.name), None) for n in added_inputs)]
    output_specs = [*sig.output_specs, *(OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in added_outputs)]
    removed_user_in: list[int] = []  # positions among the original user inputs / outputs (= leaves of the call's in/out spec)
    removed_user_out: list[int] = []
    if removed_inputs:
        user_in = [s for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
        removed_user_in = [i for i, s in enumerate(user_in) if s.arg.name in removed_inputs]
        input_specs = [s for s in input_specs if not (hasattr(s.arg, "name") and s.arg.name in removed_inputs)]
    if len(kept_outputs) != len(sig.output_specs):
        kept = set(kept_outputs)
        user_out = [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
        removed_user_out = [j for j, i in enumerate(user_out) if i not in kept]
        output_specs = [spec for i, spec in enumerate(sig.output_specs) if i in kept] + output_specs[len(sig.output_specs) :]

    call_graph = copy.deepcopy(ep.module_call_graph)
    root = call_graph[0].signature
    if root is not None:
        args, kwargs = pytree.tree_unflatten([0] * root.in_spec.num_leaves, root.in_spec)
        if removed_user_in:
            args, kwargs = _drop_leaves((args, kwargs), removed_user_in)
        _, root.in_spec = pytree.tree_flatten(((*args, *([0] * len(added_inputs))), kwargs))
        if added_outputs or removed_user_out:
            out = pytree.tree_unflatten([0] * root.out_spec.num_leaves, root.out_spec)
            out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            if removed_user_out:
                out = _drop_leaves(out, removed_user_out)
            _, root.out_spec = pytree.tree_flatten((*out, *([0] * len(added_outputs))))
        removed_out_names = {sig.output_specs[i].arg.name for i in range(len(sig.output_specs)) if i not in set(kept_outputs)}
        root.inputs = [*(a for a in root.inputs if getattr(a, "name", None) not in removed_inputs), *(TensorArgument(n.name) for n in added_inputs)]
        root.outputs = [*(a for a in root.outputs if getattr(a, "name", None) not in removed_out_names), *(TensorArgument(n.name) for n in added_outputs)]
        if root.forward_arg_names:
            root.forward_arg_names = [*root.forward_arg_names, *(n.name for n in added_inputs)]
    return ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=ExportGraphSignature(input_specs=input_specs, output_specs=output_specs),
        state_dict=ep.state_dict,
        range_constraints=ep.range_constraints,
        module_call_graph=call_graph,
        example_inputs=None,
        constants=ep.constants,
        verifiers=ep.verifiers,
    )


def _kept_outputs(specs, outputs) -> list[int]:
    """Indices of the original output specs the graph still returns: its outputs are the
    original ones in order, some possibly removed, then the added ones."""
    if len(outputs) >= len(specs) and all(getattr(o, "name", None) == s.arg.name for o, s in zip(outputs, specs)):
        return list(range(len(specs)))  # nothing removed (append-only passes)
    kept, j = [], 0
    for i, spec in enumerate(specs):
        if j < len(outputs) and getattr(outputs[j], "name", None) == getattr(spec.arg, "name", None):
            kept.append(i)
            j += 1
    return kept


def _drop_leaves(tree, positions: list[int]):
    """``tree`` (tuples, lists, dicts of leaves) without the leaves at the given flat positions."""
    leaves, spec = pytree.tree_flatten(tree)
    marker = object()
    drop = set(positions)
    marked = pytree.tree_unflatten([marker if i in drop else leaf for i, leaf in enumerate(leaves)], spec)

    def prune(node):
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(prune(x) for x in node if x is not marker)
        if isinstance(node, list):
            return [prune(x) for x in node if x is not marker]
        if isinstance(node, dict):
            return {k: prune(v) for k, v in node.items() if v is not marker}
        return node

    return prune(marked)


def run_program(ep: ExportedProgram):
    """The program as a callable module (without the export-time shape guards, see module doc)."""
    return ep.module(check_guards=False)
