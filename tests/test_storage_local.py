"""The local directory backend of the repository storage interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from aml.backup.storage import StorageError, is_remote_url, open_storage, redact_url
from aml.backup.storage.local import LocalStorage
from tests.storage_contract import StorageContract


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "repo")


def test_urls(tmp_path: Path) -> None:
    assert is_remote_url("sftp://u@h/p") and is_remote_url("s3://b/p")
    assert not is_remote_url("/srv/backup") and not is_remote_url("file:///srv") and not is_remote_url(tmp_path)
    assert redact_url("sftp://u:secret@h:2222/p") == "sftp://u@h:2222/p"
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    with pytest.raises(StorageError, match="unknown repository scheme"):
        open_storage("ftp://h/p")


def test_write_once_leaves_no_temporary(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.write("index/a.json", b"1")
    with pytest.raises(StorageError):
        s.write("index/a.json", b"2")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["a.json"]
