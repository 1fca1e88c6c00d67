"""MethodContext: what method hooks are given (never the Steerer), and the package layering it allows."""

import ast
from pathlib import Path

import numpy as np
import pytest

from steerc.steering.layout import PromptLayout
from steerc.steering.method_context import ContextTokens, MethodContext
from steerc.stores import MemoryStore, NullStore

METHODS_DIR = Path(__file__).parents[2] / "steerc" / "steering" / "methods"


class _Tokenizer:
    def __init__(self):
        self.calls = 0

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        self.calls += 1
        words = text.split()
        return {"input_ids": list(range(len(words))), "offset_mapping": [(i, i + 1) for i in range(len(words))]}


def _layout(tokenizer=None) -> PromptLayout:
    return PromptLayout(tokenizer or _Tokenizer(), False)


def test_context_tokens_tokenizes_a_text_once():
    tokenizer = _Tokenizer()
    tokens = ContextTokens(_layout(tokenizer))
    ids, offsets = tokens("a b c")
    assert ids.dtype == np.int64 and ids.tolist() == [0, 1, 2] and len(offsets) == 3
    tokens("a b c"), tokens("a b c")
    assert tokenizer.calls == 1
    tokens("d e")
    assert tokenizer.calls == 2


def test_fields_are_checked():
    layout = _layout()
    good = MethodContext(None, layout, NullStore(), 0, ContextTokens(layout))
    assert good.with_store(MemoryStore(1 << 20)).store is not good.store
    with pytest.raises(ValueError, match="ContextStore"):
        MethodContext(None, layout, None, 0, ContextTokens(layout))
    for chunk in (-1, 1.5, True):
        with pytest.raises(ValueError, match="prefill_chunk"):
            MethodContext(None, layout, NullStore(), chunk, ContextTokens(layout))
    with pytest.raises(ValueError, match="callable"):
        MethodContext(None, layout, NullStore(), 0, "not callable")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(p for p in METHODS_DIR.glob("*.py") if p.name != "__init__.py"), ids=lambda p: p.stem)
def test_methods_import_neither_the_steerer_nor_the_registry(path):
    """A method is given a MethodContext and calls shared functions (prepare_plain), never the Steerer or another method by name."""
    names = _imports(path)
    assert "steerc.steering.answer" not in names
    assert not {"steerc.steering.methods", "steerc.steering.methods.get_method"} & names
    assert "get_method(" not in path.read_text().replace('get_method({self.name!r})', "")  # the one mention is a message to the user
