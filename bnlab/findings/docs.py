"""docs/findings.md's verdict table, written from the finding objects (so the page cannot drift from the
code): `python -m bnlab.findings.docs [PATH]` rewrites the table between its two marker lines in PATH
(default docs/findings.md); `--check` only says whether it is current (exit status 1 when not)."""
from __future__ import annotations

import sys
from pathlib import Path

from .registry import REGISTRY

START = "<!-- findings table: written by `python -m bnlab.findings.docs`; do not edit by hand -->"
END = "<!-- end of the findings table -->"
DEFAULT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "findings.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table() -> str:
    """The markdown table: one row per finding, in report order."""
    rows = ["| id | post | finding | source | source's number | PASS when |", "|---|---|---|---|---|---|"]
    for f in REGISTRY:
        s = f.spec
        rows.append(f"| {s.id} | {s.group} | {_cell(s.title)} | {_cell(s.source)} | {_cell(s.source_number)} | "
                    f"{_cell(s.threshold)} |")
    return "\n".join(rows)


def with_table(page: str) -> str:
    """`page` with the text between the markers replaced by the current table (ValueError without markers)."""
    if START not in page or END not in page:
        raise ValueError(f"the page has no findings-table markers ({START!r} ... {END!r})")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else DEFAULT_PAGE
    page = path.read_text()
    new = with_table(page)
    if check:
        print(f"{path}: {'up to date' if new == page else 'out of date: run python -m bnlab.findings.docs'}")
        return 0 if new == page else 1
    if new != page:
        path.write_text(new)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
