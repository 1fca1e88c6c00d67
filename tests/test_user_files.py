"""steerc/user_files.py: what a user's text, JSON and JSONL file is read as, and the one-line refusals."""

import codecs
import gzip

import pytest

from steerc.errors import SteercError
from steerc.user_files import UserFileError, read_json, read_jsonl, read_text

TEXT = "Paris is in France.\nCafé au lait — 1 €."


def _file(tmp_path, data: bytes, name="f.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data", [
    TEXT.encode(), codecs.BOM_UTF8 + TEXT.encode(), TEXT.encode("utf-16"), codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"),
    TEXT.encode("utf-32"), (TEXT + "\n").encode(), TEXT.replace("\n", "\r\n").encode() + b"\r\n\r\n", TEXT.replace("\n", "\r").encode(),
], ids=["utf8", "utf8-bom", "utf16-le-bom", "utf16-be-bom", "utf32-bom", "final-newline", "crlf", "cr"])
def test_text_in_every_accepted_form_reads_the_same(tmp_path, data):
    assert read_text(_file(tmp_path, data), "--context") == TEXT


def test_only_line_endings_are_normalised(tmp_path):
    text = "  indented\ttab\n\nblank line above  \u00a0"
    assert read_text(_file(tmp_path, (text + "\n\n").encode()), "--context") == text  # inner and trailing spaces kept
    assert read_text(_file(tmp_path, "e\u0301".encode()), "--context") == "e\u0301"  # no Unicode normalisation (NFC would give é)


@pytest.mark.parametrize("data, fragments", [
    ("café au lait".encode("latin-1"), ["is not UTF-8: byte 0xe9 at offset 3 (line 1) is not valid UTF-8", "re-save it as UTF-8"]),
    ("café".encode("latin-1"), ["is not UTF-8: it ends inside a character at offset 3 (byte 0xe9: a truncated file, or another encoding)"]),
    ("a\nb\n“quoted”".encode("cp1252"), ["byte 0x93 at offset 4 (line 3)"]),
    ("café".encode()[:-1], ["ends inside a character at offset 3 (byte 0xc3"]),
    ("hello there".encode("utf-16-le"), ["not a text file (NUL byte at offset 1)", "UTF-16 without a byte-order mark"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not a text file (NUL byte at offset 8)"]),
    (bytes(range(1, 9)) * 20, ["not a text file (mostly control characters)"]),
    (bytes(range(0x80, 0x100)) * 4, ["not a text file (mostly bytes that are neither UTF-8 nor text)"]),
    (codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", ["is not valid utf-16: bytes at offset 4 do not decode"]),
])
def test_other_bytes_are_refused_in_one_line_naming_the_file(tmp_path, data, fragments):
    path = _file(tmp_path, data)
    with pytest.raises(UserFileError) as info:
        read_text(path, "--context")
    message = str(info.value)
    assert message.startswith(f"--context {path} ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert "--encoding" not in message  # offered only where the command has the option
    assert isinstance(info.value, SteercError) and isinstance(info.value, ValueError)


def test_an_encoding_option_is_offered_and_used(tmp_path):
    path = _file(tmp_path, "café\r\n".encode("cp1252"))
    with pytest.raises(UserFileError, match="or pass --encoding NAME"):
        read_text(path, "--context", flag="--encoding")
    assert read_text(path, "--context", encoding="cp1252") == "café"
    assert read_text(_file(tmp_path, "hi".encode("utf-16-le"), "u16.txt"), "--context", encoding="utf-16-le") == "hi"
    with pytest.raises(UserFileError, match="unknown encoding 'klingon'"):
        read_text(path, "--context", encoding="klingon")
    with pytest.raises(UserFileError, match="is not valid ascii: bytes at offset 3"):
        read_text(path, "--context", encoding="ascii")


def test_missing_folder_and_gzip(tmp_path):
    with pytest.raises(UserFileError, match="cannot read --context .*nope.txt: No such file"):
        read_text(tmp_path / "nope.txt", "--context")
    with pytest.raises(UserFileError, match="it is a folder"):
        read_text(tmp_path, "--context")
    assert read_text(_file(tmp_path, gzip.compress(TEXT.encode()), "t.txt.gz"), "dataset") == TEXT
    with pytest.raises(UserFileError, match="not a readable gzip file"):
        read_text(_file(tmp_path, gzip.compress(TEXT.encode())[:-9], "cut.gz"), "dataset")


def test_a_fix_replaces_the_advice_for_files_steerc_wrote(tmp_path):
    with pytest.raises(UserFileError, match="not a text file .*; recompile it$"):
        read_text(_file(tmp_path, b"\0\1"), "engine manifest", fix="recompile it")


@pytest.mark.parametrize("text, fragments", [
    ('{"a": 1,\n "b": }', [":2:7: not valid JSON (Expecting value)", "expected a JSON object"]),
    ("[1, 2]", ["holds an array; it must be a JSON object"]),
    ("\n \n", ["is empty; it must be a JSON object"]),
    ("[" * 100_000, ["not JSON this reader accepts (RecursionError)"]),
    ('{"n": ' + "9" * 5000 + "}", ["not JSON this reader accepts (ValueError)"]),
])
def test_json_errors_name_the_file_and_where(tmp_path, text, fragments):
    path = _file(tmp_path, text.encode(), "p.json")
    with pytest.raises(UserFileError) as info:
        read_json(path, "profile")
    assert str(info.value).startswith(f"profile {path}") and "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_jsonl_lines_keep_their_numbers(tmp_path):
    path = _file(tmp_path, b'{"a": 1}\r\n\r\n{"b": "\xe2\x80\xa8"}\n', "d.jsonl")  # U+2028 inside a string is not a line break
    assert list(read_jsonl(path, "dataset")) == [(1, {"a": 1}), (3, {"b": "\u2028"})]
    path = _file(tmp_path, b'{"a": 1}\n\n{"b" 2}\n', "d.jsonl")
    with pytest.raises(UserFileError, match=rf"^{path}:3: not valid JSON \(Expecting ':' delimiter at column 6\); expected one JSON object per line$"):
        list(read_jsonl(path, "dataset"))
