"""Rewrite tests/data/validation_errors.yaml from the model as it is now.

    .venv/bin/python tests/data/regenerate.py

Run it when a change of the model's accuracy is intended, and commit the file with the
change: tests/test_validate.py holds every point to its stored error within a narrow band,
so an accuracy change is always seen and accepted on purpose.
"""

from __future__ import annotations

from pathlib import Path

from moecalc import calibrate, validate

OUT = Path(__file__).resolve().parent / "validation_errors.yaml"
HEADER = """\
# Signed error (%) of the roofline policy per point, as accepted: system figures
# (moecalc validate) and kernel figures (moecalc calibrate). tests/test_validate.py requires each
# point within BAND percentage points of its value here, and the points outside their tolerance
# to be exactly those marked within: false. Regenerate: .venv/bin/python tests/data/regenerate.py
"""


def main() -> None:
    lines = [HEADER, "validate:"]
    for r in validate.validate():
        lines.append(f"  {r['id']}: {{error_pct: {r['error_pct']:.2f}, within: {str(r['within']).lower()}}}")
    lines.append("calibrate:")
    for r in calibrate.evaluate():
        lines.append(f"  {r['id']}: {{error_pct: {r['error_pct']:.2f}, within: {str(r['within']).lower()}}}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
