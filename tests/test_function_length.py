"""No function in bnlab/ is longer than 80 lines (a function that long does several jobs: split it)."""
from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 80
PACKAGE = Path(__file__).resolve().parents[1] / "bnlab"


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """"path:line name (N lines)" of every function or method under `root` longer than `limit` lines, counted
    from its `def` line to its last (docstring included; decorators, such as click's options, not)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_bnlab_is_over_80_lines() -> None:
    too_long = long_functions(PACKAGE)
    assert not too_long, "functions over 80 lines: " + "; ".join(too_long)


def test_the_scan_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    head = "def short():\n    return 1\n\n\nclass C:\n    @staticmethod\n    def long():\n"
    (tmp_path / "m.py").write_text(f"{head}{body}\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:7 long (81 lines)"]
    assert long_functions(tmp_path, limit=81) == []
