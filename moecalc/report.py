"""Plain-text tables and JSON for the CLI (no pandas: the CLI must start fast)."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Iterable, Sequence


def jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, tuples and mappings → plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        from .errors import InputError

        raise InputError(f"refusing to print a non-finite number ({obj})")
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, ensure_ascii=False)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def width(text: str) -> int:
    """Terminal columns of `text`: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, columns: int, right: bool) -> str:
    fill = " " * (columns - width(text))
    return fill + text if right else text + fill


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3, title: str | None = None) -> str:
    """A left/right aligned text table: text columns left, numbers right."""
    raw = [list(r) for r in rows]
    cells = [[fmt(v, digits) for v in row] for row in raw]
    numeric = [
        any(_is_number(r[i]) for r in raw) and all(_is_number(r[i]) or r[i] in ("", None) for r in raw)
        for i in range(len(headers))
    ]
    widths = [max([width(h)] + [width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(_pad(v, w, num) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)
