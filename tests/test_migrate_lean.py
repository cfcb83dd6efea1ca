"""The lean plan's one C pass (:func:`aml.migrate.lean.lean_counts`): the counts of the streamed pass when it
vouches for a file, ``None`` (the streamed pass decides) for every file it cannot vouch for. The plans it makes
are compared with the reference plan in tests/test_migrate_speed_equiv.py; this checks that the pass is taken."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aml.migrate import VERSIONS, build_plan
from aml.migrate import lean as lean_module
from aml.migrate.chain import UnknownItemVersion, item_version
from aml.migrate.lean import lean_counts
from aml.migrate.plan import plan_file
from aml.store.documents import DocumentError
from tests.realdata import extract_loom
from tests.test_migrate_items import CTX, PROPS, item_at, json_value


def _dump(items: Any) -> bytes:
    return json.dumps(items, indent=2).encode()


def _streamed_counts(items: list[Any], target: str) -> tuple[int, dict[str, int], int]:
    """The counts as the streamed pass makes them from parsed items (no downgrade, no unknown version)."""
    versions: dict[str, int] = {}
    changed = 0
    for item in items:
        source = item_version(item)
        versions[source] = versions.get(source, 0) + 1
        changed += source != target
    return len(items), dict(sorted(versions.items())), changed


@pytest.mark.slow
@PROPS
@given(data=st.data(), target=st.sampled_from(VERSIONS))
def test_counts_of_upgrades_are_the_streamed_counts(data: st.DataObject, target: str) -> None:
    below = VERSIONS[: VERSIONS.index(target) + 1]
    items = data.draw(st.lists(st.sampled_from(below).flatmap(lambda v: item_at(v, "pattern")), max_size=6))
    stamps = VERSIONS.index(target) >= VERSIONS.index("1.2.0")
    assert lean_counts(_dump(items), target, CTX, stamps=stamps) == _streamed_counts(items, target)


@pytest.mark.parametrize("body", [
    b'[{"id": "\xff", "active": true}]',  # not UTF-8 in a field the pass skips
    b'\xef\xbb\xbf[{"id": "a"}]',  # a BOM
    b'[{"id": "a", "x": NaN}]',
    b'[{"id": "\\ud800"}]',
    b'[{"id": "a"}, 3]',  # an item that is not an object
    b'[{"id": "a"}',  # truncated
    b'{"id": "a"}',  # not a list
    b'[{"version": "3.0.0"}]',  # an unknown version
    b'[{"version": "2.0.0", "metadata": {}}]',  # a downgrade to 1.0.0: its loss check reads the whole item
    b'[{"tags": [], "active": true, "metadata": {"aml_legacy": 5}}]',  # an aml_legacy that is not aml's
])
def test_files_the_pass_cannot_vouch_for_go_to_the_streamed_pass(body: bytes) -> None:
    target = "1.0.0" if b'"2.0.0"' in body else "2.0.0"
    assert lean_counts(body, target, CTX, stamps=target != "1.0.0") is None


def test_the_pass_reads_duplicate_keys_as_json_does() -> None:
    # the last one wins, as in json.loads: the version is 1.0.0 (a first "9.9" would be unknown)
    assert lean_counts(b'[{"version": "9.9", "version": "1.0.0"}]', "2.0.0", CTX, stamps=True) == (
        1, {"1.0.0": 1}, 1)
    with pytest.raises(UnknownItemVersion):
        item_version(json.loads('{"version": "1.0.0", "version": "9.9"}'))
    assert lean_counts(b'[{"version": "1.0.0", "version": "9.9"}]', "2.0.0", CTX, stamps=True) is None


def test_a_dry_run_of_a_real_store_takes_the_pass(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    taken: list[bool] = []
    real = lean_module.lean_counts

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr("aml.migrate.plan.lean_counts", spy)
    plan = build_plan(root, "2.0.0")
    assert plan.files and len(taken) == len(plan.files) and all(taken)
    assert sum(f.changed for f in plan.files) == sum(f.items for f in plan.files) > 0


@PROPS
@given(data=st.data(), target=st.sampled_from(VERSIONS), gzipped=st.booleans())
def test_a_file_planned_with_or_without_the_pass_gets_the_same_plan(tmp_path_factory: pytest.TempPathFactory,
                                                                    data: st.DataObject, target: str,
                                                                    gzipped: bool) -> None:
    """plan_file with the C pass and with the streamed pass alone, on lists of items of every version and of any
    JSON value (non-objects, unknown versions, odd metadata...), written with any indent: the same plan, or the
    same error."""
    items = data.draw(st.lists(st.one_of(st.sampled_from(VERSIONS).flatmap(lambda v: item_at(v, "pattern")),
                                         json_value,
                                         st.builds(lambda v, m: {"version": v, "metadata": m, "tags": [], "active": 1},
                                                   st.one_of(json_value, st.sampled_from(VERSIONS)), json_value)),
                              max_size=5))
    body = json.dumps(items, indent=data.draw(st.sampled_from([None, 2, "\t"]))).encode()
    root = tmp_path_factory.mktemp("store")
    (root / "agent").mkdir()
    (root / "agent" / "patterns.json").write_bytes(gzip.compress(body, mtime=0) if gzipped else body)

    def planned() -> Any:
        try:
            made = plan_file(root, "agent/patterns.json", "agent", "patterns", frozenset({"agent"}), target, CTX,
                             keep_bytes=False)
        except DocumentError as exc:
            return ("error", exc.as_dict())
        return (made.items, made.versions, made.changed, made.lost, made.sha256, made.size_bytes)

    with_pass = planned()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("aml.migrate.plan.lean_counts", lambda *a, **k: None)
        assert planned() == with_pass
