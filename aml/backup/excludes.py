"""What a backup leaves out: aml's own derived files by default, plus restic-style ``--exclude`` patterns.

Pattern syntax and matching are restic's (``internal/filter``), with paths taken relative to the store
root instead of absolute:

* a pattern is a ``/``-separated list of components; each component is matched against one path
  component with Go's ``filepath.Match`` rules: ``*`` (any run of characters), ``?`` (one character),
  ``[a-z]`` / ``[^a-z]`` (``[!a-z]`` too) classes, ``\\`` escapes the next character; none matches ``/``;
* ``**`` as a whole component matches any number of components, none included (``a/**/b`` matches
  ``a/b``, ``a/x/b`` and ``a/x/y/b``);
* a pattern starting with ``/`` is anchored at the store root (``/.aml/index.sqlite``); any other
  pattern matches anywhere: ``*.tmp`` excludes every ``.tmp`` file at any depth, ``cache/tmp`` any
  ``tmp`` directly inside a ``cache`` directory;
* an excluded directory is not descended into: everything below it is excluded too.

``--exclude-file FILE`` reads patterns one per line, as restic does: surrounding blanks are removed,
empty lines and lines starting with ``#`` are skipped, and ``$VAR`` / ``${VAR}`` are replaced by the
environment's value (empty when unset). restic's negative patterns (``!pattern``) and ``--iexclude``
are not supported.

:data:`DEFAULT_EXCLUDES` are the files aml derives from the store and can rebuild at any time
(``optimize index``: the record index with its SQLite side files, its Bloom filter and its lock file).
They churn on every ``optimize index`` (16 MB and 3 files more per snapshot on a real store) and are
stale the moment an older snapshot is restored. The rest of ``.aml/`` is kept: the quarantine
(``optimize gc`` and ``SessionManager`` copies of damaged documents, sometimes their only copy) and a
killed migration's journal and originals are not derived. Temporary files (``.aml-tmp-*``) are never
stored either way.

A snapshot records the patterns it applied (header field ``excludes``); an exact restore leaves the
target's paths that match them alone: they were never the snapshot's to remove.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["DEFAULT_EXCLUDES", "Excludes", "read_exclude_file"]

DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/.aml/index.sqlite*",
    "/.aml/index.bloom",
    "/.aml/index.lock",
)
"""aml's own derived files inside a file store (store-relative patterns, anchored at the root)."""

_ENV = re.compile(r"\$(?:\{([^}]*)\}|(\w+))")


def _component(part: str, pattern: str) -> str:
    """One component of a ``filepath.Match`` pattern as a regex that never matches ``/``."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i == n:
                raise ValueError(f"bad exclude pattern {pattern!r}: ends with a backslash")
            out.append(re.escape(part[i]))
            i += 1
        elif c == "[":
            j = i + 1 if i < n and part[i] in "!^" else i
            j = part.find("]", j + 1 if j < n and part[j] == "]" else j)
            if j < 0:
                raise ValueError(f"bad exclude pattern {pattern!r}: '[' without ']'")
            body, i = part[i:j], j + 1
            negate = body[:1] in ("!", "^")
            chars: list[str] = []
            k = 1 if negate else 0
            while k < len(body):
                ch = body[k]
                if ch == "\\" and k + 1 < len(body):
                    k += 1
                    chars.append(re.escape(body[k]))
                else:
                    chars.append("-" if ch == "-" else re.escape(ch))
                k += 1
            out.append("(?!/)[" + ("^" if negate else "") + "".join(chars) + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _parts(pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"bad exclude pattern {pattern!r}: empty")
    return parts


def _translate(pattern: str) -> str:
    """A pattern as a regex over ``"/" + relative path`` (see the module docstring)."""
    rx = "" if pattern.startswith("/") else "(?:/[^/]+)*"
    for part in _parts(pattern):
        rx += "(?:/[^/]+)*" if part == "**" else "/" + _component(part, pattern)
    return rx


class Excludes:
    """A set of exclude patterns, compiled into one regular expression.

    Args:
        patterns: restic-style patterns (see the module docstring).
        defaults: also apply :data:`DEFAULT_EXCLUDES` (first, in that order).

    Attributes:
        patterns: every pattern applied, defaults first, duplicates dropped (recorded in the snapshot).

    Raises:
        ValueError: a malformed pattern (named in the message).
    """

    def __init__(self, patterns: Iterable[str] = (), *, defaults: bool = True) -> None:
        seen: dict[str, None] = {}
        for p in (*(DEFAULT_EXCLUDES if defaults else ()), *patterns):
            p = str(p).strip()
            if p:
                seen.setdefault(p, None)
        self.patterns: tuple[str, ...] = tuple(seen)
        self._rx = (
            re.compile("(?:" + "|".join(_translate(p) for p in self.patterns) + r")\Z", re.DOTALL)
            if self.patterns
            else None
        )
        # an anchored pattern without "**" matches at one depth only, below directories its leading
        # components match: for_dir() skips the regex everywhere else (the defaults touch only .aml/)
        self._anywhere = False
        self._fixed: list[list[re.Pattern[str]]] = []
        for p in self.patterns:
            parts = _parts(p)
            if p.startswith("/") and "**" not in parts:
                self._fixed.append([re.compile(_component(c, p) + r"\Z", re.DOTALL) for c in parts])
            else:
                self._anywhere = True

    def __bool__(self) -> bool:
        return self._rx is not None

    def __repr__(self) -> str:
        return f"Excludes({list(self.patterns)!r}, defaults=False)"

    def for_dir(self, rel_dir: str) -> Callable[[str], bool] | None:
        """The test to apply to the entries of directory ``rel_dir`` (``""``: the root), or None when no
        pattern can match an entry there. The test takes ``"/" + relative path`` (:meth:`match_slashed`)."""
        if self._rx is None:
            return None
        if self._anywhere:
            return self.match_slashed
        comps = rel_dir.split("/") if rel_dir else []
        depth = len(comps)
        for parts in self._fixed:
            if len(parts) == depth + 1 and all(rx.match(c) for rx, c in zip(parts, comps, strict=False)):
                return self.match_slashed
        return None

    def match_slashed(self, slashed: str) -> bool:
        """Like :meth:`__call__` for ``"/" + relative path`` (saves a concatenation in hot loops)."""
        return self._rx is not None and self._rx.match(slashed) is not None

    def __call__(self, relpath: str) -> bool:
        """True if the store-relative, ``/``-separated ``relpath`` is excluded (itself, not by an ancestor)."""
        return self._rx is not None and self._rx.match("/" + relpath) is not None


def read_exclude_file(path: str | os.PathLike[str]) -> list[str]:
    """Read restic's ``--exclude-file``: one pattern per line (see the module docstring).

    Raises:
        OSError: the file cannot be read.
    """
    out: list[str] = []
    for line in Path(path).read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = _ENV.sub(lambda m: os.environ.get(m.group(1) or m.group(2), ""), line)
        if line:
            out.append(line)
    return out
