import stat

import pytest

from steerc.atomic import write_text_atomic


def test_write_replace_and_failure_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.json"
    assert write_text_atomic(path, "one") == path and path.read_text() == "one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_text_atomic(path, "two")
    with pytest.raises(TypeError):
        write_text_atomic(path, b"not text")  # fails while writing: the old file stays whole
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["out.json"]
