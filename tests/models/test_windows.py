"""``sliding_window``: which configs have a sliding window, and what the compile manifest does with it."""

from types import SimpleNamespace

from steerc.build.compile import _attention_entry
from steerc.models.windows import sliding_window

GQA = {"op": "GroupQueryAttention", "sites": 2, "nodes": 10, "aligned_rows": True}


def test_sliding_window_of_configs():
    assert sliding_window(SimpleNamespace()) is None  # Llama: no attribute
    assert sliding_window(SimpleNamespace(sliding_window=None)) is None  # Mistral with it off
    assert sliding_window(SimpleNamespace(sliding_window=4096)) == 4096  # Mistral v0.1
    assert sliding_window(SimpleNamespace(sliding_window=512, layer_types=["sliding_attention", "full_attention"])) == 512  # Gemma 3
    assert sliding_window(SimpleNamespace(sliding_window=512, layer_types=["full_attention"] * 2)) is None  # a window no layer uses


def test_aligned_rows_only_without_a_sliding_window():
    assert _attention_entry(GQA, SimpleNamespace(sliding_window=None)) == GQA
    off = _attention_entry(GQA, SimpleNamespace(sliding_window=4, layer_types=["sliding_attention", "full_attention"]))
    assert off["aligned_rows"] is False and "sliding window of 4" in off["aligned_rows_off"]
    assert _attention_entry({"op": "Attention"}, SimpleNamespace(sliding_window=4)) == {"op": "Attention"}
