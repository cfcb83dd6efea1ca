"""What an upgrade step drops, kept under ``metadata.aml_legacy`` so that the step can be undone.

An upgrade step turns an item ``x`` into ``y``. Its rule (see :mod:`aml.migrate.steps`) may drop or
rename what the newer version has no room for (Loom's 1.2.0 -> 2.0.0 rebuild of a pattern drops
``variations``, any extra ``metrics``/``evolution`` entries, and changes the key order). The step
then runs its downgrade rule on ``y`` (the *reconstruction*) and records the difference between ``x``
and the reconstruction as a :data:`Patch`::

    y["metadata"]["aml_legacy"] = {"1.2.0": patch}     # keyed by the version the patch restores

A downgrade applies the patch to its reconstruction and removes it. Most real items need no patch at
all (their reconstruction is exact), so most items carry no ``aml_legacy``.

Patch shape (JSON; every part optional, empty parts left out)::

    {
      "set":     {key: value},            # keys the original had and the reconstruction lacks
      "unset":   {key: rebuilt_value},    # keys the reconstruction invents (e.g. Loom's defaults)
      "replace": {key: [original, rebuilt_value]},
      "nested":  {key: Patch},            # both sides are objects: a patch one level down
      "order":   [key, ...]               # the original key order, when the reconstruction's differs
    }

``unset`` and ``replace`` are conditional: they apply only while the live value still equals the
value rebuilt at upgrade time, so a value the agent changed at the newer version wins over the
stale original (e.g. a ``success_rate`` updated after the upgrade survives the downgrade).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

Patch = dict[str, Any]
"""A patch from :func:`diff` (see the module docstring for its shape)."""

LEGACY_KEY: Final = "aml_legacy"
"""The key under an item's ``metadata`` that holds aml's patches, by version."""


def same(a: Any, b: Any) -> bool:
    """JSON identity: equal values of the same JSON types, objects with the same key order.

    ``1``, ``1.0`` and ``True`` differ (Python's ``==`` says they are equal).
    """
    if a is b:
        return True
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        if len(a) != len(b):
            return False
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            if ka != kb or (va is not vb and not same(va, vb)):
                return False
        return True
    if ta is list:
        if len(a) != len(b):
            return False
        return all(x is y or same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff(original: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> Patch | None:
    """The patch that turns ``rebuilt`` back into ``original``.

    Args:
        original: the item before the upgrade step (a JSON object).
        rebuilt: the step's downgrade rule applied to the upgraded item.

    Returns:
        ``None`` when ``rebuilt`` is already identical to ``original`` (:func:`same`), else a patch
        such that ``apply(rebuilt, patch)`` is identical to ``original``.
    """
    if same(original, rebuilt):  # the common case: the step dropped nothing
        return None
    set_ = {k: v for k, v in original.items() if k not in rebuilt}
    unset = {k: v for k, v in rebuilt.items() if k not in original}
    replace: dict[str, list[Any]] = {}
    nested: dict[str, Patch] = {}
    for key, value in original.items():
        if key not in rebuilt or same(value, rebuilt[key]):
            continue
        other = rebuilt[key]
        if type(value) is dict and type(other) is dict:
            sub = diff(value, other)
            if sub is not None:
                nested[key] = sub
        else:
            replace[key] = [value, other]
    patch: Patch = {}
    if set_:
        patch["set"] = set_
    if unset:
        patch["unset"] = unset
    if replace:
        patch["replace"] = replace
    if nested:
        patch["nested"] = nested
    if list(_apply_keys(rebuilt, patch)) != list(original):
        patch["order"] = list(original)
    return patch or None


def apply(rebuilt: Mapping[str, Any], patch: Patch | None) -> dict[str, Any]:
    """Apply a patch from :func:`diff` to a (possibly since changed) reconstruction.

    Args:
        rebuilt: the downgrade rule's output (not modified).
        patch: the patch, or ``None``.

    Returns:
        A new object. ``set`` keys are added when absent; ``unset`` and ``replace`` apply only where
        the current value still equals the value recorded at upgrade time; ``nested`` patches apply
        where the value is still an object; ``order`` reorders the keys it names (others follow).
    """
    out = dict(rebuilt)
    if not patch:
        return out
    for key, (orig, was) in patch.get("replace", {}).items():
        if key in out and same(out[key], was):
            out[key] = orig
    for key, sub in patch.get("nested", {}).items():
        if type(out.get(key)) is dict:
            out[key] = apply(out[key], sub)
    for key, was in patch.get("unset", {}).items():
        if key in out and same(out[key], was):
            del out[key]
    for key, value in patch.get("set", {}).items():
        if key not in out:
            out[key] = value
    order = patch.get("order")
    if order:
        out = {**{k: out[k] for k in order if k in out}, **{k: v for k, v in out.items() if k not in order}}
    return out


def _apply_keys(rebuilt: Mapping[str, Any], patch: Patch) -> list[str]:
    """The key order :func:`apply` produces without an ``order`` entry."""
    unset = patch.get("unset", {})
    keys = [k for k in rebuilt if k not in unset]
    keys.extend(k for k in patch.get("set", {}) if k not in rebuilt)
    return keys


def pop_legacy(item: Mapping[str, Any], version: str) -> tuple[dict[str, Any], Patch | None]:
    """Take the patch for ``version`` out of ``item["metadata"]["aml_legacy"]``.

    Args:
        item: an item (not modified).
        version: the version the wanted patch restores.

    Returns:
        ``(copy of item without that patch, patch or None)``. ``aml_legacy`` is removed when it
        becomes empty. ``metadata`` is copied only when it changes.
    """
    out = dict(item)
    meta = out.get("metadata")
    if type(meta) is not dict or type(meta.get(LEGACY_KEY)) is not dict or version not in meta[LEGACY_KEY]:
        return out, None
    legacy = dict(meta[LEGACY_KEY])
    patch = legacy.pop(version)
    meta = dict(meta)
    if legacy:
        meta[LEGACY_KEY] = legacy
    else:
        del meta[LEGACY_KEY]
    out["metadata"] = meta
    return out, patch if isinstance(patch, dict) else None


def put_legacy(item: dict[str, Any], version: str, patch: Patch) -> None:
    """Store ``patch`` for ``version`` under ``item["metadata"]["aml_legacy"]`` (in place).

    ``item["metadata"]`` must be an object; it and ``aml_legacy`` are copied before the change, so
    objects shared with the original item are never modified.

    Raises:
        ValueError: ``item`` has no ``metadata`` object to hold the patch, or its ``aml_legacy`` is
            not an object (someone else's data: never overwritten).
    """
    meta = item.get("metadata")
    if type(meta) is not dict:
        raise ValueError("item has no metadata object to keep the legacy patch in")
    meta = dict(meta)
    legacy = meta.get(LEGACY_KEY, {})
    if type(legacy) is not dict:
        raise ValueError(f"metadata.{LEGACY_KEY} is not an object; not overwritten")
    legacy = dict(legacy)
    legacy[version] = patch
    meta[LEGACY_KEY] = legacy
    item["metadata"] = meta
