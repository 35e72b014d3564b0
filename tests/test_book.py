"""The book driver (moecalc.book) and the page helpers (moecalc.pages): chapter discovery,
the plan and its table of contents from a fake params dir, the hash that skips
re-execution, the metadata stripping that makes reruns byte-identical. Fast: no kernel,
no Sphinx."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moecalc import book, pages
from moecalc.errors import InputError

HEAD = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
moecalc:
{meta}
---

# {title}
"""


def chapter(book_dir: Path, name: str, meta: str, title: str = "A page") -> Path:
    path = book_dir / "chapters" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEAD.format(meta=meta, title=title), encoding="utf-8")
    return path


def profile(params_dir: Path, stem: str, name: str, fp8: bool = True) -> None:
    path = params_dir / "hardware" / f"{stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    peaks = "  bf16: 100\n" + ("  fp8: 200\n" if fp8 else "  int8: 200\n")
    path.write_text(f"name: {name}\npeak_tflops:\n{peaks}", encoding="utf-8")


@pytest.fixture
def fake(tmp_path):
    """A book with two once-chapters around two per-hardware ones, and three profiles."""
    book_dir, params = tmp_path / "book", tmp_path / "params"
    chapter(book_dir, "anatomy", "  per: once\n  order: 10\n  part: The model")
    chapter(book_dir, "prefill", "  per: hardware\n  order: 20\n  requires: [peak_tflops.fp8]")
    chapter(book_dir, "decode", "  per: hardware\n  order: 30")
    chapter(book_dir, "seed", "  per: once\n  order: 90\n  part: Seeds\n  children: [errata, missing]")
    (book_dir / "chapters" / "notes.md").write_text("# not a chapter: no moecalc front matter\n")
    (book_dir / "errata.md").write_text("# Errata\n")
    profile(params, "h800", "H800 SXM5")
    profile(params, "b200", "B200")
    profile(params, "sg", "SG2260E", fp8=False)
    return book_dir, params


# ---------------------------------------------------------------- plan and TOC


def test_discover_orders_by_front_matter_and_ignores_other_md(fake):
    book_dir, _ = fake
    chapters = book.discover_chapters(book_dir)
    assert [c.name for c in chapters] == ["anatomy", "prefill", "decode", "seed"]
    assert [c.per for c in chapters] == ["once", "hardware", "hardware", "once"]
    assert chapters[1].requires == ("peak_tflops.fp8",)
    assert chapters[3].children == ("errata", "missing")


def test_bad_front_matter_is_one_clear_error(tmp_path):
    chapter(tmp_path, "bad", "  per: sometimes")
    with pytest.raises(InputError, match="moecalc.per"):
        book.discover_chapters(tmp_path)


def test_plan_runs_per_hardware_chapters_once_per_profile(fake):
    book_dir, params = fake
    jobs = book.plan(book.discover_chapters(book_dir), book.hardware_profiles(params), book_dir, params)
    names = [j.docname for j in jobs]
    assert names == [
        "executed/common/anatomy",
        "executed/b200/prefill", "executed/h800/prefill",  # sg lacks peak_tflops.fp8
        "executed/b200/decode", "executed/h800/decode", "executed/sg/decode",
        "executed/common/seed",
    ]
    by_name = {j.docname: j for j in jobs}
    assert by_name["executed/sg/decode"].parameters == {"hardware": "sg"}
    assert by_name["executed/common/anatomy"].parameters == {}
    assert by_name["executed/h800/decode"].output == book_dir / "executed" / "h800" / "decode.ipynb"


def test_per_model_chapters_run_once_per_model_profile(fake):
    book_dir, params = fake
    chapter(book_dir, "anatomy", "  per: model\n  order: 10\n  part: The model")
    for stem in ("deepseek-v3", "deepseek-v3.2"):
        (params / "model").mkdir(exist_ok=True)
        (params / "model" / f"{stem}.yaml").write_text("name: x\n", encoding="utf-8")
    jobs = book.plan(book.discover_chapters(book_dir), book.hardware_profiles(params), book_dir, params)
    models = [j for j in jobs if j.chapter.name == "anatomy"]
    # one page each, under common/, model as the papermill parameter, no dot in the file name
    assert [j.docname for j in models] == ["executed/common/anatomy-deepseek-v3", "executed/common/anatomy-deepseek-v3-2"]
    assert [j.parameters for j in models] == [{"model": "deepseek-v3"}, {"model": "deepseek-v3.2"}]
    tree = book.toc(jobs, params, book_dir)
    assert tree["parts"][0] == {"caption": "The model", "chapters": [{"file": j.docname} for j in models]}
    # --only matches the chapter name or the page's own name
    assert all(book.selected(j, ["common/anatomy"]) for j in models)
    assert [book.selected(j, ["common/anatomy-deepseek-v3-2"]) for j in models] == [False, True]


def test_a_profile_may_not_shadow_the_common_folder(fake):
    book_dir, params = fake
    with pytest.raises(InputError, match="common"):
        book.plan(book.discover_chapters(book_dir), ["h800", "common"], book_dir, params)


def test_toc_has_one_part_per_profile_and_existing_children_only(fake):
    book_dir, params = fake
    jobs = book.plan(book.discover_chapters(book_dir), book.hardware_profiles(params), book_dir, params)
    toc = book.toc(jobs, params, book_dir)
    assert toc["format"] == "jb-book" and toc["root"] == "intro"
    assert [p["caption"] for p in toc["parts"]] == [
        "The model", "B200 (b200.yaml)", "H800 SXM5 (h800.yaml)", "SG2260E (sg.yaml)", "Seeds"]
    # one entry per GPU, its other pages beneath (collapsed in the sidebar unless being read)
    assert toc["parts"][2]["chapters"] == [{"file": "executed/h800/prefill", "sections": [{"file": "executed/h800/decode"}]}]
    assert toc["parts"][3]["chapters"] == [{"file": "executed/sg/decode"}]
    assert toc["parts"][4]["chapters"] == [{"file": "executed/common/seed", "sections": [{"file": "errata"}]}]
    assert book.toc_yaml(toc).startswith("# Generated")


def test_adding_a_profile_adds_its_part(fake):
    book_dir, params = fake
    profile(params, "foo", "Foo 9000")
    jobs = book.plan(book.discover_chapters(book_dir), book.hardware_profiles(params), book_dir, params)
    captions = [p["caption"] for p in book.toc(jobs, params, book_dir)["parts"]]
    assert "Foo 9000 (foo.yaml)" in captions
    assert {j.docname for j in jobs} >= {"executed/foo/prefill", "executed/foo/decode"}


# ---------------------------------------------------------------- hashes and skipping


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "params" / "hardware").mkdir(parents=True)
    (root / "moecalc").mkdir()
    (root / "params" / "hardware" / "x.yaml").write_text("name: X\n")
    (root / "moecalc" / "counts.py").write_text("A = 1\n")
    return root


def test_common_digest_follows_code_and_versions_not_params(tmp_path):
    root = _root(tmp_path)
    versions = {"python": "3.11.7", "numpy": "2.0"}
    first = book.common_digest(root, versions)
    assert book.common_digest(root, versions) == first
    (root / "moecalc" / "__pycache__").mkdir()
    (root / "moecalc" / "__pycache__" / "counts.cpython-311.pyc").write_bytes(b"\0")
    assert book.common_digest(root, versions) == first  # bytecode is not an input
    (root / "params" / "hardware" / "x.yaml").write_text("name: Y\n")
    assert book.common_digest(root, versions) == first  # profiles count per page, as read
    (root / "moecalc" / "counts.py").write_text("A = 2\n")
    assert book.common_digest(root, versions) != first
    assert book.common_digest(root, {**versions, "numpy": "2.1"}) != book.common_digest(root, versions)


def test_job_digest_follows_source_parameters_and_the_files_read(fake):
    book_dir, params = fake
    root = params.parent
    jobs = book.plan(book.discover_chapters(book_dir), book.hardware_profiles(params), book_dir, params)
    b200, h800 = jobs[1], jobs[2]
    assert book.job_digest(b200, "c") != book.job_digest(h800, "c")  # same source, other parameters
    assert book.job_digest(b200, "c") != book.job_digest(b200, "d")
    before = book.job_digest(h800, "c")
    h800.chapter.path.write_text(h800.chapter.path.read_text() + "\nmore prose\n")
    assert book.job_digest(h800, "c") != before
    reads = ["params/hardware/h800.yaml"]
    with_reads = book.job_digest(h800, "c", reads, root)
    assert with_reads not in (None, book.job_digest(h800, "c"))
    profile(params, "new", "New GPU")  # a profile the page did not read changes nothing
    assert book.job_digest(h800, "c", reads, root) == with_reads
    profile(params, "h800", "H800 SXM5", fp8=False)  # one it read does
    assert book.job_digest(h800, "c", reads, root) != with_reads
    assert book.job_digest(h800, "c", ["params/hardware/gone.yaml"], root) is None


def test_relative_reads_are_sorted_repository_paths(tmp_path):
    inside, outside = tmp_path / "repo" / "params" / "a.yaml", tmp_path / "elsewhere.yaml"
    got = book.relative_reads([str(outside), str(inside), str(inside)], tmp_path / "repo")
    assert got == sorted(["params/a.yaml", outside.resolve().as_posix()])


def test_pop_reads_takes_the_driver_cell_off(fake):
    nb = {"cells": [{"cell_type": "code", "source": "x = 1", "outputs": []},
                    {"cell_type": "code", "source": book.READS_CELL,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": ["[\"/r/params/h.yaml\"]\n"]}]}]}
    assert book.pop_reads(nb) == ["/r/params/h.yaml"]
    assert [c["source"] for c in nb["cells"]] == ["x = 1"]
    with pytest.raises(InputError, match="reads cell"):
        book.pop_reads(nb)


def test_is_current_needs_the_notebook_its_hash_and_its_tables(fake):
    book_dir, params = fake
    root = params.parent
    job = book.plan(book.discover_chapters(book_dir), ["h800"], book_dir, params)[1]
    assert not book.is_current(job, "c", root)  # nothing executed yet
    job.output.parent.mkdir(parents=True)
    reads = ["params/hardware/h800.yaml"]
    nb = {"cells": [], "metadata": {"moecalc": {"inputs": book.job_digest(job, "c", reads, root), "reads": reads,
                                                "tables": ["tables/h800-prefill-x.csv"]}},
          "nbformat": 4, "nbformat_minor": 5}
    job.output.write_text(json.dumps(nb))
    assert not book.is_current(job, "c", root)  # its CSV is missing
    (job.output.parent / "tables").mkdir()
    (job.output.parent / "tables" / "h800-prefill-x.csv").write_text("a\n1\n")
    assert book.is_current(job, "c", root)
    assert not book.is_current(job, "d", root)  # code or versions changed
    profile(params, "b200", "B200 again")
    assert book.is_current(job, "c", root)  # a profile it did not read
    profile(params, "h800", "H800 renamed")
    assert not book.is_current(job, "c", root)  # the profile it read
    (params / "hardware" / "h800.yaml").unlink()
    assert not book.is_current(job, "c", root)  # ... or gone
    job.output.write_text("{not json")
    assert not book.is_current(job, "c", root)


def test_prune_removes_what_no_job_produces(fake):
    book_dir, params = fake
    jobs = book.plan(book.discover_chapters(book_dir), ["h800"], book_dir, params)
    keep = jobs[1].output
    keep.parent.mkdir(parents=True)
    keep.write_text(json.dumps({"metadata": {"moecalc": {"tables": ["tables/kept.csv"]}}}))
    (keep.parent / "tables").mkdir()
    (keep.parent / "tables" / "kept.csv").write_text("x\n")
    (keep.parent / "tables" / "stale.csv").write_text("x\n")
    gone = book_dir / "executed" / "oldgpu" / "prefill.ipynb"
    gone.parent.mkdir(parents=True)
    gone.write_text("{}")
    removed = book.prune(jobs, book_dir, log=lambda *_: None)
    assert sorted(p.name for p in removed) == ["prefill.ipynb", "stale.csv"]
    assert keep.is_file() and (keep.parent / "tables" / "kept.csv").is_file()
    assert not gone.parent.exists()  # the emptied profile folder goes too


# ---------------------------------------------------------------- determinism


def _executed() -> dict:
    """A notebook as papermill returns it: timings, kernel and version metadata."""
    return {
        "cells": [
            {"cell_type": "markdown", "id": "a1b2", "metadata": {"papermill": {"duration": 0.1}}, "source": "# T"},
            {"cell_type": "code", "id": "random-uuid", "execution_count": 1, "source": "x = 1",
             "metadata": {"tags": ["parameters"], "execution": {"iopub.execute_input": "2026-01-01T00:00:00Z"},
                          "papermill": {"start_time": "2026-01-01", "duration": 0.5, "status": "completed"}},
             "outputs": [{"output_type": "display_data", "metadata": {"execution": {"t": 1}},
                          "data": {"text/markdown": "see {download}`t.csv <tables/h800-decode-t.csv>`",
                                   "text/plain": "t"}}]},
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python", "version": "3.11.7", "codemirror_mode": {"name": "ipython"}},
            "papermill": {"start_time": "2026-01-01T00:00:00", "end_time": "x", "duration": 3.2,
                          "version": "2.7.0", "parameters": {"hardware": "h800"}},
            "jupytext": {"text_representation": {"jupytext_version": "1.19.6"}},
            "widgets": {},
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }


def test_clean_notebook_strips_volatile_metadata_and_sets_stable_ids():
    nb = book.clean_notebook(_executed(), "decode", "h800", {"hardware": "h800"}, "digest")
    text = json.dumps(nb)
    for volatile in ("papermill", "\"execution\"", "jupytext", "version", "duration", "2026-01-01", "random-uuid"):
        assert volatile not in text, volatile
    assert [c["id"] for c in nb["cells"]] == ["decode-000", "decode-001"]
    assert nb["cells"][1]["metadata"] == {"tags": ["parameters", "hide-input"]}  # collapsed on the page
    assert nb["metadata"]["language_info"] == {"name": "python"}
    assert nb["metadata"]["moecalc"] == {"chapter": "decode", "profile": "h800", "parameters": {"hardware": "h800"},
                                         "inputs": "digest", "reads": [], "tables": ["tables/h800-decode-t.csv"]}
    assert nb["nbformat_minor"] == 5


def test_cleaning_is_deterministic_and_serialises_identically():
    one = book.dumps(book.clean_notebook(_executed(), "decode", "h800", {"hardware": "h800"}, "d"))
    other = _executed()
    other["metadata"]["papermill"]["duration"] = 9.9  # a slower run
    other["cells"][1]["metadata"]["papermill"]["start_time"] = "2027-05-05"
    two = book.dumps(book.clean_notebook(other, "decode", "h800", {"hardware": "h800"}, "d"))
    assert one == two and one.endswith("\n")


def test_cell_ids_are_valid_nbformat_ids():
    import re

    for chapter_name in ("kv-cache", "a" * 80, "seed 003!"):
        cid = book.cell_id(chapter_name, 7)
        assert re.fullmatch(r"[a-zA-Z0-9-_]{1,64}", cid), cid


def test_stderr_output_is_reported():
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stderr",
                                                       "text": ["DeprecationWarning: x\n"]}]}]}
    assert book.stderr_outputs(nb) == ["DeprecationWarning: x\n"]
    assert book.stderr_outputs(_executed()) == []


def test_write_if_changed_keeps_mtime_of_unchanged_files(tmp_path):
    path = tmp_path / "a" / "n.ipynb"
    assert book.write_if_changed(path, "x\n")
    os.utime(path, (1, 1))
    assert not book.write_if_changed(path, "x\n")
    assert path.stat().st_mtime == 1
    assert book.write_if_changed(path, "y\n") and path.read_text() == "y\n"


# ---------------------------------------------------------------- page helpers


def test_table_writes_csv_only_for_the_driver(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(pages, "_display", lambda bundle, metadata=None: shown.append(bundle))
    monkeypatch.chdir(tmp_path)
    page = pages.Page("decode", "h800")
    monkeypatch.delenv(pages.WRITE_ENV, raising=False)
    page.table("t", "A caption.", ["op", "ms"], [("MLA", 1.23456), ("MoE", None)], [None, ".2f"])
    assert not (tmp_path / "tables").exists()  # as under nbval: nothing written
    md = shown[-1]["text/markdown"]
    assert ":name: h800-decode-t" in md and "A caption." in md
    assert "| MLA | 1.23 |" in md and "| MoE |  |" in md and "|:---|---:|" in md
    assert "<tables/h800-decode-t.csv>" in md
    monkeypatch.setenv(pages.WRITE_ENV, "1")
    page.table("u", "Another.", ["op", "ms"], [("MLA", 1.23456)])
    assert (tmp_path / "tables" / "h800-decode-u.csv").read_text() == "op,ms\nMLA,1.23456\n"
    with pytest.raises(ValueError, match="twice"):
        page.table("u", "Again.", ["op"], [("x",)])


def test_figure_png_is_deterministic(monkeypatch):
    shown = []
    monkeypatch.setattr(pages, "_display", lambda bundle, metadata=None: shown.append((bundle, metadata)))
    pngs = []
    for i in range(2):
        page = pages.Page("decode", f"p{i}")
        fig, ax = page.subplots()
        ax.plot([1, 2, 3], [3, 1, 2], label="x")
        ax.legend()
        page.figure("f", "Caption.", fig)
        bundle, meta = shown[-3]
        assert meta["scrapbook"]["name"] == f"p{i}-decode-f"
        pngs.append(bundle[pages.GLUE_PREFIX + "image/png"])
        assert "{glue:figure} " + f"p{i}-decode-f" in shown[-2][0]["text/markdown"]
        # the data behind it, as text nbval compares: y 3, 1, 2 → quartiles by hand
        assert shown[-1][0]["text/plain"] == "axes 1 | x: 3 points, x 1…3, y min/q1/median/q3/max 1 / 1.5 / 2 / 2.5 / 3"
    assert pngs[0] == pngs[1]
    import base64

    assert b"Matplotlib" not in base64.b64decode(pngs[0])  # no version stamp


def test_figure_digest_names_every_series():
    page = pages.Page("decode", "q")
    fig, (a, b) = page.subplots(ncols=2)
    a.set_title("left\nsecond line")
    a.plot([0, 10], [5, 7])
    a.scatter([1, 2], [3, 4], label="dots")
    b.bar(["one", "two"], [2.0, 4.0], label="bars")
    b.set_ylabel("GB")
    assert pages.figure_digest(fig).splitlines() == [
        "left | line 1: 2 points, x 0…10, y min/q1/median/q3/max 5 / 5.5 / 6 / 6.5 / 7",
        "left | dots: 2 points, x 1…2, y min/q1/median/q3/max 3 / 3.25 / 3.5 / 3.75 / 4",
        "GB | bars: 2 points, x -0.4…0.6, y min/q1/median/q3/max 2 / 2.5 / 3 / 3.5 / 4",
    ]


def test_provenance_line_has_hashes_and_no_date(tmp_path):
    (tmp_path / "book").mkdir()
    src = tmp_path / "book" / "page.md"
    src.write_bytes(b"# page\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_bytes(b"x: 1\n")
    line = book.provenance(src, ["params/a.yaml"], tmp_path)
    import hashlib

    assert f"page source `book/page.md` sha256:{hashlib.sha256(b'# page' + bytes([10])).hexdigest()[:12]}" in line
    assert f"`params/a.yaml` sha256:{hashlib.sha256(b'x: 1' + bytes([10])).hexdigest()[:12]}" in line
    assert "moecalc 0.1.0" in line and "20" not in line.split("moecalc 0.1.0")[0]
    nb = book.clean_notebook({"cells": [], "metadata": {}}, "page", "common", {}, "d", ["params/a.yaml"], line)
    assert nb["cells"][-1]["cell_type"] == "markdown" and nb["cells"][-1]["source"] == line


def test_like_prints_at_the_published_precision():
    assert pages.like("52240.1", 52240.115) == "52240.1"
    assert pages.like("3.13B", 3.1333) == "3.13"
    assert pages.like("576", 575.6) == "576"
    assert pages.like("1,879.856", 1879.8561) == "1,879.856"


# ---------------------------------------------------------------- functions the book added to moecalc
# (counts.gemm_traffic / layer_traffic / roofline / kv_transfer_rate / kv_format_bytes_per_token, schedule.*,
#  seed003.max_decode_batch; the lead may move these next to their modules' tests)

import numpy as np  # noqa: E402

from moecalc import counts, profiles, schedule  # noqa: E402
from moecalc.policies import seed003  # noqa: E402


def test_gemm_traffic_counts_weights_once_and_activations_per_token():
    t = counts.gemm_traffic(4, 10, 20, weight_bpe=1, act_bpe=2, copies=3)
    assert t.flops == 3 * 2 * 4 * 10 * 20
    assert t.weight_bytes == 3 * 200 and t.activation_bytes == 3 * 4 * 30 * 2 and t.kv_bytes == 0
    assert t.intensity == pytest.approx(t.flops / (600 + 720))


def test_layer_traffic_decode_attention_reads_the_latent_cache_once(v3):
    ops = counts.layer_traffic(v3, 1, 4096, batch=32, mode="absorbed", kv_bpe=1)
    att = ops["attention"]
    assert att.kv_bytes == 32 * 4096 * 576  # 512 latent + 64 rope, one byte each
    flops = counts.mla_ops(v3, 1, 4096, 0.0, "absorbed")
    assert att.flops == pytest.approx(32 * (flops["score"] + flops["score_v"]))
    # weight GEMMs: intensity ≈ 2 × tokens per FP8 byte, so about 64 at batch 32
    assert 50 < ops["wo"].intensity < 64
    # doubling the batch doubles a GEMM's FLOPs but not its weight bytes
    ops2 = counts.layer_traffic(v3, 1, 4096, batch=64, mode="absorbed")
    assert ops2["wo"].flops == 2 * ops["wo"].flops and ops2["wo"].weight_bytes == ops["wo"].weight_bytes
    # plain decode up-projects every cached latent: w_uk sees batch × kv rows
    plain = counts.layer_traffic(v3, 1, 4096, batch=32, mode="plain")
    assert plain["w_uk"].flops == pytest.approx(2 * 32 * 4096 * 512 * 128 * 128)


def test_layer_traffic_takes_batch_arrays(v3):
    b = np.array([1.0, 8.0, 64.0])
    ops = counts.layer_traffic(v3, 1, 2048, batch=b, mode="premultiplied")
    assert ops["routed_experts"].intensity.shape == (3,)
    assert np.all(np.diff(ops["q_absorb"].intensity) > 0)


def test_roofline_is_min_of_peak_and_bandwidth_times_intensity():
    out = counts.roofline(np.array([1.0, 100.0, 1e4]), peak_flops=1e15, bandwidth=1e12)
    assert out.tolist() == [1e12, 1e14, 1e15]


def test_kv_transfer_rate_is_tokens_times_all_layers(v3):
    assert counts.kv_transfer_rate(v3, 1000.0, 2) == 1000 * 576 * 2 * 61
    assert counts.kv_transfer_rate(v3, 1000.0, kv_format="fp8+scales") == 1000 * 656 * 61
    with pytest.raises(ValueError):
        counts.kv_transfer_rate(v3, 1000.0)


def test_kv_formats_per_token_and_layer(v3):
    """Seed 003's 576 B (FP8, no scales), FlashMLA's FP8 with one FP32 scale per 128 latent
    values and a BF16 RoPE key (512 + 16 + 128 = 656 B), the reference's BF16 (1,152 B)."""
    per_layer = {f: counts.kv_format_bytes_per_token(v3, f, layers=1) for f in counts.KV_FORMATS}
    assert per_layer == {"fp8": 576, "fp8+scales": 656, "bf16": 1152}
    assert counts.kv_format_bytes_per_token(v3, "bf16") == counts.kv_bytes_per_token(v3, 2.0)
    with pytest.raises(ValueError, match="unknown KV format"):
        counts.kv_format_bytes_per_token(v3, "fp4")


def test_two_batch_overlap_hides_or_exposes():
    stages = ((("a",), ("x",)), (("b",), ()))
    hidden = schedule.two_batch_overlap({"a": 3.0, "b": 1.0, "x": 2.0}, stages)
    assert (float(hidden.time), float(hidden.exposed), float(hidden.budget)) == (4.0, 0.0, 1.0)
    assert bool(hidden.hidden)
    exposed = schedule.two_batch_overlap({"a": np.array([3.0, 1.0]), "b": 1.0, "x": 2.0}, stages)
    assert exposed.time.tolist() == [4.0, 3.0] and exposed.exposed.tolist() == [0.0, 1.0]
    assert exposed.hidden.tolist() == [True, False]
    assert schedule.no_overlap({"a": 3.0, "b": 1.0, "x": 2.0}) == 6.0
    with pytest.raises(KeyError, match="'y'"):
        schedule.two_batch_overlap({"a": 1.0}, ((("a",), ("y",)),))


def test_seed003_stages_reduce_to_the_seeds_overlap_when_hidden(v3):
    hw = profiles.load_hardware("h800")
    d = seed003.decode(v3, hw, 32, 4383, 1)
    o = schedule.two_batch_overlap(d.layers, schedule.SEED003_DECODE_STAGES)
    step = schedule.step_time(d.layers["DenseMLA"] + d.layers["DenseMLP"], o.time, 3, 58)
    assert bool(o.hidden) and float(step) == pytest.approx(float(d.tpot_overlap))
    assert float(o.budget) == pytest.approx(float(d.time_budget))


def test_bandwidth_to_hide_scales_inversely():
    assert float(schedule.bandwidth_to_hide(50.0, comm=2.0, compute=1.0)) == 100.0


def test_max_decode_batch_is_where_memory_runs_out(v3):
    hw = profiles.load_hardware("h800")
    cap = seed003.max_decode_batch(v3, hw, 1, 4383, 1210)
    needed, available = seed003.decode_memory(v3, hw, seed003.load_policy(), 1, cap, 4383, 1210)
    assert float(needed) == pytest.approx(available)
    assert seed003.max_decode_batch(v3, hw, 4, 4383, 1210) < cap / 2  # each TP rank holds the whole latent cache
    # the §3.1 table's EP320 takes 64 redundant experts, which the policy's EP144 default cannot
    assert seed003.max_decode_batch(v3, hw, 1, 4383, 1210, ep=320) > cap
    many = seed003.max_decode_batch(v3, hw, 1, np.array([1000.0, 100000.0]), 0)
    assert many[0] > many[1]


def test_a_second_build_waits_for_the_first(tmp_path):
    import threading
    import time

    path, entered, messages = tmp_path / "_build" / "book.lock", threading.Event(), []

    def second():
        with book._Lock(path, log=messages.append):
            entered.set()

    with book._Lock(path, log=messages.append):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        assert not entered.is_set()
    t.join(5)
    assert entered.is_set() and "waiting" in messages[0]


def test_prune_html_removes_pages_of_gone_notebooks(fake):
    book_dir, params = fake
    jobs = book.plan(book.discover_chapters(book_dir), ["h800"], book_dir, params)
    html = book_dir / "_build" / "html"
    for rel in ("executed/h800/prefill.html", "executed/foo/prefill.html", "_sources/executed/foo/prefill.ipynb",
                "intro.html"):
        (html / rel).parent.mkdir(parents=True, exist_ok=True)
        (html / rel).write_text("x")
    removed = book.prune_html(jobs, html)
    assert sorted(p.relative_to(html).as_posix() for p in removed) == [
        "_sources/executed/foo/prefill.ipynb", "executed/foo/prefill.html"]
    assert (html / "executed" / "h800" / "prefill.html").is_file() and (html / "intro.html").is_file()
    assert not (html / "executed" / "foo").exists()


def test_read_yaml_records_every_file_it_parses(tmp_path):
    from moecalc import profiles

    path = tmp_path / "x.yaml"
    path.write_text("name: X\n")
    profiles.read_yaml(path)
    assert path.resolve() in profiles.FILES_READ
    assert (tmp_path / "never.yaml").resolve() not in profiles.FILES_READ


def test_every_executed_page_ends_with_its_provenance_line():
    """Citable pages: the last cell of every committed page names the moecalc version and the
    content hashes of its source and of the params files it read (regenerate with
    `moecalc book` after a change to the line's format)."""
    executed = sorted((book.BOOK_DIR / book.EXECUTED).glob("*/*.ipynb"))
    assert executed
    for path in executed:
        nb = json.loads(path.read_text(encoding="utf-8"))
        last = nb["cells"][-1]
        source = "".join(last["source"]) if isinstance(last["source"], list) else last["source"]
        assert last["cell_type"] == "markdown" and source.startswith("<small>Provenance: moecalc "), path
        for read in nb["metadata"]["moecalc"]["reads"]:
            assert f"`{read}` sha256:" in source, (path, read)


# ---------------------------------------------------------------- one parameters cell, titles


def test_injected_parameters_fold_into_the_parameters_cell():
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Decode"},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [],
         "source": 'hardware = "h800"      # a file stem\nbatches = [8,\n           16]  # two lines\nep = 144'},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
         "source": '# Parameters\nhardware = "h20"\nbatches = [4]\nextra = 2\n'},
        {"cell_type": "code", "metadata": {}, "outputs": [], "source": "x = 1"},
    ]}
    book.merge_parameters(nb, {"hardware": "h20", "batches": [4], "extra": 2})
    cells = nb["cells"]
    assert len(cells) == 3 and not any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    assert cells[1]["source"] == 'hardware = "h20"      # a file stem\nbatches = [4]  # two lines\nep = 144\nextra = 2'
    assert cells[1]["metadata"]["tags"] == ["parameters", "hide-input"]
    ns: dict = {}
    exec(cells[1]["source"], ns)  # the folded cell runs, and gives the injected values
    assert (ns["hardware"], ns["batches"], ns["ep"], ns["extra"]) == ("h20", [4], 144, 2)


def test_retitle_prefixes_the_first_heading_with_the_gpu():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("---\nx: 1\n---\n\n# Decode\n\n## Part"),
                                         nbformat.v4.new_markdown_cell("# Another")])
    book.retitle(nb, "H20")
    assert nb.cells[0].source == "---\nx: 1\n---\n\n# H20 · Decode\n\n## Part" and nb.cells[1].source == "# Another"
