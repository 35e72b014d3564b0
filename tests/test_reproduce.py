"""Seed 003 reproduced: every printed figure has a well-formed record, every record that is
not an erratum matches, and the errata page in book/ is what the code renders."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from moecalc.reproduce import SEEDS, seed003, seed003_errata

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"table", "row", "column", "published", "value", "computed", "unit", "match", "note"}


@pytest.fixture(scope="module")
def records():
    return seed003.records()


def _is_erratum(r):
    return r["note"].startswith("erratum:")


def _is_truncated(r):
    return r["note"].startswith("truncated:")


def test_enough_records_and_few_errata(records):
    assert len(records) >= 140
    errata = [r for r in records if _is_erratum(r)]
    assert 1 <= len(errata) <= 8


def test_every_record_is_well_formed(records):
    for r in records:
        assert set(r) == KEYS, r
        for key in ("table", "row", "column", "published", "unit", "note"):
            assert isinstance(r[key], str), (key, r)
        assert r["table"] and r["published"] and r["unit"]
        assert isinstance(r["match"], bool)
        assert isinstance(r["value"], float) and isinstance(r["computed"], float)
        assert math.isfinite(r["value"]) and math.isfinite(r["computed"])
        value, _ = seed003.parse(r["published"])
        assert value == r["value"], r  # published parses to value


def test_every_miss_is_an_erratum_or_a_truncated_print(records):
    misses = [r for r in records if not r["match"] and not _is_erratum(r) and not _is_truncated(r)]
    assert not misses, misses
    assert sum(r["match"] for r in records) >= 140


def test_errata_do_not_match_and_say_why(records):
    for r in filter(_is_erratum, records):
        assert not r["match"], r
        assert len(r["note"]) > len("erratum: ") + 20


def _record(records, table, row, column):
    (r,) = [r for r in records if (r["table"], r["row"], r["column"]) == (table, row, column)]
    return r


def test_records_checked_by_hand(records):
    """A few records whose verdict was checked by hand against the printed figure (not
    recomputed with seed003.matches): a match at the printed precision, a truncated print,
    an erratum."""
    r = _record(records, "TL;DR: Prefill 阶段", "TPS(Overlap)", "H800")
    assert r["published"] == "52240.1" and r["value"] == 52240.1
    assert 52240.05 <= r["computed"] < 52240.15 and r["match"] is True  # rounds to the printed 52240.1
    r = _record(records, "TL;DR: Prefill 阶段", "TPS", "H800")
    assert r["published"] == "33741.0" and 33740.95 <= r["computed"] < 33741.05 and r["match"] is True
    r = _record(records, "§1.1.2 矩阵吸收模式: ratios and mla_matabsob_mem", "prose: 参数量也增加到", "")
    # 598.147072 M parameters: rounds to 598.15, the seed prints 598.14 (truncated)
    assert r["published"] == "598.14M" and r["computed"] == pytest.approx(598.147072, abs=1e-6)
    assert r["match"] is False and r["note"].startswith("truncated:")
    r = _record(records, "§1.1.2 矩阵吸收模式: ratios and mla_matabsob_mem", "prose: params ratio (同样约 3.197 倍)",
                "598.14M / 187.17M")
    # 598.147072 / 187.17 ≈ 3.1957, which prints as 3.196, not the seed's 3.197
    assert r["computed"] == pytest.approx(598.147072 / 187.17, rel=2e-5) and f"{r['computed']:.3f}" == "3.196"
    assert r["match"] is False and r["note"].startswith("erratum:")
    r = _record(records, "§1.4 数据汇总: 算力消耗", "Expert", "运算复杂度(FLops)")
    # 2 × 3 × 7168 × 2048 = 88.08 MFLOP per token; the seed prints 488.1M (a typo for 88.1M)
    assert r["published"] == "488.1M" and r["computed"] == pytest.approx(88.1, abs=0.05) and r["match"] is False


def test_truncated_records_truncate_to_the_print_and_only_truncate(records):
    truncated = [r for r in records if _is_truncated(r)]
    assert truncated
    for r in truncated:
        assert not r["match"], r  # rounding alone misses ...
        assert seed003.matches(r["computed"], r["published"], truncated=True), r  # ... truncating hits


def test_one_record_per_printed_cell(records):
    cells = Counter((r["table"], r["row"], r["column"]) for r in records)
    assert max(cells.values()) == 1, [c for c, n in cells.items() if n > 1]


def test_required_coverage(records):
    def count(prefix):
        return sum(r["table"].startswith(prefix) for r in records)

    assert count("TL;DR: Prefill") == 4
    assert count("TL;DR: Decoding") == 36  # 6 columns × TPOT/TPS/Total, overlapped or not
    for prefix, least in (("§1.1.1", 14), ("§1.1.2", 9), ("§1.2", 9), ("§1.3", 9), ("§1.4", 25),
                          ("§2.1", 18), ("§2.2", 4), ("§2.3", 16), ("§2.4", 16), ("§2.5", 41), ("§2.6", 31),
                          ("§2.7", 8), ("§3.2", 2)):
        assert count(prefix) >= least, prefix
    published = Counter(r["published"] for r in records)
    for figure in ("187.17 M", "170.36 MMac", "0.37429248000000004", "598.147072", "3.3028", "0.015", "671.16B",
                   "11.41B", "106.14M", "68.62KB", "34.31KB", "32207", "3.13B", "2.91GB", "488.1M"):
        assert published[figure] >= 1, figure


def test_known_errata_are_flagged(records):
    flagged = {r["published"] for r in records if _is_erratum(r)}
    assert {"488.1M", "3.197"} <= flagged


# ---------------------------------------------------------------- the matching helper


@pytest.mark.parametrize("computed, published, truncated, expected", [
    (52240.115, "52240.1", False, True),
    (52240.151, "52240.1", False, False),
    (68.625, "68.62KB", False, True),  # an exact tie: Python's %.2f prints it 68.62
    (0.37429248, "0.37429248000000004", False, True),  # float noise
    (0.3742925, "0.37429248000000004", False, False),
    (926.67904, "926.67M", False, False),
    (926.67904, "926.67M", True, True),
    (926.66999, "926.67M", True, False),
    (0.0, "0.0 Mac", False, True),
    (float("nan"), "1.0", False, False),
])
def test_matches(computed, published, truncated, expected):
    assert seed003.matches(computed, published, truncated) is expected


def test_parse():
    assert seed003.parse("187.17 M") == (187.17, 2)
    assert seed003.parse("32207") == (32207.0, 0)
    assert seed003.parse("0.37429248000000004") == (0.37429248000000004, 17)
    with pytest.raises(ValueError):
        seed003.parse("MLA")


def test_as_printed():
    assert seed003.as_printed(1.835264, 2, truncated=True) == 1.83
    assert seed003.as_printed(1.835264, 2) == 1.84


def test_cli_registry():
    assert SEEDS["seed-003"]() == seed003.records()


# ---------------------------------------------------------------- errata page


def test_errata_page_is_rendered_from_code():
    page = (ROOT / "book" / "errata-seed-003.md").read_text(encoding="utf-8")
    assert page == seed003_errata.render_markdown(), (
        "stale: run moecalc reproduce seed-003 --errata > book/errata-seed-003.md")


def test_errata_are_complete_data():
    items = seed003_errata.errata()
    assert len(items) >= 12
    assert len({e.id for e in items}) == len(items)
    for e in items:
        assert math.isfinite(e.corrected) and e.corrected > 0
        for text in (e.title, e.section, e.seed_says, e.seed_figure, e.corrected_text, e.why, e.assumptions):
            assert text.strip()


def test_errata_corrections_point_the_right_way():
    by_id = {e.id: e for e in seed003_errata.errata()}
    assert round(by_id["E1"].corrected, 1) == 88.1
    assert round(by_id["E2"].corrected, 3) == 3.196
    assert by_id["E6"].corrected < 50  # real GB/s per node is far below the 50 GB/s NIC
    assert by_id["E9"].corrected == 656
    assert 671.0 < by_id["E10"].corrected < 671.1  # B params, no biases


def test_errata_page_structure():
    page = seed003_errata.render_markdown()
    assert page.startswith("(errata-seed-003)=\n# Seed 003 errata\n")
    assert page.count("\n# ") == 1 and page.count("\n## ") == 1 + len(seed003_errata.errata())
    assert "| # | erratum | seed section | seed figure | corrected |" in page
