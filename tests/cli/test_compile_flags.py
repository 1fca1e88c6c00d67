"""`steerc compile`'s flags are made from CompileSettings' declared fields: every setting has one
(but the listed exceptions), each reads back to its setting, what is not given keeps the default,
the choices are settings.py's, and the special cases (--weights fp32/fp16, the --dtype default of
--target tensorrt, --share-attention's syntax) parse as before."""

import dataclasses

import pytest

from steerc.backends import backend_choices
from steerc.cli import build_parser
from steerc.cli.compile import compile_settings
from steerc.settings import (ATTN_IMPLEMENTATIONS, DEVICES, DTYPES, FULL_WEIGHT_DTYPES, KV_LAYOUTS, TARGETS, WEIGHT_METHODS, WEIGHTS,
                             CompileSettings)
from steerc.settings_base import flag_of

# Settings whose flag is written by hand in steerc.cli.compile, and why.
NOT_GENERATED = {"backend": "--backend: add_backend_option, the registry's choices when the parser is built (tests/backends/test_registry.py)"}
# Every flag `steerc compile` had before its flags were generated: none may disappear.
FLAGS = ("--output", "--opset", "--dtype", "--max-seq-len", "--max-batch", "--attn", "--no-verify", "--no-importance", "--share-attention",
         "--target", "--backend", "--device", "--weights", "--weight-block", "--weight-method", "--weight-asymmetric", "--kv", "--force",
         "--skip-memory-check")


def _parser():
    parser = build_parser()
    return next(a for a in parser._actions if a.choices and "compile" in a.choices).choices["compile"]


def _args(*argv):
    return build_parser().parse_args(["compile", "MODEL", "-o", "ENGINE", *argv])


def _settings(*argv):
    return compile_settings(_args(*argv))


def _action(flag):
    return next(a for a in _parser()._actions if flag in a.option_strings)


def test_every_compile_setting_has_one_flag_declared_with_it():
    missing = [f.name for f in dataclasses.fields(CompileSettings) if flag_of(f) is None and f.name not in NOT_GENERATED]
    assert not missing, f"settings without a flag: {missing} (declare them with setting(...) in steerc/settings.py)"
    for name in NOT_GENERATED:  # an exception is an exception: no declared flag, and its hand-written flag is there
        field = next(f for f in dataclasses.fields(CompileSettings) if f.name == name)
        assert flag_of(field) is None
        assert _action("--" + name).dest == name


def test_no_flag_disappeared_and_none_is_doubled():
    options = [s for a in _parser()._actions for s in a.option_strings if s.startswith("--")]
    assert sorted(set(FLAGS) - set(options)) == []
    assert len(options) == len(set(options))


def test_no_flags_give_the_declared_defaults():
    assert _settings() == CompileSettings()


def test_the_choices_are_the_settings():
    assert _action("--dtype").choices == list(DTYPES)
    assert _action("--attn").choices == list(ATTN_IMPLEMENTATIONS)
    assert _action("--target").choices == list(TARGETS)
    assert _action("--device").choices == list(DEVICES)
    assert _action("--weight-method").choices == list(WEIGHT_METHODS)
    assert _action("--kv").choices == list(KV_LAYOUTS)
    assert _action("--weights").choices == [*FULL_WEIGHT_DTYPES, *(w for w in WEIGHTS if w != "full")] == ["fp32", "fp16", "int8", "int4"]
    assert tuple(_action("--backend").choices) == backend_choices()


# One case per flagged setting (test_every_flag_has_a_case keeps it that way): the flag, the setting, its value.
CASES = [
    (["--opset", "20"], "opset", 20),
    (["--dtype", "fp16"], "dtype", "fp16"),
    (["--max-seq-len", "128"], "max_seq_len", 128),
    (["--max-batch", "4"], "max_batch", 4),
    (["--attn", "eager"], "attn_implementation", "eager"),
    (["--no-verify"], "verify", False),
    (["--no-importance"], "importance", False),
    (["--share-attention", "20-24,25-29"], "share_attention", (tuple(range(20, 25)), tuple(range(25, 30)))),
    (["--target", "tensorrt", "--dtype", "fp32"], "target", "tensorrt"),
    (["--backend", "aoti"], "backend", "aoti"),
    (["--device", "cuda"], "device", "cuda"),
    (["--weights", "int8"], "weights", "int8"),
    (["--weight-block", "64"], "weight_block", 64),
    (["--weight-asymmetric"], "weight_symmetric", False),
    (["--weight-method", "rtn"], "weight_method", "rtn"),
    (["--kv", "in-place"], "kv", "in-place"),
    (["--logits", "all"], "logits", "all"),
]


# Flags valid only together with another: field -> (argv, the settings they give).
PAIRED = {"attention_op": (["--attention-op", "group-query", "--kv", "in-place"], CompileSettings(kv="in-place", attention_op="group-query")),
          "kv_cache": (["--kv-cache", "int8", "--kv", "in-place", "--attention-op", "group-query"],
                       CompileSettings(kv="in-place", attention_op="group-query", kv_cache="int8"))}


def test_every_flag_has_a_case():
    assert sorted([field for _, field, _ in CASES] + list(PAIRED)) == sorted(f.name for f in dataclasses.fields(CompileSettings))


@pytest.mark.parametrize("field", sorted(PAIRED))
def test_paired_flags_read_back(field):
    argv, want = PAIRED[field]
    assert _settings(*argv) == want
    with pytest.raises(ValueError, match="add --kv in-place"):
        _settings(*argv[:2])  # alone


@pytest.mark.parametrize("argv, field, value", CASES)
def test_each_flag_reads_back_to_its_setting(argv, field, value):
    settings = _settings(*argv)
    assert getattr(settings, field) == value
    assert dataclasses.replace(settings, **{field: getattr(CompileSettings(), field)}) == CompileSettings()  # nothing else moved


def test_quantized_weights_with_in_place_kv():
    assert _settings("--weights", "int4", "--kv", "in-place") == CompileSettings(weights="int4", kv="in-place")


def test_full_precision_weights_name_the_dtype():
    assert _settings("--weights", "fp16") == CompileSettings(dtype="fp16", weights="full")
    assert _settings("--weights", "fp32", "--dtype", "fp32") == CompileSettings()
    assert _settings("--weights", "fp32", "--target", "tensorrt") == CompileSettings(dtype="fp32", target="tensorrt")
    with pytest.raises(ValueError, match="--weights fp16 contradicts --dtype fp32; give one of them"):
        _settings("--weights", "fp16", "--dtype", "fp32")


def test_tensorrt_target_defaults_to_fp16():
    assert _settings("--target", "tensorrt") == CompileSettings(target="tensorrt", dtype="fp16")
    assert _settings("--target", "tensorrt", "--dtype", "fp32").dtype == "fp32"
    assert _settings("--target", "onnx").dtype == "fp32"


def test_share_attention_groups():
    assert _settings("--share-attention", "20-29").share_attention == (tuple(range(20, 30)),)
    with pytest.raises(ValueError, match="is not a layer range FIRST-LAST"):
        _settings("--share-attention", "20")
    with pytest.raises(ValueError, match="needs layer ranges"):
        _settings("--share-attention", "")


def test_the_old_backend_name_still_parses():
    assert _settings("--backend", "torch-tensorrt", "--device", "cuda").backend == "tensorrt"


@pytest.mark.parametrize("argv", [["--kv", "sideways"], ["--dtype", "fp8"], ["--weights", "full"], ["--weights", "bf16"], ["--attn", "flash"],
                                  ["--target", "tflite"], ["--device", "tpu"], ["--weight-method", "gptq"], ["--opset", "x"],
                                  ["--max-batch", "many"], ["--weight-block", "1.5"], ["--backend", "tvm"]])
def test_a_bad_value_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _args(*argv)
    assert exc.value.code == 2 and argv[0] in capsys.readouterr().err


def test_a_value_out_of_range_is_the_settings_own_error():
    with pytest.raises(ValueError, match="opset must be one of"):
        _settings("--opset", "12")
    with pytest.raises(ValueError, match="weight_block must be a power of two"):
        _settings("--weight-block", "48")
    with pytest.raises(ValueError, match="max_batch must be in"):
        _settings("--max-batch", "1")
    with pytest.raises(ValueError, match="minmax always keeps each block's minimum"):
        _settings("--weight-method", "minmax", "--weight-asymmetric")


def test_help_shows_the_defaults_once_and_no_internal_ones():
    text = " ".join(_parser().format_help().split())
    assert "most tokens (past + new) one call may see (default: 2048)" in text
    assert "(default: full)" not in text and "(default: ())" not in text  # --weights / --share-attention say theirs in words
    assert "fp16 with --target tensorrt" in text
