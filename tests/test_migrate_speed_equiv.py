"""The streaming plan against the reference plan (the whole document parsed, then spliced).

:func:`aml.migrate.plan.plan_file` plans a file in one streaming pass (lean by default: counts only;
with ``keep_bytes`` the new content spliced as the items go by) and hands any file that pass cannot
vouch for to :func:`aml.migrate.plan._plan_full`, the reference. Both must give the same plan
(counts, versions, lossy items, problems in the same order with the same text, the same new bytes),
for regular files and for every kind of odd file. Writing a lean plan must write the bytes the
reference held. :func:`aml.migrate.files.iter_elements` must accept exactly the lists ``json.loads``
accepts, element for element, and :func:`aml.store.rewrite.dumps_element`'s fast path must write exactly what
``json.dumps`` writes.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.migrate import VERSIONS, apply_plan, build_plan, migrate
from aml.migrate import plan as plan_module
from aml.migrate.files import IrregularText, iter_elements
from aml.migrate.plan import Plan
from aml.migrate.steps import up_1_2
from aml.store.rewrite import JsonStyle, _dumps_with_json, dumps_element
from tests.realdata import extract_loom
from tests.test_migrate_items import CTX, item_at, json_value

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
FULL = 1 << 40
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def _facts(plan: Plan) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    files = [(f.relpath, f.agent, f.collection, f.encoding, f.sha256, f.size_bytes, f.mtime_ns, f.items,
              f.versions, f.changed, f.lost) for f in plan.files]
    return plan.to_dict(), files


def _reference_plan(root: Path, target: str, **kwargs: Any) -> Plan:
    """The plan of the full pass alone (every file parsed whole, items migrated, ``render``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "_plan_streamed", lambda *a, **k: None)
        return build_plan(root, target, now=NOW, keep_bytes_limit=FULL, **kwargs)


def _assert_same_plans(root: Path, target: str, *, force: bool = False, check_loss: bool = True) -> Plan:
    lean = build_plan(root, target, force=force, now=NOW, check_loss=check_loss)
    kept = build_plan(root, target, force=force, now=NOW, check_loss=check_loss, keep_bytes_limit=FULL)
    full = _reference_plan(root, target, force=force, check_loss=check_loss)
    assert _facts(lean) == _facts(full)
    assert _facts(kept) == _facts(full)
    assert all(f.new_bytes is None for f in lean.files)
    assert [f.new_bytes for f in kept.files] == [f.new_bytes for f in full.files]
    assert all(f.new_bytes is not None for f in full.writes)
    return lean


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".aml" not in p.parts and p.name != "schema_version.json":
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------- real stores


@pytest.mark.parametrize("fixture", ["loom-plain-v1.0", "loom-gzip-v1.0", "loom-plain-v2.0.0"])
def test_lean_plans_equal_full_plans_on_real_stores(tmp_path: Path, fixture: str) -> None:
    root = extract_loom(fixture, tmp_path)
    for target in VERSIONS:
        for force in (False, True):
            _assert_same_plans(root, target, force=force)
        _assert_same_plans(root, target, check_loss=False)


@pytest.mark.parametrize("fixture", ["loom-plain-v1.0", "loom-gzip-v1.0", "loom-plain-v2.0.0"])
def test_writing_a_lean_plan_writes_what_the_full_plan_held(tmp_path: Path, fixture: str) -> None:
    lean_root = extract_loom(fixture, tmp_path / "lean")
    full_root = extract_loom(fixture, tmp_path / "full")
    for target in ("2.0.0", "1.1.0", "1.2.0", "1.0.0"):
        lean = build_plan(lean_root, target, force=True, now=NOW)
        full = _reference_plan(full_root, target, force=True)
        a, b = apply_plan(lean, run_id="r"), apply_plan(full, run_id="r")
        assert a.files_written == b.files_written and a.to_dict()["records_changed"] == b.to_dict()["records_changed"]
        assert _tree(lean_root) == _tree(full_root)


# --------------------------------------------------------------------------- odd files


def _item(n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"i{n}", "agent": "a", "timestamp": "2026-01-02T03:04:05.678Z", "pattern": {"type": "t"},
            "metrics": {"successRate": 0.5}, "evolution": {"created": "2026-01-02T03:04:05.678Z"},
            "active": True, **extra}


def _dump(items: Any) -> bytes:
    return json.dumps(items, indent=2, ensure_ascii=False).encode()


ODD_FILES: dict[str, bytes] = {
    "plain": _dump([_item(0), _item(1)]),
    "empty": b"[]",
    "empty-spaced": b" \n[ \t\r\n]\n ",
    "bom": b"\xef\xbb\xbf" + _dump([_item(0)]),
    "two-boms": b"\xef\xbb\xbf\xef\xbb\xbf" + _dump([_item(0)]),
    "non-ascii": _dump([_item(0, note="caf\u00e9 \u2603 \U0001f600")]),
    "escaped": json.dumps([_item(0, note="caf\u00e9 \u2603")], ensure_ascii=True).encode(),
    "compact": json.dumps([_item(0), _item(1)], separators=(",", ":")).encode(),
    "not-utf8": b'[{"id": "\xff"}]',
    "truncated": _dump([_item(0), _item(1)])[:-40],
    "trailing-comma": b'[{"id": "x"},]',
    "extra-data": _dump([_item(0)]) + b" []",
    "trailing-garbage": _dump([_item(0)]) + b"x",
    "object": b'{"id": "x"}',
    "string": b'"[1]"',
    "non-object": _dump([_item(0), 3, _item(1)]),
    "null-item": _dump([None]),
    "nan": b'[{"id": "x", "v": NaN, "w": -Infinity, "active": true}]',
    "duplicate-keys": b'[{"id": "x", "id": "y", "version": "9.9", "version": "1.0.0"}]',
    "unknown-version": _dump([_item(0), _item(1, version="3.0.0"), _item(2)]),
    "unknown-then-invalid": _dump([_item(0, version="3.0.0"), _item(1)])[:-3] + b"}}",
    "unknown-then-non-object": _dump([_item(0, version="3.0.0"), "x"]),
    "legacy-not-object": _dump([_item(0, tags=[], metadata={"aml_legacy": 5}, variations=[1])]),
    "legacy-not-object-harmless": _dump([_item(0, tags=[], metadata={"aml_legacy": [1]}, variations=[])]),
    "legacy-list-v2": _dump([up_1_2({**_item(0, tags=[], metadata={"aml_legacy": "x"}), "variations": []},
                                    "pattern", CTX)]),
    "declared-without-shape": _dump([_item(0, version="1.2.0"), _item(1, version="1.1.0", metadata=7)]),
    "metadata-not-object": _dump([_item(0, metadata="m"), _item(1, metadata=None), _item(2, metadata=[])]),
    "odd-timestamps": _dump([_item(0, timestamp=1767323045678), _item(1, timestamp="2026-01-02 03:04:05"),
                             _item(2, timestamp="2026-01-02T03:04:05+02:00"), _item(3, timestamp=None),
                             _item(4, timestamp=[1]), _item(5, timestamp="yesterday"),
                             _item(6, timestamp="2026-01-02T03:04:05.678901+00:00"), _item(7, timestamp=1.5),
                             _item(8, timestamp="1767323045.5"), _item(9, timestamp=True)]),
    "no-timestamp": _dump([{k: v for k, v in _item(0).items() if k != "timestamp"}]),
    "deep": b"[" + b'{"id": "d", "x": ' + b"[" * 50 + b"]" * 50 + b"}]",
    "whitespace-only": b"  \n",
    "tabs": json.dumps([_item(0), _item(1)], indent="\t").encode(),
    "indent-4-escaped": json.dumps([_item(0, note="caf\u00e9 \u2603 \U0001f600")], indent=4).encode(),
    "crlf": _dump([_item(0), _item(1)]).replace(b"\n", b"\r\n"),
    "spaced-compact": json.dumps([_item(0), _item(1)], separators=(", ", ": ")).encode(),
    "numbers": _dump([_item(0, x=[1e-07, 1e16, -0.0, 5e-324, 1.7976931348623157e308, 10**30, -3, 0.1, True],
                           y={"": {}, "e": [], "n": None, "s": "\u0000\u001f\"\\/\u2028"})]),
    "ugly-layout": b'  [  {"id":"a" , "active" :true,"x":[ 1,2 ] }\n,\n\n\t{"id":"b","metadata":{}}  ]  \n',
    "one-line-items": b'[\n  {"id": "a", "active": true},\n  {"id": "b", "active": false}\n]\n',
    "empty-file": b"",
}


def _odd_store(root: Path, gzipped: bool = False) -> Path:
    for n, (name, data) in enumerate(sorted(ODD_FILES.items())):
        agent = root / f"agent-{n:02d}-{name}"
        agent.mkdir(parents=True)
        (agent / "patterns.json").write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
        (agent / "decisions.json").write_bytes(data)
    return root


@pytest.mark.parametrize("gzipped", [False, True])
def test_lean_plans_equal_full_plans_on_odd_files(tmp_path: Path, gzipped: bool) -> None:
    root = _odd_store(tmp_path / "store", gzipped)
    for target in VERSIONS:
        for force in (False, True):
            plan = _assert_same_plans(root, target, force=force)
            codes = {p["relpath"].split("/")[0].split("-", 2)[2]: p["code"] for p in plan.problems}
            assert codes["unknown-then-invalid"] in ("invalid_json", "truncated_json")
            assert codes["unknown-then-non-object"] == "wrong_type"
            assert codes["unknown-version"] == "unknown_version"
            assert "plain" not in codes and "nan" not in codes and "bom" not in codes
        _assert_same_plans(root, target, check_loss=False)


@pytest.mark.parametrize("gzipped", [False, True])
def test_writing_a_lean_plan_of_odd_files_writes_what_the_full_plan_held(tmp_path: Path, gzipped: bool) -> None:
    """A lean plan's files are migrated again as they are written, their new content streamed to the
    temporary file (or, where the streaming pass gives up, written from the full pass): the same bytes as
    the reference plan held, plain and gzip (zlib's stream)."""
    for target in ("2.0.0", "1.0.0"):
        lean_root = _odd_store(tmp_path / target / "lean", gzipped)
        full_root = _odd_store(tmp_path / target / "full", gzipped)
        a = apply_plan(build_plan(lean_root, target, force=True, now=NOW), run_id="r")
        b = apply_plan(_reference_plan(full_root, target, force=True), run_id="r")
        assert a.files_written == b.files_written and a.files_written
        assert _tree(lean_root) == _tree(full_root)


def test_a_streaming_pass_that_gives_up_leaves_none_of_its_output(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """When the streaming pass gives up after writing (part of) the new content, the file is written from
    the full pass alone: the temporary file starts over."""
    root = extract_loom("loom-gzip-v1.0", tmp_path / "streamed")
    reference = extract_loom("loom-gzip-v1.0", tmp_path / "reference")
    real = plan_module._plan_streamed
    gave_up: list[str] = []

    def writes_then_gives_up(read: Any, *args: Any, sink: Any = None, **kwargs: Any) -> Any:
        planned = real(read, *args, sink=sink, **kwargs)
        if sink is None or planned is None or not planned.writes:
            return planned
        gave_up.append(read.relpath)
        return None

    monkeypatch.setattr(plan_module, "_plan_streamed", writes_then_gives_up)
    a = apply_plan(build_plan(root, "2.0.0", now=NOW), run_id="r")
    b = apply_plan(_reference_plan(reference, "2.0.0"), run_id="r")
    assert gave_up and a.files_written == b.files_written
    assert _tree(root) == _tree(reference)


@pytest.mark.slow
@PROPS
@given(data=st.data(), target=st.sampled_from(VERSIONS))
def test_lean_plans_equal_full_plans_on_generated_items(tmp_path_factory: pytest.TempPathFactory,
                                                        data: st.DataObject, target: str) -> None:
    root = tmp_path_factory.mktemp("store")
    for collection, kind in (("patterns", "pattern"), ("solutions", "record")):
        items = data.draw(st.lists(st.sampled_from(VERSIONS).flatmap(lambda v, k=kind: item_at(v, k)), max_size=6))
        (root / "agent").mkdir(exist_ok=True)
        (root / "agent" / f"{collection}.json").write_bytes(_dump(items))
    for force in (False, True):
        _assert_same_plans(root, target, force=force)


# --------------------------------------------------------------------------- the element text


@PROPS
@given(value=st.one_of(json_value, st.dictionaries(st.text(max_size=4), json_value, max_size=4)),
       indent=st.sampled_from([None, "", " ", "  ", "\t", "    "]), key_sep=st.sampled_from([": ", ":"]),
       item_sep=st.sampled_from([",", ", "]), ensure_ascii=st.booleans(), prefix=st.sampled_from(["", "  ", "\t "]))
def test_element_text_is_what_the_rewriter_writes(value: Any, indent: str | None, key_sep: str, item_sep: str,
                                                  ensure_ascii: bool, prefix: str) -> None:
    style = JsonStyle(indent, item_sep, key_sep, ensure_ascii)
    for v in (value, [value, {"k": value, "\u00e9": [float("nan"), float("inf"), -float("inf"), -0.0]}]):
        assert dumps_element(v, style, prefix) == _dumps_with_json(v, style, prefix)  # the json.dumps reference



# --------------------------------------------------------------------------- the element stream


def _canonical(value: Any) -> str:
    """A text that tells JSON values apart exactly (``NaN`` equal to itself, ``1`` and ``1.0`` not)."""
    def walk(v: Any) -> Any:
        if isinstance(v, float):
            return ["f", "nan" if math.isnan(v) else repr(v)]
        if isinstance(v, dict):
            return ["d", [[k, walk(x)] for k, x in v.items()]]
        if isinstance(v, list):
            return ["l", [walk(x) for x in v]]
        return [type(v).__name__, v]
    return json.dumps(walk(value))


def _same_as_json_loads(data: bytes) -> None:
    try:
        text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        expected: Any = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        expected = IrregularText
    try:
        got: Any = list(iter_elements(data))
    except IrregularText:
        got = IrregularText
    if not isinstance(expected, list):  # invalid JSON, or not a list
        assert got is IrregularText
    else:
        assert _canonical(got) == _canonical(expected)


@pytest.mark.parametrize("name", sorted(ODD_FILES))
def test_element_stream_accepts_what_json_loads_accepts(name: str) -> None:
    data = ODD_FILES[name]
    _same_as_json_loads(data)
    for cut in range(0, len(data), max(1, len(data) // 40)):  # every prefix, and damaged copies
        _same_as_json_loads(data[:cut])
        _same_as_json_loads(data[:cut] + b"," + data[cut:])
        _same_as_json_loads(data[:cut] + data[cut + 1 :])


@PROPS
@given(value=st.lists(json_value, max_size=5), indent=st.sampled_from([None, 0, 2, "\t"]),
       cut=st.integers(0, 400), junk=st.sampled_from(["", " ", ",", "]", "[", "\n", "x", '"']))
def test_element_stream_agrees_with_json_loads(value: list[Any], indent: Any, cut: int, junk: str) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    _same_as_json_loads(text.encode())
    _same_as_json_loads((text[:cut] + junk + text[cut:]).encode())


# --------------------------------------------------------------------------- writing a lean plan


def _lossy_store(root: Path) -> Path:
    migrate(root, "1.1.0", now=NOW)
    path = root / "debugger" / "patterns.json"
    items = json.loads(path.read_bytes())
    items[3].update(tags=["flaky"], active=False)  # going down to 1.0.0 loses its tags
    path.write_text(json.dumps(items, indent=2))
    return root


def test_a_plan_without_loss_check_is_written_without_one(tmp_path: Path) -> None:
    lean_root = _lossy_store(extract_loom("loom-plain-v1.0", tmp_path / "lean"))
    full_root = _lossy_store(extract_loom("loom-plain-v1.0", tmp_path / "full"))
    lean = build_plan(lean_root, "1.0.0", now=NOW, check_loss=False)
    assert not lean.refused and not lean.lossy
    written = apply_plan(lean, run_id="r")
    reference = apply_plan(_reference_plan(full_root, "1.0.0", check_loss=False), run_id="r")
    assert written.status == reference.status == "success" and not written.problems
    assert written.files_written == reference.files_written and "debugger/patterns.json" in written.files_written
    assert _tree(lean_root) == _tree(full_root)


def test_a_file_made_lossy_after_planning_is_left_alone(tmp_path: Path) -> None:
    root = extract_loom("loom-plain-v1.0", tmp_path)
    migrate(root, "1.1.0", now=NOW)
    plan = build_plan(root, "1.0.0", now=NOW)
    assert not plan.refused
    path = root / "debugger" / "patterns.json"
    items = json.loads(path.read_bytes())
    items[3].update(tags=["flaky"], active=False)  # an agent writes while the plan waits to be carried out
    path.write_text(json.dumps(items, indent=2))
    result = apply_plan(plan, run_id="r")
    assert [p["code"] for p in result.problems] == ["lossy"]
    assert "debugger/patterns.json" not in result.files_written and len(result.files_written) == 11


def _reference_detection(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What ``migrate detect`` reported when it parsed every collection file whole (load_collection)."""
    from aml.migrate.detect import count_versions, version_of
    from aml.migrate.files import collection_files, load_collection
    from aml.store.documents import DocumentError
    from aml.store.filestore import FileStore

    store = FileStore(root)
    agents = frozenset(store.agents())
    found: dict[str, Any] = {}
    unparseable: list[dict[str, Any]] = []
    for relpath, agent, collection in collection_files(store):
        try:
            loaded = load_collection(store.root, relpath, agents)
        except DocumentError as exc:
            unparseable.append(exc.as_dict())
            continue
        counts = count_versions(loaded.data)
        found.setdefault(agent, {})[collection] = {
            "path": relpath, "encoding": loaded.encoding, "items": len(loaded.data),
            "version": version_of(counts), "versions": dict(sorted(counts.items()))}
    return found, unparseable


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("store", ["odd", "odd-gzip", "loom-plain-v1.0", "loom-gzip-v1.0"])
def test_detect_reads_large_files_item_by_item_with_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    store: str, lazy: bool) -> None:
    """``migrate detect`` reads each collection once, a large one item by item (LazyItems), and reports the
    same counts, versions and unparseable files (same codes, offsets and reasons) as a whole parse."""
    detect_mod = importlib.import_module("aml.migrate.detect")  # the package's `detect` is the function
    root = (_odd_store(tmp_path / "store", store == "odd-gzip") if store.startswith("odd")
            else extract_loom(store, tmp_path))
    if lazy:
        monkeypatch.setattr(detect_mod, "LAZY_ITEMS_BYTES", 0)
    found = detect_mod.detect(root)
    agents, unparseable = _reference_detection(root)
    assert found.agents == agents and found.unparseable == unparseable
    assert agents and (unparseable or not store.startswith("odd"))
