"""The decision matrix on every shared Loom store, each rule made to fire by lowering its line (slow: 30 runs).

Memory rules: the largest agent at 78 % / 95 % of a lowered limit -> a prune that clears the rule and resolves
the alert. Slow lookups (line at 0.1 µs) -> optimize index then warm-cache, both doing work, the mean lookup
lower after. A cut document -> gc quarantines a copy, the document is left as it is, and the snapshot taken
before names the good copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aml.store import FileStore
from tests.realdata import LOOM_COUNTS, extract_loom

pytestmark = pytest.mark.slow

RULES = ("memory_high", "memory_critical", "slow_lookups", "unparsable_document")


def _configure(monkeypatch: pytest.MonkeyPatch, store: Path, rule: str) -> None:
    from workers.app import current_aml_app
    from workers.settings import load_settings

    env = {"AML_REMEDIATE": "on"}
    biggest = max(FileStore(store).scan().agent_sizes().values())
    if rule.startswith("memory"):
        critical = biggest / (0.78 if rule == "memory_high" else 0.95) / (1024 * 1024)
        env.update(AML_AGENT_CRITICAL_MB=f"{critical:.6f}", AML_AGENT_WARNING_MB=f"{critical * 0.75:.6f}")
    elif rule == "slow_lookups":
        env["AML_REMEDIATE_LOOKUP_MS"] = "0.0001"  # 0.1 µs: any real lookup is slower
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(current_aml_app().conf, "aml_settings", load_settings())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", sorted(LOOM_COUNTS))
def test_each_rule_on_each_shared_loom_store(name: str, rule: str, tmp_path: Path, aml_settings,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.backup import create
    from tasks.health import check

    store = extract_loom(name, tmp_path)
    _configure(monkeypatch, store, rule)
    if rule == "unparsable_document":
        snapshot = create.apply(kwargs={"store": str(store)}, throw=True).get()["backup_id"]
        victim = sorted(store.rglob("patterns.json"))[0]
        cut = victim.read_bytes()[: victim.stat().st_size // 2]
        victim.write_bytes(cut)
    result: dict[str, Any] = check.apply(kwargs={"store": str(store), "remediate": True}, throw=True).get()
    first = result["report"]["remediation"]["decisions"][0]
    assert first["rule"] == rule and first["status"] == "run", result["report"]["remediation"]
    run = result["remediation_run"]
    closed = run["closing"]["report"]["remediation"]["closed"]
    assert closed["status"] == "success", closed
    steps = closed["result"]["steps"]
    assert all(s["status"] in ("success", "warning") for s in steps)
    if rule.startswith("memory"):
        assert closed["result"]["effect"] > 0 and closed["result"]["still_fires"] is False
        assert closed["result"]["measure_after"] < closed["result"]["measure_before"]
        assert closed["alert_after"]["open"] is False
        assert run["closing"]["report"]["checks"]["memory_within_limits"] is True
    elif rule == "slow_lookups":
        assert [s["action"] for s in steps] == ["optimize_index", "warm_cache"] and all(s["effect"] for s in steps)
        assert (store / ".aml" / "index.sqlite").is_file()
    else:
        relpath = victim.relative_to(store).as_posix()
        assert victim.read_bytes() == cut  # never overwritten by aml
        assert closed["result"]["good_copies"][relpath]["backup_id"] == snapshot
        [copy] = run["steps"][0]["result"]["quarantined"]
        assert copy["relpath"] == relpath and (store / copy["copy"]).read_bytes() == cut
