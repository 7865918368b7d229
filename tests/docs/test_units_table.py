"""docs/presets-and-units.md's table of units is the one the option fields generate (one source)."""
from __future__ import annotations

from pathlib import Path

from bnlab.config import units_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "presets-and-units.md"
START, END = "<!-- units table: generated from the option fields -->\n", "\n<!-- end of units table -->"


def test_the_units_table_in_the_docs_is_generated_from_the_fields() -> None:
    text = DOC.read_text()
    table = text[text.index(START) + len(START):text.index(END)]
    assert table == units_doc(), "regenerate it: python -c 'from bnlab.config import units_doc; print(units_doc())'"
    for flag in ("`--lr`", "`--wd`", "`--momentum`", "`--batch-size`", "`--epochs`", "`--label-smoothing`"):
        assert flag in table  # the hyper-parameters whose units the posts' recipes depend on
