"""Atomic writes leave either the whole new file or the old one, never a partial file."""

import pytest

from attnsynth.utils.io import atomic_directory, atomic_path, atomic_write_text


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_directory_all_or_nothing(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_read_json_errors_name_the_file(tmp_path):
    from attnsynth.utils.io import read_json

    with pytest.raises(FileNotFoundError, match="record .*missing.json does not exist"):
        read_json(tmp_path / "missing.json", "record")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="record .*bad.json is not valid JSON .*line 1"):
        read_json(bad, "record")
    atomic_write_text(tmp_path / "ok.json", '{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}
