"""capture_query_vectors: structure, negative cases, and parity of ``attn_queries`` with the
queries the eager model's attention receives (prefill, decode, padded, chunk after past)."""

import copy

import pytest
import torch
from conftest import step_inputs, steerable
from tiny_models import TINY_MODELS

from steerc.capture import run_program
from steerc.errors import PassError
from steerc.passes import QUERY_OUTPUT, QueryVectorSettings, capture_query_vectors
from steerc.reference import reference_queries

aten = torch.ops.aten

SHAPES = {"prefill": (1, 0, 7, 0), "decode": (2, 6, 1, 0), "padded-prefill": (3, 0, 6, 2), "chunk-after-past": (3, 4, 5, 2)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_queries_equal_the_eager_attention_queries(arch, shape):
    model, sp = steerable(arch)
    g = sp.geometry
    B, P, S, pad = SHAPES[shape]
    ids, pos, mask, kv = step_inputs(g, B, P, S, pad)
    bias = torch.zeros(B, g.num_layers, g.num_heads, P + S)
    outs = run_program(sp.analysis)(ids, pos, mask, kv, bias)
    queries = outs[len(sp.outputs) + 1]
    ref = reference_queries(model, ids, pos, mask, kv)
    assert queries.shape == (B, g.num_layers, g.num_heads, g.head_dim)
    torch.testing.assert_close(queries, ref, atol=1e-4, rtol=1e-5)
    assert queries.abs().sum() > 0


def test_padding_rows_do_not_count():
    model, sp = steerable("llama")
    g = sp.geometry
    ids, pos, mask, kv = step_inputs(g, 2, 0, 6, left_pad=3)
    bias = torch.zeros(2, g.num_layers, g.num_heads, 6)
    queries = run_program(sp.analysis)(ids, pos, mask, kv, bias)[len(sp.outputs) + 1]
    # Row 0 has 3 real tokens; its sum equals the sum of the last 3 rows of an unpadded run of those tokens.
    real = ids[:1, 3:]
    alone = run_program(sp.analysis)(real, torch.arange(3)[None], torch.ones(1, 3, dtype=torch.long), [t[:1, :, :0] for t in kv],
                                     torch.zeros(1, g.num_layers, g.num_heads, 3))[len(sp.outputs) + 1]
    torch.testing.assert_close(queries[:1], alone, atol=1e-4, rtol=1e-5)


def test_structure_adds_one_output_after_importance():
    _, sp = steerable("qwen2")
    report = sp.analysis_reports[-1]
    assert report.name == "capture_query_vectors" and report.outputs_added == (QUERY_OUTPUT,)
    assert report.sites_per_layer == {0: 1, 1: 1}
    graph = sp.analysis.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    assert output.args[0][-1].meta["steerc_output"] == QUERY_OUTPUT
    assert [s.name for s in sp.analysis_outputs][-2:] == ["attn_importance", QUERY_OUTPUT]
    # The decoder graph itself has no such output.
    assert len(next(n for n in sp.program.graph_module.graph.nodes if n.op == "output").args[0]) == len(sp.outputs)


def test_second_application_raises():
    _, sp = steerable("llama")
    gm = copy.deepcopy(sp.analysis.graph_module)
    with pytest.raises(PassError, match="applied twice"):
        capture_query_vectors(gm, QueryVectorSettings(2, 4, 16, "LlamaForCausalLM"))


def test_wrong_geometry_raises():
    _, sp = steerable("llama")
    gm = copy.deepcopy(sp.program.graph_module)
    with pytest.raises(PassError, match="expected 0..2"):
        capture_query_vectors(copy.deepcopy(gm), QueryVectorSettings(3, 4, 16, "LlamaForCausalLM"))
    with pytest.raises(PassError, match="query is"):
        capture_query_vectors(gm, QueryVectorSettings(2, 4, 8, "LlamaForCausalLM"))


def test_settings_validation_and_json():
    s = QueryVectorSettings(2, 4, 16, "M")
    assert QueryVectorSettings.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="head_dim"):
        QueryVectorSettings(2, 4, 0)
    with pytest.raises(ValueError, match="identifier"):
        QueryVectorSettings(2, 4, 16, mask_input="attention mask")
