"""What a book page calls to show its results: captioned tables (also written as CSV),
captioned figures, inline numbers and the source of a moecalc function.

Used inside the notebooks under ``book/chapters/``; nothing here computes a result. Every
output is deterministic text (MyST markdown that Jupyter Book renders) or a PNG rendered
with fixed fonts, size and metadata, so that re-executing a notebook gives the same bytes
and nbval can compare the text.

* A table is a ``{table}`` directive with a stable ``:name:`` label and a caption, and a
  download link to ``tables/<label>.csv`` beside the page. The CSV is written only when the
  book driver runs the notebook (it sets ``MOECALC_BOOK_WRITE=1``), never under nbval.
* A figure is stored as glue data (myst-nb's format) and pasted by a ``{glue:figure}``
  directive with a label and a caption.
* ``glue`` stores a short text (a worked number) that the prose pastes with
  ``{glue:md}`key```.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import inspect
import io
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

WRITE_ENV = "MOECALC_BOOK_WRITE"  # set to "1" by moecalc.book while it executes a page
TABLES_DIR = "tables"  # beside the executed notebook
GLUE_PREFIX = "application/papermill.record/"  # myst-nb's glue mime prefix (hidden output)
_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# Figure style: fixed size, resolution and a font that ships inside matplotlib, so that the
# PNG bytes do not depend on the fonts installed on the machine.
FIG_DPI = 100
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": FIG_DPI,
    "savefig.dpi": FIG_DPI,
    "path.simplify": False,
    "svg.hashsalt": "moecalc",
}
PNG_METADATA = {"Software": None}  # no matplotlib version stamp in the PNG


def _display(bundle: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    from IPython.display import display

    display(bundle, raw=True, metadata=metadata or {})


def _cell(value: Any, fmt: str | None) -> str:
    """One table cell as text: numbers with `fmt` (a format spec), None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    if fmt == "auto" and isinstance(value, (int, float)) and not isinstance(value, bool):
        # a column mixing scales: whole numbers with separators from 1,000 up, else 4 digits
        return format(value, ",.0f") if abs(value) >= 1000 else format(value, ".4g")
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    if hasattr(value, "item"):  # numpy scalar
        return _cell(value.item(), fmt)
    return str(value)


def _csv_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return format(value, ".10g")
    return "" if value is None else value


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Page:
    """The results of one book page, labelled ``<prefix>-<name>``.

    ``prefix`` makes labels unique across the book: a page run once per hardware profile
    passes the profile's stem and the chapter (``Page("prefill", "h800")`` → labels
    ``h800-prefill-…``); a page run once passes its chapter only.
    """

    def __init__(self, chapter: str, profile: str | None = None):
        self.prefix = f"{profile}-{chapter}" if profile else chapter
        self._labels: set[str] = set()
        self._held: list[str] | None = None  # markdown held for a dropdown (see `dropdown`)

    # ------------------------------------------------------------ labels

    def label(self, name: str) -> str:
        label = f"{self.prefix}-{name}".lower()
        if not _LABEL.match(label):
            raise ValueError(f"label {label!r}: use lower-case letters, digits and '-'")
        if label in self._labels:
            raise ValueError(f"label {label!r} used twice on this page")
        self._labels.add(label)
        return label

    # ------------------------------------------------------------ text

    def md(self, text: str) -> None:
        """Show MyST markdown (dedented), e.g. a sentence with a computed number."""
        if self._held is not None:
            self._held.append(textwrap.dedent(text).strip())
            return
        _display({"text/markdown": textwrap.dedent(text).strip() + "\n", "text/plain": textwrap.dedent(text).strip()})

    def glue(self, key: str, text: str) -> None:
        """Store `text` (markdown) for the prose to paste with ``{glue:md}`key```; shows
        nothing here."""
        _display({GLUE_PREFIX + "text/markdown": text, GLUE_PREFIX + "text/plain": text},
                 {"scrapbook": {"name": key, "mime_prefix": GLUE_PREFIX}})

    def key_results(self, items: Sequence[tuple[str, str, str]], key: str = "key-results", note: str = "") -> None:
        """The figures a page exists for, shown in the box at its top.

        Each item is ``(figure, conditions, label)``: the figure in bold (e.g. "524 tokens/s per
        GPU"), the layout and workload it holds for (and its band, where one is known), and the
        label of the table or figure on this page that derives it. Stored as glue `key`, which
        the page's first markdown cell pastes inside its ``Key results`` admonition with a
        ``{glue:md}`` directive (``:format: myst``), so the box sits above the cells that compute
        it."""
        lines = [f"* **{figure}**: {conditions}; derived in {{numref}}`{label}`."
                 for figure, conditions, label in items]
        self.glue(key, "\n".join(lines) + (f"\n\n*{note}*" if note else "") + "\n")

    def workload(self, wl: Any, kv_len: float | None = None, *, kv_how: str | None = None, hit_rate: float | None = None,
                 mtp_accept: float = 1.0, routing: str = "balanced (every expert equally loaded)",
                 extra: Sequence[str] = ()) -> None:
        """A box naming the workload a page assumes: prompt (ISL) and output (OSL) lengths,
        the KV length a decode step reads and how it is derived, the prefix-cache hit rate,
        MTP and the routing balance."""
        kv = wl.avg_kv_len if kv_len is None else kv_len
        if kv_how is None:
            kv_how = (f"the workload's average over a sequence's decode, about prompt + output / 2 = "
                      f"{wl.prompt_len:,} + {wl.output_len / 2:,.0f}" if kv == wl.avg_kv_len else "set on this page")
        hit = wl.kv_cache_hit_rate if hit_rate is None else hit_rate
        rows = [
            ("ISL (prompt tokens)", f"{wl.prompt_len:,}"),
            ("OSL (output tokens)", f"{wl.output_len:,}"),
            ("KV length per decode step", f"{kv:,.0f} tokens: {kv_how}"),
            ("prefix-cache hit rate", f"{hit:.1%}"),
            ("MTP", "none (1 token per step)" if mtp_accept == 1 else f"{mtp_accept:g} accepted tokens per step"),
            ("routing", routing),
            ("dtypes", f"{wl.weight_dtype.upper()} weights, {wl.kv_dtype.upper()} KV cache, "
                       f"{wl.activation_dtype.upper()} activations"),
        ]
        if wl.min_tokens_per_user:
            rows.append(("decode SLO", f"≥ {wl.min_tokens_per_user:g} tokens/s per user"))
        rows += [tuple(e.split(": ", 1)) for e in extra]
        body = "\n".join(f"* {k}: {v}" for k, v in rows)
        self.md(f":::{{admonition}} Workload: {_escape(wl.name)} ({wl.key}.yaml)\n:class: note\n\n{body}\n:::")

    @contextlib.contextmanager
    def dropdown(self, title: str):
        """Everything shown inside the ``with`` block (tables, figures, text) goes into one
        collapsed ``{dropdown}`` titled `title`: material beside the results (a seed's model),
        out of the reader's way until opened."""
        if self._held is not None:
            raise ValueError("dropdowns do not nest")
        self._held = []
        try:
            yield self
        finally:
            held, self._held = self._held, None
            self.md(f"::::{{dropdown}} {_escape(title)}\n\n" + "\n\n".join(held) + "\n::::")

    def source(self, *objects: Callable[..., Any] | type) -> None:
        """Show the source of moecalc functions or classes: the formula, where it lives."""
        blocks = []
        for obj in objects:
            module = inspect.getmodule(obj)
            where = f"{module.__name__}.{obj.__qualname__}" if module else obj.__qualname__
            code = textwrap.dedent(inspect.getsource(obj)).rstrip()
            blocks.append(f"`{where}`:\n\n````python\n{code}\n````")
        self.md("\n\n".join(blocks))

    # ------------------------------------------------------------ tables

    def table(
        self,
        name: str,
        caption: str,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        formats: Sequence[str | None] | str | None = None,
    ) -> None:
        """A captioned, labelled table, also written to ``tables/<label>.csv``.

        `formats` gives one format spec per column (e.g. ``",.0f"``, ``".3f"``, ``"auto"`` for a
        column that mixes scales, or None for ``str``), or one spec for every numeric cell. The CSV keeps 10 significant digits.
        The label is ``<prefix>-<name>``, for cross-references (``{numref}`label```).
        """
        label = self.label(name)
        ncol = len(header)
        if any(len(r) != ncol for r in rows):
            raise ValueError(f"table {label}: every row needs {ncol} cells")
        fmts = list(formats) if isinstance(formats, (list, tuple)) else [formats] * ncol
        numeric = [
            all(isinstance(r[i], (int, float)) or hasattr(r[i], "item") or r[i] is None for r in rows)
            and any(r[i] is not None for r in rows)
            for i in range(ncol)
        ]
        lines = [
            "| " + " | ".join(_escape(h) for h in header) + " |",
            "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
        ]
        lines += ["| " + " | ".join(_escape(_cell(v, f)) for v, f in zip(r, fmts)) + " |" for r in rows]
        csv_name = f"{TABLES_DIR}/{label}.csv"
        if os.environ.get(WRITE_ENV) == "1":
            self._write_csv(Path(csv_name), header, rows)
        body = "\n".join(lines)
        # A colon fence, not backticks: a caption may hold a role (`{numref}`...), and CommonMark ends a
        # backtick fence's info string at the first backtick, which left the directive as raw text.
        self.md(
            f":::{{table}} {_escape(caption)}\n:name: {label}\n:align: center\n\n{body}\n:::\n\n"
            f"<span class=\"csv-link\">Table data: {{download}}`{label}.csv <{csv_name}>`</span>"
        )

    @staticmethod
    def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[_csv_value(v) for v in r] for r in rows])
        data = buf.getvalue()
        if not path.is_file() or path.read_text(encoding="utf-8") != data:
            path.write_text(data, encoding="utf-8")

    # ------------------------------------------------------------ figures

    def subplots(self, ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.4, **kwargs):
        """A new (figure, axes) in the book's style. No pyplot: nothing is shown until
        :meth:`figure` is called with it."""
        import matplotlib

        matplotlib.rcParams.update(STYLE)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
        return fig, axes

    def figure(self, name: str, caption: str, fig: Any) -> None:
        """Show `fig` as a figure labelled ``<prefix>-<name>``, with `caption`."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        label = self.label(name)
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=FIG_DPI, metadata=PNG_METADATA)
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        width, height = (int(round(v * FIG_DPI)) for v in fig.get_size_inches())
        _display(
            {GLUE_PREFIX + "image/png": png, GLUE_PREFIX + "text/plain": f"<figure {label}: {width}×{height} px>"},
            {"scrapbook": {"name": label, "mime_prefix": GLUE_PREFIX}},
        )
        self.md(f"```{{glue:figure}} {label}\n:name: {label}\n:figwidth: 100%\n\n{caption}\n```")
        digest = figure_digest(fig)
        _display({"text/markdown": f"```text\n{digest}\n```\n", "text/plain": digest})


DIGEST_LINES = 40  # series listed under a figure, at most


def _quantiles(values) -> str:
    import numpy as np

    try:
        a = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):  # categorical (text) positions
        return f"{len(values)} categories"
    a = a[np.isfinite(a)]
    if a.size == 0:
        return "no finite values"
    q = np.quantile(a, [0.0, 0.25, 0.5, 0.75, 1.0])
    return " / ".join(format(float(v), ".4g") for v in q)


def figure_digest(fig: Any) -> str:
    """A few text lines with the data each series of `fig` plots: its points and the
    min / quartiles / max of y (x: its range), in fixed formatting. Printed under every
    figure, so that a changed curve changes a text output nbval compares (it skips images)."""
    lines = []
    for n, ax in enumerate(fig.axes):
        where = (ax.get_title() or ax.get_ylabel() or f"axes {n + 1}").splitlines()[0][:48]
        series = []
        for i, line in enumerate(ax.get_lines()):
            name = line.get_label() if not line.get_label().startswith("_") else f"line {i + 1}"
            series.append((name, line.get_xdata(), line.get_ydata()))
        for i, coll in enumerate(ax.collections):
            offsets = coll.get_offsets() if hasattr(coll, "get_offsets") else []
            if type(coll).__name__ == "PathCollection" and len(offsets):
                name = coll.get_label() if not coll.get_label().startswith("_") else f"points {i + 1}"
                series.append((name, [o[0] for o in offsets], [o[1] for o in offsets]))
        for i, bars in enumerate(getattr(ax, "containers", [])):
            patches = getattr(bars, "patches", None)
            if patches:
                name = bars.get_label() if not str(bars.get_label()).startswith("_") else f"bars {i + 1}"
                horizontal = getattr(bars, "orientation", "vertical") == "horizontal"
                series.append((name, [p.get_y() if horizontal else p.get_x() for p in patches],
                               [p.get_width() if horizontal else p.get_height() for p in patches]))
        for name, x, y in series:
            xs, ys = _quantiles(x).split(" / "), _quantiles(y).split(" / ")
            if len(y) == 1 and len(xs) == len(ys) == 5:
                lines.append(f"{where} | {name}: 1 point ({xs[0]}, {ys[0]})")
                continue
            x_range = f"{xs[0]}…{xs[-1]}" if len(xs) == 5 else xs[0]  # or "n categories"
            lines.append(f"{where} | {name}: {len(y)} points, x {x_range}, y min/q1/median/q3/max {' / '.join(ys)}")
    if len(lines) > DIGEST_LINES:
        lines = lines[:DIGEST_LINES] + [f"… and {len(lines) - DIGEST_LINES} more series"]
    return "\n".join(lines) or "(no data series)"


def efficiency_note(hw: Any) -> str:
    """How sure the roofline is on `hw`: how many of its profile's efficiencies are measured on
    another GPU (sources marked TRANSFERRED) or assumed (ASSUMPTION), for a key-results box."""
    sources = [str(e.get("source", "")) for e in hw.efficiency.values() if isinstance(e, dict)]
    moved = sum(s.startswith("TRANSFERRED") for s in sources)
    assumed = sum(s.startswith("ASSUMPTION") for s in sources)
    if not moved and not assumed:
        return f"No efficiency in {hw.name}'s profile is marked transferred from another GPU or assumed."
    parts = [f"{moved} transferred from another GPU's measurement" if moved else "",
             f"{assumed} assumed without a measurement" if assumed else ""]
    return (f"Of {len(sources)} efficiencies in {hw.name}'s profile, {' and '.join(p for p in parts if p)}: "
            "these figures carry that uncertainty (the chapter \"Validation\" measures the error where published "
            "systems exist).")


BAND_NOTE = ("In brackets: the error band, the figure with every efficiency of the profile at the slow and at the "
             "fast end of its calibration spread (chapter \"Validation\").")


def banded(value: float, low: float, high: float, fmt: str = ",.0f") -> str:
    """``524, 470, 560`` → ``"524 (470–560)"``: a key result with its error band (the figure at
    the slow and fast ends of the calibration spread, :func:`moecalc.bands.band`)."""
    return f"{value:{fmt}} ({min(low, value):{fmt}}–{max(high, value):{fmt}})"


def fmt_si(value: float, unit: str, digits: int = 3) -> str:
    """``1.234e9, "B"`` → ``"1.23 GB"``: decimal (SI) prefixes only, never binary ones."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}"


def like(published: str, value: float) -> str:
    """`value` printed with as many decimals as the `published` figure shows (``"52240.1"``
    → one decimal), with thousands separators only if it has them, so that a reproduced
    number reads beside the one it reproduces."""
    match = re.search(r"\d+(?:\.(\d+))?", published.replace(",", ""))
    decimals = len(match.group(1) or "") if match else 3
    return f"{value:{',' if ',' in published else ''}.{decimals}f}"
