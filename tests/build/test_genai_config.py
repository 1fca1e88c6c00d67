"""genai_config.json is accepted by onnxruntime-genai's own parser, which rejects unknown keys."""

import json
import shutil

import pytest

og = pytest.importorskip("onnxruntime_genai")


def test_onnxruntime_genai_accepts_the_engine(tiny_engine):
    config = og.Config(str(tiny_engine))
    assert config is not None


def test_the_parser_is_strict(tiny_engine, tmp_path):
    shutil.copy(tiny_engine / "genai_config.json", tmp_path / "genai_config.json")
    data = json.loads((tmp_path / "genai_config.json").read_text())
    data["model"]["steering"] = {"input": "steer_bias"}
    (tmp_path / "genai_config.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match='Unknown value "steering"'):
        og.Config(str(tmp_path))
