"""Each seed document's printed figures, recomputed with moecalc.

A record is ``{"table", "row", "column", "published", "value", "computed", "unit", "match",
"note"}``: ``published`` is the figure exactly as the seed prints it, ``value`` that figure
as a float in ``unit``, ``computed`` moecalc's figure in the same unit, and ``match`` whether
``computed`` rounds to ``published`` at its printed precision. A ``note`` that starts with
``erratum:`` marks a figure the seed itself gets wrong.
"""

from __future__ import annotations

from typing import Callable


def _seed000() -> list[dict]:
    from . import seed000

    return seed000.records()


def _seed001() -> list[dict]:
    from . import seed001

    return seed001.records()


def _seed003() -> list[dict]:
    from . import seed003

    return seed003.records()


def _seed002() -> list[dict]:
    from . import seed002

    return seed002.records()


def _seed004() -> list[dict]:
    from . import seed004

    return seed004.records()


SEEDS: dict[str, Callable[[], list[dict]]] = {"seed-000": _seed000, "seed-001": _seed001, "seed-002": _seed002,
                                               "seed-003": _seed003, "seed-004": _seed004}
