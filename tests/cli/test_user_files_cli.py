"""Every file a user hands a command is read or refused in one line naming it (steerc/user_files.py):
the cases of issue 30 per command, then a property test that no file content reaches "internal error".
The CLI runs in-process (``steerc.cli.main``) so the many examples stay fast."""

import codecs
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerc.cli import main
from steerc.user_files import UserFileError, read_text

LATIN1 = "Le café de Paris est près de la Seine.\n".encode("latin-1")
GOOD = "Paris is the capital of France. Berlin is the capital of Germany.\n"
ROW = {"id": "a", "context": "Paris is in France.", "question": "Where is Paris?", "answers": ["France"]}


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def refused(result, path, *fragments, alone=True) -> str:
    """The one-line user error (exit 2) that names ``path``; ``alone``: nothing printed before it."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("steerc: error: ") and (len(lines) == 1 or not alone), err
    assert str(path) in lines[-1], err
    for fragment in fragments:
        assert fragment in lines[-1], err
    return lines[-1]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _run(engine, context, *extra):
    return cli("run", engine, "--context", context, "--query", "Where is Paris?", "--method", "none", "--store", "memory", "--max-new-tokens", "2", *extra)


def test_run_context_encodings(tiny_text_engine, tmp_path):
    latin1 = _write(tmp_path, "latin1.txt", LATIN1)
    refused(_run(tiny_text_engine, latin1), latin1, "is not UTF-8: byte 0xe9 at offset 6 (line 1)", "re-save it as UTF-8", "--encoding NAME")
    code, answer, err = _run(tiny_text_engine, latin1, "--encoding", "latin-1")
    assert code == 0, err
    utf8 = _run(tiny_text_engine, _write(tmp_path, "utf8.txt", LATIN1.decode("latin-1").encode()))
    assert utf8[:2] == (0, answer)  # the same text, read through --encoding or as UTF-8
    refused(_run(tiny_text_engine, _write(tmp_path, "u16.txt", GOOD.encode("utf-16-le"))), tmp_path / "u16.txt", "UTF-16 without a byte-order mark")
    refused(_run(tiny_text_engine, _write(tmp_path, "empty.txt", b"\n\n")), tmp_path / "empty.txt", "is empty")
    refused(_run(tiny_text_engine, _write(tmp_path, "bin.txt", bytes(range(256)))), tmp_path / "bin.txt", "is not a text file")


def test_run_line_endings_and_final_newline_feed_the_same_tokens(tiny_text_engine, tmp_path):
    lf = _run(tiny_text_engine, _write(tmp_path, "lf.txt", GOOD.rstrip("\n").encode()))
    assert lf[0] == 0, lf[2]
    tokens = lf[2].split(" context tokens selected")[0].rsplit(" of ", 1)[1]  # "... 0 of N context tokens selected"
    for name, data in (("crlf.txt", GOOD.replace("\n", "\r\n").encode() + b"\r\n"), ("bom.txt", codecs.BOM_UTF8 + GOOD.encode()),
                       ("u16bom.txt", GOOD.encode("utf-16"))):
        other = _run(tiny_text_engine, _write(tmp_path, name, data))
        assert other[0] == 0 and other[1] == lf[1] and f" of {tokens} context tokens selected" in other[2], (name, other[2])


def test_generate_prompt_file(tiny_text_engine, tmp_path):
    def generate(path, *extra):
        return cli("generate", tiny_text_engine, "--prompt-file", path, "--max-new-tokens", "2", "--no-stream", *extra)

    bad = _write(tmp_path, "p.txt", b"Bonjour \x93le monde\x94\n")
    refused(generate(bad), bad, "byte 0x93 at offset 8 (line 1)", "--encoding")
    assert generate(bad, "--encoding", "cp1252")[0] == 0
    assert generate(_write(tmp_path, "u16.txt", "Hello there".encode("utf-16")))[0] == 0
    refused(generate(_write(tmp_path, "empty.txt", b"")), tmp_path / "empty.txt", "is empty")
    refused(generate(bad, "--encoding", "no-such-codec"), bad, "unknown encoding 'no-such-codec'")


def test_eval_dataset(tiny_text_engine, tmp_path):
    def evaluate(path, *extra):
        return cli("eval", tiny_text_engine, "--dataset", path, "--methods", "none", "--max-new-tokens", "2", "--out", tmp_path / "out", "--fresh", *extra)

    row = json.dumps(ROW | {"context": "Le café est à Paris, en France."}, ensure_ascii=False)
    latin1 = _write(tmp_path, "l1.jsonl", (json.dumps(ROW | {"id": "b"}) + "\n" + row + "\n").encode("latin-1"))
    refused(evaluate(latin1), latin1, "line 2", "--encoding")
    assert evaluate(latin1, "--encoding", "latin-1")[0] == 0
    refused(evaluate(_write(tmp_path, "b.jsonl", b"\x00\x01" * 50)), tmp_path / "b.jsonl", "not a text file")
    bad = _write(tmp_path, "j.jsonl", (json.dumps(ROW) + '\n{"id": "b",\n').encode())
    refused(evaluate(bad), bad, f"{bad}:2: not valid JSON", "one JSON object per line")
    out = tmp_path / "out"  # an earlier run's file the resume reads, garbled
    (out / "run.json").write_bytes(b"\xff\x00garbage")
    refused(cli("eval", tiny_text_engine, "--dataset", _write(tmp_path, "ok.jsonl", json.dumps(ROW).encode()), "--methods", "none", "--out", out,
                "--split", "all"), out / "run.json", "--fresh", alone=False)  # after the progress bar's first line


def test_profile_files(tiny_text_engine, tmp_path):
    context = _write(tmp_path, "c.txt", GOOD.encode())
    for name, data, fragment in (("bin.json", bytes(range(256)), "is not a text file"), ("l1.json", b'{"a": "caf\xe9"}', "is not UTF-8"),
                                 ("arr.json", b"[1, 2]", "holds an array; it must be a JSON object"),
                                 ("cut.json", b'{"steerc_profile": 1, "selector_heads": [[0, ', "not valid JSON")):
        path = _write(tmp_path, name, data)
        refused(_run(tiny_text_engine, context, "--profile", path), path, fragment)
        refused(cli("eval", tiny_text_engine, "--dataset", _write(tmp_path, "ok.jsonl", json.dumps(ROW).encode()), "--profile", path), path, fragment)
    dataset = _write(tmp_path, "d.jsonl", b'{"id": "a", "context": "caf\xe9"}\n')
    refused(cli("profile", tiny_text_engine, "--dataset", dataset, "-o", tmp_path / "p.json"), dataset, "is not UTF-8")


def test_serve_key_file_and_profile(tiny_text_engine, tmp_path):
    def serve(*extra):  # every case is refused before the engine loads or anything binds
        return cli("serve", tiny_text_engine, *extra)

    refused(serve("--api-key-file", _write(tmp_path, "k1", b"s\xe9cret-key\n")), tmp_path / "k1", "is not UTF-8")
    refused(serve("--api-key-file", _write(tmp_path, "k2", b"key-one-long\nkey-two-long\n")), tmp_path / "k2", "holds 2 non-empty lines")
    refused(serve("--api-key-file", _write(tmp_path, "k3", b"short\n")), tmp_path / "k3", "at least 8 characters")
    refused(serve("--api-key-file", tmp_path / "nope"), tmp_path / "nope", "cannot read --api-key-file")
    refused(serve("--profile", _write(tmp_path, "p.json", b"\x00\x01\x02")), tmp_path / "p.json", "not a text file")
    code, _, err = cli("serve", tmp_path / "no-engine", "--api-key-file", _write(tmp_path, "k4", codecs.BOM_UTF8 + b"a-good-key-123\r\n"))
    assert code == 2 and "no-engine" in err and "api" not in err  # the key was read; the missing engine stopped it


@pytest.mark.parametrize("command", ["inspect", "check-tensorrt"])
@pytest.mark.parametrize("data, fragment", [(bytes(range(256)) * 4, "not a text file"), (b'{"format": "steerc-engine", "fi', "not valid JSON"),
                                            (b'{"format": "caf\xe9"}', "is not UTF-8"), (b"[]", "holds an array"), (b"", "is empty")])
def test_corrupt_engine_manifest(tiny_text_engine, tmp_path, command, data, fragment):
    engine = tmp_path / "engine"
    shutil.copytree(tiny_text_engine, engine)
    manifest = _write(engine, "steerc.json", data)
    refused(cli(command, engine), manifest, fragment, "recompile it with --force")


# --- property: whatever the bytes, exit 0 or a one-line error (exit 2) that names the file when it is the file's fault ---

_text = st.text(max_size=120)
CONTENTS = st.one_of(
    st.binary(max_size=400),
    _text.map(lambda t: t.encode()[:-1]),  # truncated UTF-8 (cut inside a character when the text ends in one)
    _text.map(lambda t: t.encode("latin-1", "replace")),
    _text.map(lambda t: t.encode("cp1252", "replace")),
    _text.map(lambda t: t.encode("utf-16-le")),  # UTF-16 without a byte-order mark
    _text.map(lambda t: t.encode("utf-16")),
    st.builds(lambda unit, n: unit * n, st.sampled_from([b"a", b"word ", b"\xe9", b"{", b"[", b"\n", b"\r\n", b"9"]), st.integers(1, 200_000)),  # huge lines
    st.just(b""),
    _text.map(lambda t: json.dumps(ROW | {"context": t or "x"}, ensure_ascii=False).encode()),  # near-valid JSONL rows
)
_MARKS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _not_utf8(data: bytes) -> bool:
    """Bytes that must be refused whatever the text: no byte-order mark, and a NUL or not UTF-8."""
    if data.startswith(_MARKS):
        return False
    try:
        return "\0" in data.decode("utf-8")
    except UnicodeDecodeError:
        return True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_text_engine):
    folder = tmp_path_factory.mktemp("property")
    shutil.copytree(tiny_text_engine, folder / "engine")
    _write(folder, "good.txt", GOOD.encode())
    return folder


COMMANDS = {  # name -> (file name, argv given the file, the folder and the engine)
    "run --context": ("context.txt", lambda f, d, e: ["run", e, "--context", f, "--query", "Where?", "--method", "none", "--store", "memory",
                                                     "--max-new-tokens", "1"]),
    "generate --prompt-file": ("prompt.txt", lambda f, d, e: ["generate", e, "--prompt-file", f, "--max-new-tokens", "1", "--no-stream"]),
    "eval --dataset": ("data.jsonl", lambda f, d, e: ["eval", e, "--dataset", f, "--methods", "none", "--split", "all", "--max-new-tokens", "1",
                                                     "--out", d / "eval", "--fresh"]),
    "run --profile": ("profile.json", lambda f, d, e: ["run", e, "--context", d / "good.txt", "--query", "q", "--profile", f, "--max-new-tokens", "1"]),
    "profile --dataset": ("data.jsonl", lambda f, d, e: ["profile", d / "no-engine", "--dataset", f, "--split", "all", "-o", d / "p.json"]),
    "serve --api-key-file": ("key", lambda f, d, e: ["serve", d / "no-engine", "--api-key-file", f]),
    "inspect": ("engine/steerc.json", lambda f, d, e: ["inspect", d / "engine", "--no-hash-check"]),
    "check-tensorrt": ("engine/steerc.json", lambda f, d, e: ["check-tensorrt", d / "engine"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_file_reaches_internal_error(workdir, command):
    name, argv = COMMANDS[command]
    path, engine = workdir / name, workdir / "engine"
    manifest = (engine / "steerc.json").read_bytes()

    @settings(derandomize=True, max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=CONTENTS)
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            read_text(path, "file")
            readable = True
        except UserFileError:
            readable = False
        try:
            code, _, err = cli(*argv(path, workdir, engine))
        finally:
            (engine / "steerc.json").write_bytes(manifest)
        assert code in (0, 2) and "internal error" not in err, err
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("steerc: error: "), err
        if _not_utf8(data) or not readable:  # the file's fault: the message says which file
            assert code == 2 and str(path) in err, err

    check()
