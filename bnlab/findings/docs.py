"""docs/findings.md's verdict table, written from the finding objects (so the page cannot drift from the
code): `python -m bnlab.findings.docs [PATH]` rewrites the table between its two marker lines in PATH
(default docs/findings.md); `--check` only says whether it is current (exit status 1 when not)."""
from __future__ import annotations

import sys
from pathlib import Path

from .registry import REGISTRY

START = "<!-- findings table: written by `python -m bnlab.findings.docs`; do not edit by hand -->"
END = "<!-- end of the findings table -->"
POSTS_START = "<!-- posts table: written by `python -m bnlab.findings.docs`; do not edit by hand -->"
POSTS_END = "<!-- end of the posts table -->"
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


def posts_table() -> str:
    """Every number of the posts the report sets beside ours: its source (post, where in it) and finding."""
    rows = ["| finding | quantity | model | the post's number | source |", "|---|---|---|---|---|"]
    for f in REGISTRY:
        for n in f.posts:
            post = "part 6 (weight decay)" if "weight-decay" in n.link else "part 7 (batch norm) and its notebook"
            rows.append(f"| {f.id} | {_cell(n.quantity)} | {n.model or '-'} | {_cell(n.source_text)} | "
                        f"[{post}]({n.link}) |")
    return "\n".join(rows)


def _between(page: str, start: str, end: str, body: str) -> str:
    if start not in page or end not in page:
        raise ValueError(f"the page has no table markers ({start!r} ... {end!r})")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def with_table(page: str) -> str:
    """`page` with the text between each pair of markers replaced by the current table (ValueError without
    markers)."""
    return _between(_between(page, START, END, table()), POSTS_START, POSTS_END, posts_table())


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
