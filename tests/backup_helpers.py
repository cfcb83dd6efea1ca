"""Helpers shared by the backup tests (``tests/test_backup_*.py``): tree snapshots and comparisons."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from aml.backup import Repository

Entry = tuple[str, bytes | None, int, int]
"""(kind "f" | "d", content or None, mtime_ns, permission bits)."""


def tree_state(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, Entry]:
    """Every file and directory below ``root`` (not following symlinks) with content, mtime and mode.

    Symlinks are recorded as kind ``"l"`` with their target as content. ``skip`` lists top-level names
    to leave out (e.g. a repository inside the store).
    """
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel.split("/", 1)[0] in skip:
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.fsencode(os.readlink(full)), 0, 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", None, st.st_mtime_ns, st.st_mode & 0o7777)
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("f", fh.read(), st.st_mtime_ns, st.st_mode & 0o7777)
    return out


def diff_states(a: dict[str, Entry], b: dict[str, Entry], *, dir_mtimes: bool = True) -> list[str]:
    """Human-readable differences between two :func:`tree_state` results (empty when identical)."""
    problems = []
    for p in sorted(set(a) | set(b)):
        if p not in a or p not in b:
            problems.append(f"{p}: only in {'first' if p in a else 'second'}")
            continue
        ka, ca, ma, mode_a = a[p]
        kb, cb, mb, mode_b = b[p]
        if ka != kb:
            problems.append(f"{p}: kind {ka} != {kb}")
        elif ca != cb:
            problems.append(f"{p}: content differs")
        elif mode_a != mode_b:
            problems.append(f"{p}: mode {oct(mode_a)} != {oct(mode_b)}")
        elif ma != mb and (ka == "f" or dir_mtimes):
            problems.append(f"{p}: mtime {ma} != {mb}")
    return problems


def small_repo(path: Path, *, pack_size: int = 64 * 1024, chunk_size: int = 1024 * 1024) -> Repository:
    """A repository with small packs (so tests see many of them)."""
    return Repository(path).init(pack_size=pack_size, chunk_size=chunk_size)


def make_json_store(root: Path, agents: int = 4, docs: int = 30, seed: int = 1) -> Path:
    """A Loom-like store of small JSON documents (deterministic), with one empty directory."""
    rng = random.Random(seed)
    words = ["agent", "memory", "pattern", "solution", "decision", "context", "cache", "retry", "schema", "index"]
    for a in range(agents):
        d = root / f"agent-{a}"
        d.mkdir(parents=True, exist_ok=True)
        for n in range(docs):
            text = " ".join(rng.choices(words, k=rng.randint(50, 900)))
            (d / f"doc-{n:03d}.json").write_text(f'{{"id": "{a}-{n}", "text": "{text}", "n": {rng.random()}}}')
    (root / "global").mkdir(exist_ok=True)
    (root / "global" / "archived-decisions.json").write_text("[]")
    (root / "audit").mkdir(exist_ok=True)
    (root / "config.json").write_text('{"version": "1.0.0"}')
    return root


def mutate(root: Path, fraction: float, seed: int) -> list[str]:
    """Rewrite a fraction of the files below ``root`` (new content, new mtime). Returns their paths."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    picked = rng.sample(files, max(1, int(len(files) * fraction)))
    for p in picked:
        p.write_bytes(p.read_bytes() + f" changed {seed} {rng.random()}".encode())
        t = rng.randint(1_600_000_000, 1_800_000_000) * 1_000_000_000 + rng.randint(0, 999_999_999)
        os.utime(p, ns=(t, t))
    return [str(p.relative_to(root)) for p in picked]


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a (possibly read-only) file in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
