"""Write a JSON document back the way its writer laid it out.

Loom's runtime (``JSON.stringify(data, null, 2)``) and its Python tools (``json.dump(data, f,
indent=2, ensure_ascii=False)``) both write two-space indentation, non-ASCII characters as is and no
trailing newline. :func:`detect_style` reads those choices from the original text and :func:`dumps`
repeats them, so that a rewritten file differs from the original only where its data does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

_NON_ASCII_ESCAPE: Final = re.compile(
    r"\\u(?:00[89a-fA-F][0-9a-fA-F]|0[1-9a-fA-F][0-9a-fA-F]{2}|[1-9a-fA-F][0-9a-fA-F]{3})"
)
"""A ``\\uXXXX`` escape of a non-ASCII character (U+0080 and above)."""
_BOM: Final = "\ufeff"
_KEY_SPACED: Final = re.compile(r'":[ \t]')
_KEY_TIGHT: Final = re.compile(r'":[^ \t]')
_ITEM_SPACED: Final = re.compile(r'[}\]"], [{\["]')
_ITEM_TIGHT: Final = re.compile(r'[}\]"],[{\["]')


def _count(pattern: re.Pattern[str], text: str) -> int:
    return sum(1 for _ in pattern.finditer(text))


@dataclass(frozen=True, slots=True)
class JsonStyle:
    """Layout of a JSON text.

    Attributes:
        indent: the indentation unit (e.g. ``"  "`` or ``"\\t"``), or ``None`` for one line.
        item_sep: separator between items on one line (``","`` or ``", "``; only when ``indent`` is None).
        key_sep: separator between a key and its value (``":"`` or ``": "``).
        ensure_ascii: non-ASCII characters written as ``\\uXXXX`` escapes.
        newline: the text ends with a newline.
        bom: the text starts with a UTF-8 byte order mark.
    """

    indent: str | None = "  "
    item_sep: str = ","
    key_sep: str = ": "
    ensure_ascii: bool = False
    newline: bool = False
    bom: bool = False


LOOM_STYLE: Final = JsonStyle()
"""What Loom writes: two spaces, ``": "``, UTF-8 as is, no trailing newline."""


def detect_style(text: str) -> JsonStyle:
    """The layout of ``text`` (a JSON document).

    Args:
        text: the decoded document.

    Returns:
        Its :class:`JsonStyle`; :data:`LOOM_STYLE` choices where the text does not show them (e.g.
        ``[]`` says nothing about indentation).
    """
    bom = text.startswith(_BOM)
    body = text[1:] if bom else text
    newline = body.endswith("\n")
    stripped = body.strip()
    indent: str | None = LOOM_STYLE.indent
    item_sep, key_sep = LOOM_STYLE.item_sep, LOOM_STYLE.key_sep
    if len(stripped) > 2 and stripped[0] in "[{":
        rest = stripped[1:]
        first_line_end = rest.find("\n")
        head = stripped[:4096]
        key_sep = ": " if _count(_KEY_SPACED, head) >= _count(_KEY_TIGHT, head) else ":"
        if first_line_end == -1 or rest[:first_line_end].strip():
            indent = None
            item_sep = ", " if _count(_ITEM_SPACED, head) > _count(_ITEM_TIGHT, head) else ","
        else:
            line = rest[first_line_end + 1:]
            unit = line[: len(line) - len(line.lstrip(" \t"))]
            indent = unit or LOOM_STYLE.indent
    ensure_ascii = body.isascii() and _NON_ASCII_ESCAPE.search(body) is not None
    return JsonStyle(indent, item_sep, key_sep, ensure_ascii, newline, bom)


def dumps(data: Any, style: JsonStyle = LOOM_STYLE) -> str:
    """Serialise ``data`` in ``style``.

    Returns:
        The JSON text (with the style's BOM and trailing newline).
    """
    if style.indent is None:
        text = json.dumps(data, ensure_ascii=style.ensure_ascii, separators=(style.item_sep, style.key_sep))
    else:
        text = json.dumps(data, ensure_ascii=style.ensure_ascii, indent=style.indent,
                          separators=(",", style.key_sep))
    return (_BOM if style.bom else "") + text + ("\n" if style.newline else "")
