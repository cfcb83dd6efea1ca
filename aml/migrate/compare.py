"""Record equality as the oracle comparison needs it.

Two items are *equivalent* when they hold the same JSON values, except that:

* ISO 8601 timestamps compare as instants (Loom's migration rewrites ``...025Z`` as
  ``...025000+00:00``; aml keeps the writer's form);
* the migration's own bookkeeping times (``metadata.last_modified``, ``metadata.migrated_at``: when
  the migration ran) are ignored;
* object key order is ignored (JSON objects are unordered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aml.migrate.steps import BOOKKEEPING
from aml.store.records import json_pointer
from aml.store.timestamps import detect_style, parse_timestamp


def _instant(value: str) -> Any:
    style = detect_style(value)
    if style is None or style.kind != "iso":
        return None
    return parse_timestamp(value)


def differences(a: Any, b: Any, *, ignore: Sequence[tuple[str, ...]] = BOOKKEEPING,
                _prefix: tuple[str | int, ...] = ()) -> list[str]:
    """JSON pointers where ``a`` and ``b`` differ (see the module docstring for what is ignored).

    Args:
        a, b: two JSON values (items, lists of items).
        ignore: paths (object keys from the item's root) never compared; list indexes are skipped
            when matching, so ``("metadata", "last_modified")`` applies to every item of a list.

    Returns:
        Sorted pointers, e.g. ``["/12/performance/success_rate"]``; empty when equivalent.
    """
    keys = tuple(k for k in _prefix if isinstance(k, str))
    if keys in ignore:
        return []
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                if (*keys, key) not in ignore:
                    out.append(json_pointer(*_prefix, key))
                continue
            out.extend(differences(a[key], b[key], ignore=ignore, _prefix=(*_prefix, key)))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [json_pointer(*_prefix)]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(differences(x, y, ignore=ignore, _prefix=(*_prefix, i)))
        return out
    if type(a) is not type(b):
        return [json_pointer(*_prefix)]
    if isinstance(a, str) and a != b:
        ta, tb = _instant(a), _instant(b)
        if ta is not None and ta == tb:
            return []
    return [] if a == b else [json_pointer(*_prefix)]


def equivalent(a: Any, b: Any, *, ignore: Sequence[tuple[str, ...]] = BOOKKEEPING) -> bool:
    """``True`` when :func:`differences` finds none."""
    return not differences(a, b, ignore=ignore)
