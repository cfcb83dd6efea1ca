"""Key patterns: the variable segments of a Redis key become ``*``.

``amaos:agent:coder:session:6822a6b2-4735-af1c-a7a1-149075139237:turn:0059`` is traced under
``amaos:agent:coder:session:*:turn:*``. A segment (the text between two delimiters, ``:`` by default) is
variable when it is a number, a UUID, a date or timestamp, a hex string of 6 or more characters with a
digit, a word joined to a number (``doc-00162``, ``user_42``), or a token of 20 or more letters, digits,
``-`` and ``_`` with a digit in it (ULIDs, base64 ids). These are the rules of redis-memory-analyzer
(``rma``'s ``KeyPattern``), plus dates and the joined words that agent frameworks write.

Operators can also declare their key *families* as globs (``--family 'amaos:episode:*'``): a key counts
in the first family whose glob matches it, so the names of a time series stay the same from one trace
to the next whatever the inference does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

DEFAULT_DELIMITERS = ":"
"""Segment delimiters of the key names (Redis' own convention, ``object-type:id``: redis.io "Keys")."""

_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")
"""An ISO 8601 timestamp with colons, replaced whole before a key is split on ``:``."""

_LITERAL_CACHE = 100_000
"""Segments known to be literal (``session``, ``metadata``) kept to skip the variable test next time."""

OVERFLOW = "<other>"
"""The pattern of keys whose inferred pattern came after the pattern table was full."""

_VARIABLE = "|".join((
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",  # UUID
    r"\d{4}-?\d{2}-?\d{2}(?:[T _]\d{2}(?:\d{2}(?:\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",  # date, time
    r"[+-]?\d+(?:\.\d+)?",  # number
    r"(?=[a-fA-F]*\d)[0-9a-fA-F]{6,}",  # hex with a digit
    r"[A-Za-z]+[-_.]\d{2,}",  # word-number
    r"(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{20,}",  # long token with a digit
))


class PatternInferer:
    """Maps keys to patterns, with a bounded pattern table.

    Args:
        delimiters: the characters that separate segments (``":"``; e.g. ``":/|"``).
        max_patterns: most patterns kept; keys of later new patterns count under :data:`OVERFLOW`.
        families: declared family globs (Redis ``SCAN MATCH`` syntax: ``*``, ``?``, ``[...]``), first
            match wins; keys no family matches get an inferred pattern.

    Raises:
        ValueError: empty delimiters, ``max_patterns < 1`` or a family that is not a valid glob.
    """

    def __init__(self, delimiters: str = DEFAULT_DELIMITERS, max_patterns: int = 1000,
                 families: Sequence[str] = ()) -> None:
        if not delimiters:
            raise ValueError("no key delimiters given")
        if max_patterns < 1:
            raise ValueError(f"max_patterns must be at least 1, not {max_patterns}")
        self.delimiters = delimiters
        self._variable = re.compile(f"(?:{_VARIABLE})").fullmatch
        self._split = (lambda key: key.split(delimiters)) if len(delimiters) == 1 else \
            re.compile(f"([{''.join(re.escape(d) for d in delimiters)}])").split
        self._literals: dict[str, str] = {}
        self.max_patterns = max_patterns
        self.families = tuple(families)
        self._known: set[str] = set(self.families)
        self._family = _family_matcher(self.families)
        self.overflowed = 0

    def infer(self, key: str) -> str:
        """The inferred pattern of ``key`` alone (no family, no bound)."""
        literals = self._literals
        out = []
        if ":" in self.delimiters and ("T" in key or " " in key) and _ISO_TIME.search(key):
            key = _ISO_TIME.sub("0", key)  # one numeric segment, which becomes "*"
        for segment in self._split(key):
            known = literals.get(segment)
            if known is None:
                if segment.isdigit() or (segment and self._variable(segment)):
                    known = "*"
                else:
                    known = segment
                    if len(literals) < _LITERAL_CACHE:
                        literals[segment] = segment
            out.append(known)
        return "".join(out) if len(self.delimiters) > 1 else self.delimiters.join(out)

    def pattern(self, key: str, inferred: str | None = None) -> str:
        """The pattern ``key`` is counted under: its family, its inferred pattern, or :data:`OVERFLOW`.

        Args:
            key: the key name.
            inferred: ``infer(key)`` when the caller has it already.
        """
        if self._family is not None:
            found = self._family(key)
            if found is not None:
                return found
        pattern = self.infer(key) if inferred is None else inferred
        if pattern in self._known:
            return pattern
        if len(self._known) - len(self.families) >= self.max_patterns:
            self.overflowed += 1
            return OVERFLOW
        self._known.add(pattern)
        return pattern


def _family_matcher(families: Sequence[str]) -> Callable[[str], str | None] | None:
    if not families:
        return None
    compiled = []
    for glob in families:
        if not glob:
            raise ValueError("an empty family glob")
        compiled.append((re.compile(fnmatch.translate(glob), re.DOTALL).match, glob))

    def matcher(key: str) -> str | None:
        for match, glob in compiled:
            if match(key) is not None:
                return glob
        return None

    return matcher


def decode_key(key: bytes) -> str:
    """A key name as text: UTF-8, with any other byte written as ``\\xNN`` (keys are binary-safe)."""
    return key.decode("utf-8", "backslashreplace")
