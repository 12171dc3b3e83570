"""Atomic writes: the file appears complete or not at all, with normal permissions."""

import os

import pytest

from fsmis import io


def test_atomic_write_leaves_no_temp_and_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_json({"a": 1}, tmp_path / "out.json")
    finally:
        os.umask(old)
    assert io.read_json(tmp_path / "out.json") == {"a": 1}
    assert oct((tmp_path / "out.json").stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
