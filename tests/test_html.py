"""The rendered book, as a reader sees it: no raw MyST, every table numbered, no equation wider
than the page.

Sphinx -W and nbval both pass a page on which a directive was left unparsed (a backtick fence
whose caption holds a role is not a fence to CommonMark, so ``{table}`` and its options print
as text), so these tests build the HTML from the executed notebooks (into a temporary
folder, ~15 s for the whole book) and read it back with ``moecalc.book.html_defects``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moecalc import book
from moecalc.profiles import PARAMS_DIR

ERRATA = "errata-seed-003"  # a list of errata whose tables are numbered by their own ids (E1, E2, ...)


def _jobs():
    return book.plan(book.discover_chapters(), book.hardware_profiles(PARAMS_DIR), book.BOOK_DIR, PARAMS_DIR)


def _build(book_dir: Path, jobs, out: Path) -> Path:
    toc_path = out / "_toc.yml"
    toc_path.write_text(book.toc_yaml(book.toc(jobs, PARAMS_DIR, book_dir)), encoding="utf-8")
    book.build_html(book_dir, toc_path, strict=False, out_dir=out / "html")
    return out / "html"


# ---------------------------------------------------------------- the checker itself


def _page(body: str) -> str:
    return f"<html><body><article>{body}</article></body></html>"


NUMBERED = ('<table class="table" id="x"><caption><span class="caption-number">Table 3 </span>'
            "<span class=\"caption-text\">A caption</span></caption><tr><td>1</td></tr></table>")


def test_a_clean_page_has_no_defect():
    assert book.html_defects(_page("<p>Text.</p>" + NUMBERED + '<div class="math notranslate nohighlight">'
                                   r"\[a = \frac{b}{c}\]</div>")) == []


@pytest.mark.parametrize("raw", [
    "<p>```{table} Caption with <code>a role</code>\n:name: h20-kv-cache-max-batch\n:align: center</p>",
    '<pre><span class="csv-link">Table data: {download}`h20.csv &lt;tables/h20.csv&gt;`</span></pre>',
    "<p>see {numref}`h20-decode-best`</p>",
    "<p>{glue:md}`cap1` sequences</p>",
])
def test_raw_myst_is_a_defect(raw):
    found = book.html_defects(_page(raw + NUMBERED))
    assert len(found) >= 1 and found[0].startswith("raw MyST")


def test_the_notebooks_own_code_is_not_read():
    code = '<div class="cell_input docutils container"><pre>page.md(":::{dropdown} Answer")</pre></div>'
    assert book.html_defects(_page(code + NUMBERED)) == []


def test_a_table_without_a_number_is_a_defect():
    found = book.html_defects(_page('<table class="table"><tr><td>quantity</td></tr></table>'))
    assert found == ["table without a number: 'quantity'"]


def test_a_wide_equation_is_a_defect():
    # the KV-cache page's three formats on one line: cut off at the right edge of a 1400-px window
    wide = (r"B_\text{FP8+scales} = r_{kv} \cdot 1 + \frac{r_{kv}}{128}\cdot 4 + d_\text{rope}\cdot 2, \qquad "
            r"B_\text{BF16} = (r_{kv} + d_\text{rope})\cdot 2, \qquad B_\text{seed} = (r_{kv} + d_\text{rope})\cdot 1 .")
    found = book.html_defects(_page(f'<div class="math notranslate nohighlight">\\[{wide}\\]</div>' + NUMBERED))
    assert len(found) == 1 and found[0].startswith("equation line")
    split = wide.replace(r", \qquad ", r",\\ ")  # the same formats one per line
    assert book.html_defects(_page(f'<div class="math notranslate nohighlight">\\[{split}\\]</div>' + NUMBERED)) == []


# ---------------------------------------------------------------- the built book


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    jobs = _jobs()
    missing = [j.docname for j in jobs if not j.output.is_file()]
    assert not missing, f"executed notebooks missing (run `moecalc book`): {missing[:3]}"
    return _build(book.BOOK_DIR, jobs, tmp_path_factory.mktemp("book")), jobs


def test_every_built_page_reads_clean(built):
    html, jobs = built
    docs = ["intro", ERRATA, *(j.docname for j in jobs)]
    assert book.check_html(html, docs, unnumbered_ok=[ERRATA]) == {}


def test_per_gpu_pages_are_titled_with_their_gpu_and_open_with_key_results(built):
    html, jobs = built
    for job in (j for j in jobs if j.chapter.per == "hardware"):
        text = (html / f"{job.docname}.html").read_text(encoding="utf-8")
        name = book.read_profile(PARAMS_DIR, job.profile)["name"]
        assert f"<h1>{name} · " in text, job.docname
        # the key-results box comes before the first section of the page
        box, first_section = text.find("Key results"), text.find('<section id="', text.find("<h1>") + 1)
        assert 0 < box < first_section, job.docname


def test_a_raw_directive_put_back_fails_the_check(tmp_path):
    """The defect the KV-cache pages had: a table in a backtick fence whose caption holds a role.
    Built through Sphinx like the book, the check must report it."""
    job = next(j for j in _jobs() if j.docname.endswith("/kv-cache"))
    mini = tmp_path / "src"
    shutil.copytree(book.BOOK_DIR / "_static", mini / "_static")
    shutil.copy(book.BOOK_DIR / "_config.yml", mini / "_config.yml")
    (mini / "intro.md").write_text("# Mini\n", encoding="utf-8")
    target = mini / job.docname
    target.parent.mkdir(parents=True)
    shutil.copytree(job.output.parent / "tables", target.parent / "tables")
    nb = json.loads(job.output.read_text(encoding="utf-8"))
    broken = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            text = "".join(md) if isinstance(md, list) else md
            if text and text.startswith(":::{table}") and "{numref}" in text and not broken:
                head, rest = text.split("\n", 1)
                body, link = rest.rsplit("\n:::\n", 1)
                out["data"]["text/markdown"] = f"```{head[3:]}\n{body}\n```\n{link}"  # the old backtick fence
                broken += 1
    assert broken == 1, "no table caption with a role on the KV-cache page to break"
    target.with_suffix(".ipynb").write_text(json.dumps(nb), encoding="utf-8")
    toc = tmp_path / "_toc.yml"
    toc.write_text(book.toc_yaml({"format": "jb-book", "root": "intro", "chapters": [{"file": job.docname}]}),
                   encoding="utf-8")
    book.build_html(mini, toc, strict=False, out_dir=tmp_path / "html")
    found = book.check_html(tmp_path / "html", [job.docname])[job.docname]
    assert any(f.startswith("raw MyST '```{'") for f in found)
    assert any(f.startswith("raw MyST '{download}`'") for f in found)
