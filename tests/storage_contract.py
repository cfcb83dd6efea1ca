"""The behaviour every repository storage backend must have (:mod:`aml.backup.storage`).

A backend's test module subclasses :class:`StorageContract` and provides a ``storage`` fixture returning
a fresh, empty storage of that kind.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.backup.storage import Storage, StorageError, StorageExists, StorageNotFound

NAME_PART = st.text(alphabet="abcdef0123456789-_.", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


class StorageContract:
    """Tests run against the ``storage`` fixture."""

    def test_write_read_list_delete(self, storage: Storage) -> None:
        storage.write("config.json", b'{"a": 1}\n')
        storage.write("packs/ab/ab01", b"x" * 1000)
        storage.write("packs/cd/cd02", b"")
        storage.write("snapshots/bodies/s1.zst", b"body")
        assert storage.read("config.json") == b'{"a": 1}\n'
        assert storage.read("packs/cd/cd02") == b""
        listed = {o.name: o.size for o in storage.list("packs/")}
        assert listed == {"packs/ab/ab01": 1000, "packs/cd/cd02": 0}
        assert {o.name for o in storage.list()} == {"config.json", "packs/ab/ab01", "packs/cd/cd02",
                                                    "snapshots/bodies/s1.zst"}
        assert {o.name for o in storage.list("snapshots/")} == {"snapshots/bodies/s1.zst"}
        assert list(storage.list("index/")) == []
        info = storage.stat("packs/ab/ab01")
        assert info is not None and info.size == 1000 and info.mtime > 0
        assert storage.stat("packs/ab/nope") is None
        storage.delete("packs/ab/ab01")
        storage.delete("packs/ab/ab01")  # missing is fine
        assert storage.stat("packs/ab/ab01") is None
        with pytest.raises(StorageNotFound) as err:
            storage.read("packs/ab/ab01")
        assert "packs/ab/ab01" in str(err.value)

    def test_read_range(self, storage: Storage) -> None:
        data = os.urandom(5000)
        storage.write("packs/00/p", data)
        assert storage.read_range("packs/00/p", 0, 10) == data[:10]
        assert storage.read_range("packs/00/p", 4990, 100) == data[4990:]
        assert storage.read_range("packs/00/p", 1234, 2000) == data[1234:3234]
        with pytest.raises(StorageNotFound):
            storage.read_range("packs/00/missing", 0, 1)

    def test_write_once_never_replaces(self, storage: Storage) -> None:
        storage.write("index/i1.json", b"first")
        with pytest.raises(StorageExists) as err:
            storage.write("index/i1.json", b"second")
        assert "index/i1.json" in str(err.value)
        assert storage.read("index/i1.json") == b"first"
        storage.write("backup_metadata.json", b"one", once=False)
        storage.write("backup_metadata.json", b"two", once=False)
        assert storage.read("backup_metadata.json") == b"two"

    def test_no_temporaries_listed(self, storage: Storage) -> None:
        for i in range(5):
            storage.write(f"locks/l{i}", b"lock", once=False)
        assert sorted(o.name for o in storage.list()) == [f"locks/l{i}" for i in range(5)]

    @pytest.mark.parametrize("bad", ["", "/etc/passwd", "a/../b", "../x", "a//b", "./a", "a/\x00"])
    def test_bad_names_refused(self, storage: Storage, bad: str) -> None:
        with pytest.raises(StorageError):
            storage.write(bad, b"x")
        with pytest.raises(StorageError):
            storage.read(bad)

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(parts=st.lists(NAME_PART, min_size=1, max_size=3), data=st.binary(max_size=3000))
    def test_round_trip(self, storage: Storage, parts: list[str], data: bytes) -> None:
        name = "rt/" + "/".join(parts)
        if storage.stat(name) is not None or any(o.name.startswith(name + "/") for o in storage.list("rt/")):
            return  # an earlier example used this name (or a directory of that name)
        try:
            storage.write(name, data)
        except StorageError:
            # a file cannot hold a child: "rt/a" then "rt/a/b" is a conflict on a filesystem
            assert any(name.startswith(o.name + "/") for o in storage.list("rt/"))
            return
        assert storage.read(name) == data
        assert storage.stat(name) is not None and storage.stat(name).size == len(data)  # type: ignore[union-attr]
        assert name in {o.name for o in storage.list("rt/")}
