"""``steerc compile --share-attention``: syntax and range errors are one clear line, exit 2."""


import pytest
from cli_process import run_cli


def steerc(*args):
    return run_cli(*args, timeout=600)


@pytest.mark.parametrize("groups, message", [("20", "not a layer range"), ("3-3", "at least two layers"), ("1-4,4-6", "overlap")])
def test_bad_syntax_is_refused_before_loading(tmp_path, tiny_folder, groups, message):
    result = steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--share-attention", groups)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "invalid option" in result.stderr and not (tmp_path / "e").exists()


def test_group_outside_the_model_is_refused(tmp_path, tiny_folder):
    result = steerc("compile", str(tiny_folder), "-o", str(tmp_path / "e"), "--share-attention", "1-2")
    assert result.returncode == 2 and "outside the model: it has 2 layers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists()
