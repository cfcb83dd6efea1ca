"""The shared real data sets (``shared/data``, see its DATA.md) and their documented contents.

Importable by every test module: ``from tests.realdata import SHARED_DATA, extract_loom``.
``AML_SHARED_DATA`` overrides the location of the data folder.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Final

SHARED_DATA: Final = Path(
    os.environ.get("AML_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
LOOM_DIR: Final = SHARED_DATA / "loom"
AITOR_DIR: Final = SHARED_DATA / "aitor"
TINYTROUPE_DIR: Final = SHARED_DATA / "tinytroupe"
AMAOS_DIR: Final = SHARED_DATA / "amaos"

_PLAIN: Final = {
    "frontend-developer": (110, 55, 30),
    "debugger": (90, 100, 25),
    "backend-architect": (95, 50, 36),
    "code-reviewer": (23, 12, 4),
}

LOOM_COUNTS: Final[dict[str, dict[str, tuple[int, int, int]]]] = {
    "loom-gzip-v1.0": {
        "frontend-developer": (120, 60, 35),
        "debugger": (80, 110, 25),
        "backend-architect": (100, 55, 52),
        "test-automator": (60, 40, 15),
    },
    "loom-plain-v1.0": _PLAIN,
    "loom-plain-v1.1.0": _PLAIN,
    "loom-plain-v1.2.0": _PLAIN,
    "loom-plain-v2.0.0": _PLAIN,
    "loom-plain-v1.0-pyops": {
        **_PLAIN,
        "frontend-developer": (113, 55, 30),
        "debugger": (93, 100, 25),
    },
}
"""DATA.md §1: (patterns, solutions, decisions) per agent for every Loom tarball."""

LOOM_SCHEMA: Final = {
    "loom-gzip-v1.0": "1.0.0",
    "loom-plain-v1.0": "1.0.0",
    "loom-plain-v1.0-pyops": "1.0.0",
    "loom-plain-v1.1.0": "1.1.0",
    "loom-plain-v1.2.0": "1.2.0",
    "loom-plain-v2.0.0": "2.0.0",
}
"""DATA.md §1: schema version of the live agent collections of each tarball."""

LOOM_ARCHIVED: Final = {name: 8 if "gzip" in name else 19 for name in LOOM_COUNTS}
"""DATA.md §1: decisions in ``global/archived-decisions.json`` (all backend-architect's)."""

AITOR_COUNTS: Final = {
    "user1042_session1": ("SupportBot", 363, 170, 649, 0),
    "user1042_session2": ("SupportBot", 122, 60, 218, 0),
    "ops_team_session7": ("OpsAssistant", 100, 50, 100, 0),
    "user2203_session1": ("SupportBot", 8, 4, 16, 0),
    "release_mgr_session3": ("ReleasePlanner", 4, 0, 14, 5),
}
"""DATA.md §2: (agent, messages, tool executions, reasoning steps, todos) per session file."""

AITOR_SESSION1_ROLES: Final = {"user": 170, "assistant": 170, "system": 23}

TINYTROUPE_EPISODIC: Final = {"Lisa Carter": (45, 8), "Oscar": (45, 7)}
"""DATA.md §3: (committed episodic items, episodic_buffer items) per agent spec."""

TINYTROUPE_CACHE_ENTRIES: Final = 4


def loom_tarball(name: str) -> Path:
    """Path of a Loom tarball; ``name`` with or without ``.tar.gz``."""
    name = name.removesuffix(".tar.gz")
    return LOOM_DIR / f"{name}.tar.gz"


def extract_loom(name: str, dest: Path) -> Path:
    """Extract a Loom tarball into ``dest`` (like ``tar -xzf X.tar.gz -C dest``, mtimes kept).

    Args:
        name: tarball name, e.g. ``"loom-plain-v1.0"`` (``.tar.gz`` optional).
        dest: an existing directory; gets ``dest/.loom/memory`` (and ``.loom/memory-backup``).

    Returns:
        The store root ``dest/.loom/memory``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(loom_tarball(name), "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)
    return dest / ".loom" / "memory"


def snapshot_tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """``{relpath: (bytes, mtime_ns, mode)}`` of every file, symlink (its target) and directory
    below ``root``, to prove that an operation wrote nothing."""
    out: dict[str, tuple[bytes, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = (os.readlink(path).encode(), st.st_mtime_ns, st.st_mode)
        elif path.is_file():
            out[rel] = (path.read_bytes(), st.st_mtime_ns, st.st_mode)
        else:
            out[rel] = (b"", st.st_mtime_ns, st.st_mode)
    return out
