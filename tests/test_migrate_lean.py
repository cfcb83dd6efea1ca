"""The lean plan's one C pass (:func:`aml.migrate.lean.lean_counts`): the counts of the streamed pass when it
vouches for a file, ``None`` (the streamed pass decides) for every file it cannot vouch for. The plans it makes
are compared with the reference plan in tests/test_migrate_speed_equiv.py; this checks that the pass is taken."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aml.migrate import VERSIONS, build_plan
from aml.migrate import lean as lean_module
from aml.migrate.chain import UnknownItemVersion, item_version
from aml.migrate.lean import lean_counts
from tests.realdata import extract_loom
from tests.test_migrate_items import CTX, PROPS, item_at


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
