"""pytest hooks for nbval over the executed notebooks (``book/executed/**/*.ipynb``).

* Figures are stored as myst-nb glue data (mime ``application/papermill.record/image/png``);
  nbval skips ``image/png`` but not that prefixed key, so the prefix is added to the keys
  it does not compare: images are not compared, every text output is.
* At the end of a run, list the notebooks nbval checked, with their cells passed and
  failed (under pytest-xdist the controller sees every report, so the list is complete).
"""

from __future__ import annotations

GLUE = "application/papermill.record/"
SKIP = tuple(GLUE + mime for mime in ("image/png", "image/jpeg", "image/svg+xml"))

_cells: dict[str, list[int]] = {}


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):  # nbval's IPyNbFile
        collector.skip_compare = tuple(collector.skip_compare) + SKIP


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb") or not (report.when == "call" or report.failed):
        return
    counts = _cells.setdefault(path, [0, 0])
    counts[0 if report.passed else 1] += 1


def pytest_terminal_summary(terminalreporter):
    if not _cells:
        return
    failed = sum(1 for p, (_, f) in _cells.items() if f)
    terminalreporter.write_sep("-", f"nbval checked {len(_cells)} executed notebooks, {failed} with failing cells")
    for path in sorted(_cells):
        ok, bad = _cells[path]
        terminalreporter.write_line(f"{'FAILED' if bad else 'ok':6s} {path}  ({ok} cells passed, {bad} failed)")
