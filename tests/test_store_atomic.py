"""atomic_write / atomic_open: replace or keep, never a torn file, no temp files left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aml.store import TMP_PREFIX, atomic_open, atomic_write, decode, encode


def _temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_content_replaced_and_mode_kept(tmp_path: Path) -> None:
    target = tmp_path / "patterns.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert target.stat().st_mode & 0o777 == 0o640
    assert _temps(tmp_path) == []


def test_mtime_kept_when_given(tmp_path: Path) -> None:
    target = tmp_path / "decisions.json"
    target.write_bytes(b"[]")
    old_ns = 1_700_000_000_123_456_789
    os.utime(target, ns=(old_ns, old_ns))
    atomic_write(target, encode(b'[{"id": "x"}]', "gzip"), mtime_ns=old_ns)
    assert target.stat().st_mtime_ns == old_ns
    assert decode(target.read_bytes()) == (b'[{"id": "x"}]', "gzip")


def test_new_file_created(tmp_path: Path) -> None:
    target = tmp_path / "fresh.json"
    atomic_write(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert _temps(tmp_path) == []


def test_failing_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "solutions.json"
    target.write_bytes(b"original")
    before = target.stat().st_mtime_ns
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"partial new cont")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"original"
    assert target.stat().st_mtime_ns == before
    assert _temps(tmp_path) == []


def test_missing_directory_raises_without_residue(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic_write(tmp_path / "nope" / "x.json", b"{}")
    assert _temps(tmp_path) == []


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    """A killed writer's temporary file goes once unchanged for STALE_TEMP_S; one being written (recent ctime), a
    document, a symlink and a directory with the prefix, and a directory that cannot be listed are left alone."""
    import time

    from aml.store.atomic import STALE_TEMP_S, remove_stale_temp

    left = tmp_path / f"{TMP_PREFIX}killed"
    left.write_bytes(b'[{"id": "half')
    document = tmp_path / "patterns.json"
    document.write_text("[]")
    link = tmp_path / f"{TMP_PREFIX}link"
    link.symlink_to(document)
    (tmp_path / f"{TMP_PREFIX}dir").mkdir()
    assert remove_stale_temp([tmp_path]) == []  # just written: a live writer's, as far as anyone can tell
    later = time.time() + STALE_TEMP_S + 1
    assert remove_stale_temp([tmp_path, tmp_path / "missing"], now=later) == [left]
    assert not left.exists() and document.read_text() == "[]" and link.is_symlink()
    assert (tmp_path / f"{TMP_PREFIX}dir").is_dir()
    fresh = tmp_path / f"{TMP_PREFIX}fresh"
    fresh.write_bytes(b"x")
    assert remove_stale_temp([tmp_path], older_than_s=0, now=time.time() + 1) == [fresh]
