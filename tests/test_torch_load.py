"""Every torch.load in the repository goes through `bnlab.io.torchfile.load_torch_file` (weights_only=True):
a crafted .pt file handed to any bnlab command, figure script, benchmark or analysis cannot run code.

The scan parses every Python file of the repository (not a text grep: comments and strings do not
count, aliases such as `from torch import load` do). Tests may call torch.load to inspect what bnlab
wrote, with weights_only=True spelled out; nothing anywhere may pass weights_only=anything else.
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from bnlab.io.torchfile import load_torch_file

ROOT = Path(__file__).resolve().parents[1]
SAFE = Path("bnlab/io/torchfile.py")
SKIP = {"build", "dist", "mutants", "runs", "results", "figs", "out", "data", "__pycache__"}


def python_files() -> list[Path]:
    return sorted(p.relative_to(ROOT) for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in SKIP or part.endswith(".egg-info")
                             for part in p.relative_to(ROOT).parts[:-1]))


def torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of torch.load / torch.serialization.load, also through `import torch as t` or `from torch import load`."""
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in load_names:
            calls.append(node)
        elif isinstance(f, ast.Attribute) and f.attr == "load":
            base = f.value
            if isinstance(base, ast.Attribute) and base.attr == "serialization":
                base = base.value
            if isinstance(base, ast.Name) and base.id in torch_names:
                calls.append(node)
    return calls


def weights_only_true(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_every_torch_load_is_the_safe_one() -> None:
    files = python_files()
    assert SAFE in files and Path("figures/plot_outstats.py") in files and len(files) > 50  # the scan sees the repo
    bad = []
    for rel in files:
        tree = ast.parse((ROOT / rel).read_text(), filename=str(rel))
        for node in ast.walk(tree):  # weights_only=False (or a variable) nowhere, whoever calls what
            if isinstance(node, ast.keyword) and node.arg == "weights_only" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is True):
                bad.append(f"{rel}:{node.value.lineno}: weights_only={ast.unparse(node.value)}")
        for call in torch_load_calls(tree):
            if rel == SAFE or (rel.parts[0] == "tests" and weights_only_true(call)):
                continue
            bad.append(f"{rel}:{call.lineno}: {ast.unparse(call)} (use bnlab.io.torchfile.load_torch_file)")
    assert not bad, "unsafe torch.load:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, found", [
    ("import torch\ntorch.load(p)", 1), ("import torch as t\nt.load(p)", 1), ("from torch import load\nload(p)", 1),
    ("import torch\ntorch.serialization.load(p)", 1), ("import json\njson.load(f)", 0), ("x = 'torch.load(p)'", 0),
])
def test_the_scan_finds_torch_load_however_spelled(source: str, found: int) -> None:
    assert len(torch_load_calls(ast.parse(source))) == found


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))  # what a crafted file does: call something on load


def test_the_safe_loader_refuses_code_and_reads_tensors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_torch_file(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out
    torch.save({"t": torch.arange(3), "meta": [1, "a", None]}, tmp_path / "ok.pt")
    d = load_torch_file(tmp_path / "ok.pt")
    assert torch.equal(d["t"], torch.arange(3)) and d["meta"] == [1, "a", None]


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # proof of execution: unpickling creates a file


def test_plot_outstats_refuses_a_crafted_file_without_running_it(tmp_path: Path) -> None:
    """The README's own command on a folder whose outstats.pt asks to run code: one line, exit 2, nothing run."""
    import json
    import subprocess
    import sys

    folder, marker = tmp_path / "os", tmp_path / "ran"
    folder.mkdir()
    (folder / "outstats.json").write_text(json.dumps({}))
    torch.save({"grads": _Touch(marker)}, folder / "outstats.pt")
    r = subprocess.run([sys.executable, str(ROOT / "figures" / "plot_outstats.py"), str(folder), "--labels", "bn",
                        "--out", str(tmp_path / "figs")], capture_output=True, text=True, timeout=300)
    assert not marker.exists()
    assert r.returncode == 2 and r.stderr.strip().startswith("plot_outstats: error:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
