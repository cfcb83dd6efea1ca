"""The verify task names damage by snapshot: a damaged manifest header, a truncated pack."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from aml.backup import load_index, load_manifest
from aml.backup.listing import list_damaged_snapshots
from aml.backup.pack import pack_path
from tests.backup_helpers import make_json_store, mutate


def apply(task: Any, **kwargs: Any) -> dict[str, Any]:
    return task.apply(kwargs=kwargs, throw=True).get()


def _rows(settings: Any, store: Path) -> dict[str, Any]:
    from models import queries
    from workers.catalog import session_scope

    with session_scope(settings.catalog_url) as session:
        return {
            b.backup_id: (b.verify_status, b.verify_detail)
            for b in queries.list_backups(session, os.path.realpath(store))
        }


@pytest.fixture
def two(tmp_path: Path, aml_settings: Any) -> tuple[Path, Path, str, str]:
    from tasks import backup

    store = make_json_store(tmp_path / "store", agents=3, docs=6)
    s1 = apply(backup.create, store=str(store))["backup_id"]
    mutate(store, 0.2, seed=3)
    s2 = apply(backup.create, store=str(store), incremental=True)["backup_id"]
    return store, store.parent / "memory-backup", s1, s2


def test_damaged_manifest_header_is_marked_failed_by_its_id(
    two: tuple[Path, Path, str, str], aml_settings: Any
) -> None:
    from tasks import verify

    store, repo, s1, s2 = two
    header = repo / "snapshots" / f"{s1}.json"
    text = header.read_text()
    count = re.search(r'"file_count": (\d+)', text)
    assert count is not None
    header.chmod(0o644)
    header.write_text(text.replace(count.group(0), f'"file_count": {int(count.group(1)) + 1}'))
    assert [d.backup_id for d in list_damaged_snapshots(repo)] == [s1]

    out = apply(verify.verify, store=str(store))
    assert out["status"] == "failure"
    assert out["verified"] == {s1: "failed", s2: "ok"}
    rows = _rows(aml_settings, store)
    assert rows[s1][0] == "failed" and rows[s1][1]["paths"] == ["<manifest>"]
    assert rows[s1][1]["problems"][0]["kind"] == "manifest_corrupt"
    assert rows[s2][0] == "ok"

    # asked about that snapshot alone: a failure naming it, not "no snapshot"
    one = apply(verify.verify, store=str(store), backup_id=s1)
    assert one["status"] == "failure" and one["verified"] == {s1: "failed"}
    with pytest.raises(ValueError, match="no snapshot"):
        apply(verify.verify, store=str(store), backup_id="full_19990101_000000")

    # list does not pretend it is absent: the task names it, the CLI says so and exits 1
    from typer.testing import CliRunner

    from cli.main import store_app
    from tasks import backup

    listed = apply(backup.list_, store=str(store))
    assert [s["backup_id"] for s in listed["snapshots"]] == [s2]
    assert [d["backup_id"] for d in listed["damaged"]] == [s1]
    cli = CliRunner().invoke(store_app, ["backup", "list"], obj={"store": str(store)})
    assert cli.exit_code == 1 and f"damaged snapshot {s1}" in " ".join(cli.output.split())


def test_truncated_pack_fails_verify_of_its_snapshot_without_read_data(
    two: tuple[Path, Path, str, str], aml_settings: Any
) -> None:
    from tasks import verify

    store, repo, s1, s2 = two
    assert apply(verify.verify, store=str(store), backup_id=s1)["status"] == "success"
    m = load_manifest(repo, s1)
    assert m.files is not None
    pack_id = load_index(repo).objects[m.files.sha256[0]][0]  # a pack that holds an object of s1
    path = pack_path(repo, pack_id)
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 3)

    one = apply(verify.verify, store=str(store), backup_id=s1)
    assert one["status"] == "failure" and one["verified"] == {s1: "failed"}
    [prob] = one["errors"]
    assert prob["kind"] == "pack_size" and s1 in prob["snapshots"]
    assert prob["files"] and all(f.split(":", 1)[0] in (s1, s2) for f in prob["files"])
    assert one["damaged_snapshots"][s1]
    rows = _rows(aml_settings, store)
    assert rows[s1][0] == "failed"
    assert set(rows[s1][1]["paths"]) == {f.split(":", 1)[1] for f in prob["files"] if f.startswith(s1 + ":")}
