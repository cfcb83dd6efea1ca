"""A repository's objects in a local directory: temp file, fsync, rename (or link, for write-once)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from aml.store.atomic import TMP_PREFIX, atomic_write, fsync_dir

from . import ObjectInfo, Storage, StorageError, StorageExists, StorageNotFound, check_name


class LocalStorage(Storage):
    """Objects as files under ``root`` (``packs/ab/ab12...`` is ``root/packs/ab/ab12...``).

    Args:
        root: the repository directory (created on the first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.url = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name, self.url)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix.rstrip("/") if prefix.rstrip("/") else self.root
        start = base if not prefix or prefix.endswith("/") else base.parent
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel_dir = os.path.relpath(dirpath, self.root)
            for fn in filenames:
                if fn.startswith(TMP_PREFIX):
                    continue
                name = fn if rel_dir == "." else f"{rel_dir}/{fn}".replace(os.sep, "/")
                if not name.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fn))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(name, st.st_size, st.st_mtime)

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc), url=self.url, name=name) from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise StorageNotFound("no such object", url=self.url, name=name) from None
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc), url=self.url, name=name) from exc

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StorageError(f"invalid range {offset}+{length}", url=self.url, name=name)
        try:
            with open(self._path(name), "rb") as fh:
                return os.pread(fh.fileno(), length, offset)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageNotFound("no such object", url=self.url, name=name) from None
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc), url=self.url, name=name) from exc

    def write(self, name: str, data: bytes, *, once: bool = True) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not once:
                atomic_write(path, data)
                return
            if path.exists():
                raise StorageExists("object exists", url=self.url, name=name)
            tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{id(data):x}"
            atomic_write(tmp, data, sync_dir=False)
            try:
                os.link(tmp, path)  # fails, leaving the existing object, if another writer won
            except FileExistsError:
                raise StorageExists("object exists", url=self.url, name=name) from None
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc), url=self.url, name=name) from exc

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc), url=self.url, name=name) from exc
