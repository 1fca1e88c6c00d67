"""The files a user hands steerc, read one way: text, JSON and JSONL.

Every command reads a user's file through here (``--context``, ``--prompt-file``, ``--dataset``,
``--profile``, ``--api-key-file``, an engine's ``steerc.json``), so a file that is not what it
should be is refused with one line of :class:`UserFileError` naming the file, where in it, and
what to do. What is read (the README's "Input files" says the same):

- UTF-8, with or without a byte-order mark (the mark is dropped); UTF-16 or UTF-32 with a mark.
  Other bytes are refused at the offset of the first one that is not UTF-8; nothing is guessed.
  ``encoding``: the user's ``--encoding NAME`` (any Python codec) instead.
- A NUL byte, or mostly control characters and bytes that are not UTF-8, is not text: refused.
- Line endings ``\\r\\n`` and ``\\r`` become ``\\n``, and the line endings at the end of the file are
  dropped, so a final newline feeds no token. Nothing else changes: no Unicode normalisation,
  no other whitespace stripped. A ``.gz`` file is decompressed first.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from steerc.errors import SteercError

__all__ = ["UserFileError", "read_text", "read_json", "read_jsonl", "json_type", "utf8_problem"]

# UTF-32 LE's mark begins with UTF-16 LE's: test it first.
_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_NOT_TEXT_SHARE = 0.3  # more control characters and undecodable bytes than this: not text
_ODD = dict.fromkeys(c for c in (*range(0x20), *range(0x7F, 0xA0), 0xFFFD) if chr(c) not in "\t\n\r\f\v")  # C0/C1 controls, U+FFFD
_SAVE = "re-save it as UTF-8"


class UserFileError(SteercError, ValueError):
    """A file the user gave cannot be read as what it should hold (also a ``ValueError``, which
    the library's callers of the readers already catch)."""


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserFileError(f"cannot read {what} {path}: it is a folder, not a file") from None
    except OSError as exc:
        raise UserFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserFileError(f"{what} {path} is not a readable gzip file ({exc}); give it uncompressed or gzip it again") from None
    return data


def _not_text_share(text: str) -> float:
    return (len(text) - len(text.translate(_ODD))) / max(len(text), 1)


def _binary(path: Path, what: str, data: bytes, why: str, flag: str | None, fix: str | None) -> UserFileError:
    odd, even = data[1::2], data[0::2]
    if fix is None and b"\0" in data and (odd.count(0) > len(odd) // 2 or even.count(0) > len(even) // 2):  # ASCII as UTF-16, no mark
        fix = "UTF-16 without a byte-order mark? re-save it as UTF-8" + (f", or pass {flag} utf-16-le (or utf-16-be)" if flag else " (or UTF-16 with the mark)")
    return UserFileError(f"{what} {path} is not a text file ({why}); {fix or 'give a UTF-8 text file'}")


def _undecodable(path: Path, what: str, data: bytes, exc: UnicodeDecodeError, codec: str, flag: str | None, fix: str | None) -> UserFileError:
    at, line = exc.start, data.count(b"\n", 0, exc.start) + 1
    fix = fix or _SAVE + (f", or pass {flag} NAME with its encoding (e.g. {flag} cp1252)" if flag else "")
    if codec != "utf-8":
        return UserFileError(f"{what} {path} is not valid {codec}: bytes at offset {at} do not decode ({exc.reason}); {fix}")
    if exc.end >= len(data) and exc.reason == "unexpected end of data":
        return UserFileError(f"{what} {path} is not UTF-8: it ends inside a character at offset {at} (byte 0x{data[at]:02x}: a truncated file, "
                             f"or another encoding); {fix}")
    return UserFileError(f"{what} {path} is not UTF-8: byte 0x{data[at]:02x} at offset {at} (line {line}) is not valid UTF-8; {fix}")


def _decode(data: bytes, path: Path, what: str, encoding: str | None, flag: str | None, fix: str | None) -> str:
    if encoding is not None:
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise UserFileError(f"unknown encoding {encoding!r} for {what} {path}; give a Python codec name such as utf-8, cp1252, latin-1 or utf-16") from None
        codec = "utf-8-sig" if codec == "utf-8" else codec
    else:
        codec = next((name for mark, name in _MARKS if data.startswith(mark)), None)
        if codec is None:
            if b"\0" in data:
                raise _binary(path, what, data, f"NUL byte at offset {data.index(0)}", flag, fix)
            codec = "utf-8"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        if codec == "utf-8" and _not_text_share(data.decode("utf-8", "replace")) > _NOT_TEXT_SHARE:
            raise _binary(path, what, data, "mostly bytes that are neither UTF-8 nor text", flag, fix) from None
        raise _undecodable(path, what, data, exc, codec.removesuffix("-sig"), flag, fix) from None
    if "\0" in text:
        raise _binary(path, what, data, f"NUL character at character {text.index(chr(0))}", flag, fix)
    if _not_text_share(text) > _NOT_TEXT_SHARE:
        raise _binary(path, what, data, "mostly control characters", flag, fix)
    return text


def read_text(path: str | Path, what: str, *, encoding: str | None = None, flag: str | None = None, fix: str | None = None) -> str:
    """The text of a user's file, normalised as the module says. ``what``: how the message names
    it (``--context``); ``flag``: the command's encoding option, offered in the message; ``fix``:
    what to do instead of re-saving it (a file steerc wrote: remake it)."""
    path = Path(path)
    text = _decode(_read_bytes(path, what), path, what, encoding, flag, fix)
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def utf8_problem(data: bytes) -> str | None:
    """Why bytes that arrive without a file (a request body) are not UTF-8 text; None when they are."""
    if b"\0" in data:  # JSON has no raw NUL; UTF-16 without a mark has many
        return f"NUL byte at offset {data.index(0)}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8"
    return None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (for "expected an object, got an array")."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _parse(text: str, where: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserFileError(f"{where}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); expected {expected}") from None
    except (ValueError, RecursionError) as exc:  # a number past Python's digit limit, arrays nested past the stack
        raise UserFileError(f"{where}: not JSON this reader accepts ({type(exc).__name__}); expected {expected}") from None


def read_json(path: str | Path, what: str, expected: str = "a JSON object", fix: str | None = None) -> dict:
    """A user's JSON file holding an object, parsed; ``expected``: the object the messages
    describe; ``fix``: as :func:`read_text`'s."""
    path = Path(path)
    text = read_text(path, what, fix=fix)
    expected += f"; {fix}" if fix else ""
    if not text.strip():
        raise UserFileError(f"{what} {path} is empty; it must be {expected}")
    data = _parse(text, f"{what} {path}", expected)
    if not isinstance(data, dict):
        raise UserFileError(f"{what} {path} holds {json_type(data)}; it must be {expected}")
    return data


def read_jsonl(path: str | Path, what: str, expected: str = "one JSON object per line", *, encoding: str | None = None,
               flag: str | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a user's JSONL file."""
    path = Path(path)
    for line, text in enumerate(read_text(path, what, encoding=encoding, flag=flag).split("\n"), 1):
        if text.strip():
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserFileError(f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno}); expected {expected}") from None
            except (ValueError, RecursionError) as exc:
                raise UserFileError(f"{path}:{line}: not JSON this reader accepts ({type(exc).__name__}); expected {expected}") from None
