"""The checks every command shares, in one place: strict number parsing, the finiteness of
what is printed, control characters in messages, and files written whole or not at all.

New commands get them by using :func:`parse_count` for their integer options, emitting
through ``cli._emit`` (which calls :func:`first_bad_number`) and writing files with
:func:`atomic_write`.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Callable, TextIO

from .errors import InputError

# The largest integer count anywhere (an option, a profile, a batch list): floats hold every
# integer exactly up to here, so counts stay exact through the numpy arithmetic.
MAX_COUNT = 2**53
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: no '+', '_', spaces or other scripts' digits
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

# Output fields that are signed on purpose (a model's error against a figure, a change
# between two settings); every other number printed must be finite and ≥ 0.
SIGNED = re.compile(r"(^|_)(error|errors|change|delta|diff|difference|residual|log)(_|$)|_pct_change$")


def parse_count(text: str, what: str = "value", zero_ok: bool = False) -> int:
    """A positive (or, with `zero_ok`, non-negative) integer written in ASCII digits, at most
    MAX_COUNT; anything else raises one InputError line naming `what`."""
    kind = "a non-negative" if zero_ok else "a positive"
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        raise InputError(f"{what}: must be {kind} integer (digits 0-9 only), got {escape(repr(text))[:60]}")
    if len(text) > 20:  # no int() of a huge string: it can only exceed the limit
        raise InputError(f"{what}: must be at most {MAX_COUNT:,}, got {len(text)} digits")
    value = int(text)
    if value == 0 and not zero_ok:
        raise InputError(f"{what}: must be {kind} integer, got {text!r}")
    if value > MAX_COUNT:
        raise InputError(f"{what}: must be at most {MAX_COUNT:,}, got {len(text)} digits")
    return value


def parse_number(text: str, what: str = "value") -> float:
    """A finite non-negative decimal number in ASCII (``12``, ``0.5``, ``1e3``)."""
    if not isinstance(text, str) or not _NUMBER.fullmatch(text):
        raise InputError(f"{what}: must be a number (digits 0-9, '.', 'e'), got {escape(repr(text))[:60]}")
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{what}: must be finite, got {escape(text)[:60]}")
    return value


def escape(text: str) -> str:
    """`text` with every control character (newline, escape, NUL, bidi overrides, ...)
    written as a Python escape, so that an error stays one harmless line."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


def first_bad_number(data: Any, path: str = "", signed: tuple[str, ...] = ()) -> tuple[str, Any] | None:
    """(path, value) of the first number in `data` (dicts, lists, numpy values) that is not
    finite, or is negative in a field that is not signed (:data:`SIGNED`, or a name in
    `signed`); None if all are fine. A list's items are checked under their list's name."""
    if isinstance(data, dict):
        for key, value in data.items():
            found = first_bad_number(value, f"{path}.{key}" if path else str(key), signed)
            if found:
                return found
        return None
    if isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            found = first_bad_number(value, f"{path}[{i}]", signed)
            if found:
                return found
        return None
    if hasattr(data, "tolist"):  # numpy scalar or array
        return first_bad_number(data.tolist(), path, signed)
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        return None
    if isinstance(data, float) and not math.isfinite(data):
        return path, data
    name = re.sub(r"\[\d+\]", "", path).rsplit(".", 1)[-1]
    if data < 0 and not SIGNED.search(name) and name not in signed:
        return path, data
    return None


def atomic_write(path: str | os.PathLike[str], write: Callable[[TextIO], Any], what: str = "output") -> Any:
    """Write a text file whole or not at all: `write(f)` fills a temporary file beside
    `path`, which is then renamed over it. On any failure (disk full, no permission, a name
    too long, ...) the temporary file is removed, `path` is left as it was, and one
    InputError line says why. Returns what `write` returns."""
    text = os.fspath(path)
    if not text:
        raise InputError(f"{what}: empty file name")
    target = Path(text)
    try:
        if target.exists() and not target.is_file():
            raise InputError(f"{what}: cannot write {escape(text)}: not a regular file")
        fd, tmp = tempfile.mkstemp(prefix=".moecalc-", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(f"{what}: cannot write {escape(text)}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            result = write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{what}: cannot write {escape(text)}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result
