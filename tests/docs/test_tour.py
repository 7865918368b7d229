"""The documentation runs as written: the CLI tour of docs/cli.md top to bottom, the README's Python
example, and the README's length and links.

The tour and the example are written for CIFAR-10. The tests change one thing each, in a temporary
folder: the tour's data folder DATA becomes a small folder in the official format, and the example's
two size lines become a tiny run on the synthetic task. Commands run in this process (click's runner
for `bnlab`, runpy for the figure scripts): the same code as from a shell, without one interpreter
start-up per command.
"""
from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import matplotlib
import pytest
from click.testing import CliRunner

from bnlab.cli import main
from conftest import write_cifar_folder

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"

# The only change made to the tour: its CIFAR-10 folder DATA becomes a small folder of random images in the
# official format (1,000 training, 200 test images; tests/conftest.py).
DATA = "DATA"
OUTPUT_OPTIONS = ("--out", "-o")


def fenced_block(text: str, info: str) -> str:
    """The body of the one fenced block whose info string is `info` (e.g. "bash tour")."""
    blocks = re.findall(rf"^```{re.escape(info)}[ \t]*\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, f"expected one ```{info} block, found {len(blocks)}"
    return blocks[0]


def tour_commands(text: str) -> list[list[str]]:
    """The tour's commands as argument lists: continuation lines joined, comments dropped."""
    body = fenced_block(text, "bash tour").replace("\\\n", " ")
    return [words for line in body.splitlines() if (words := shlex.split(line, comments=True))]


def substitute(words: list[str], data: Path) -> list[str]:
    return [str(data) if w == DATA else w for w in words]


def paths_of(args: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of one command: outputs follow --out/-o, every other word with a '/' is read."""
    inputs, outputs = [], []
    for prev, word in zip([None, *args], args):
        if prev in OUTPUT_OPTIONS:
            outputs.append(word)
        elif "/" in word and not word.startswith("-"):
            inputs.append(word)
    return inputs, outputs


def run_command(words: list[str]) -> str:
    """Run one tour command; return its output. Fails the test unless it exits 0."""
    prog, args = words[0], words[1:]
    if prog == "bnlab":
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, f"{shlex.join(words)} exited {r.exit_code}:\n{r.output}\n{r.exception!r}"
        return r.output
    assert prog == "python" and args[0].startswith("figures/"), f"the tour runs bnlab or figures/: {words}"
    script = ROOT / args[0]
    argv, path = sys.argv, sys.path[:]
    sys.argv, sys.path = [str(script), *args[1:]], [str(script.parent), *sys.path]  # as `python script`
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{shlex.join(words)} exited {e.code}"
    finally:
        sys.argv, sys.path = argv, path
    return ""


def test_tour_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    commands = tour_commands(CLI_DOC.read_text())
    assert len(commands) >= 10
    data = write_cifar_folder(tmp_path / "data", per_batch=200)
    (tmp_path / "tour").mkdir()
    monkeypatch.chdir(tmp_path / "tour")  # the tour's relative runs/, results/, figs/ land here; nothing else is
    written: set[str] = set()
    for words in commands:
        args = substitute(words, data)
        inputs, outputs = paths_of(args[2:] if args[0] == "python" else args[1:])
        for p in inputs:  # the folder started empty: whatever exists was written by an earlier command
            assert Path(p).exists(), f"{shlex.join(words)} reads {p}, which no earlier command wrote"
        run_command(args)
        for p in outputs:
            out = Path(p)
            assert out.exists() and (out.is_file() or any(out.iterdir())), f"{shlex.join(words)} wrote no {p}"
            written.add(p)
    # what the tour says it makes is there at the end: the figures of every figure script
    figs = sorted(f.name for f in (tmp_path / "tour" / "figs").iterdir())
    for stem in ("hessian", "layer_grad_norms", "projected_eigs"):
        assert f"{stem}.png" in figs and f"{stem}.pdf" in figs, figs
    assert any(name.startswith("sweep") for name in figs) and any("collapse" in n for n in figs), figs


def test_tour_reads_only_its_own_outputs_and_the_data() -> None:
    """Every path a tour command reads is DATA, a figure script, or what an earlier command wrote."""
    written: list[str] = []
    for words in tour_commands(CLI_DOC.read_text()):
        args = words[2:] if words[0] == "python" else words[1:]
        inputs, outputs = paths_of(args)
        for p in inputs:
            assert any(p == w or p.startswith(w.rstrip("/") + "/") for w in written), \
                f"{shlex.join(words)} reads {p}, which no earlier command of the tour writes"
        written += outputs
    assert DATA in {w for words in tour_commands(CLI_DOC.read_text()) for w in words}


def test_readme_tour_is_part_of_the_tested_tour() -> None:
    """The README's short tour: each command is one of docs/cli.md's (so the tour test runs it), in the
    same order, and it chains on its own."""
    full = [shlex.join(w) for w in tour_commands(CLI_DOC.read_text())]
    short = tour_commands(README.read_text())
    positions = [full.index(shlex.join(w)) if shlex.join(w) in full else -1 for w in short]
    assert -1 not in positions, "a README tour command is not in docs/cli.md's tour"
    assert positions == sorted(positions) and len(short) >= 3
    written: list[str] = []
    for words in short:
        inputs, outputs = paths_of(words[1:])
        assert all(any(p == w or p.startswith(w + "/") for w in written) for p in inputs), shlex.join(words)
        written += outputs


def markdown_links(text: str) -> list[tuple[str, str]]:
    """(file, #anchor or "") of every relative link (web addresses and in-page anchors left out)."""
    return re.findall(r"\]\((?!https?://|#)([^)#\s]+)(#[^)\s]*)?\)", text)


def anchors(page: Path) -> set[str]:
    """The heading anchors a code host makes: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), flags=re.M)
    return {"#" + re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def check_links(page: Path) -> list[str]:
    links = markdown_links(page.read_text())
    for target, anchor in links:
        path = page.parent / target
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        assert not anchor or anchor in anchors(path), f"{page.name} links to {target}{anchor}: no such heading"
    return [target for target, _ in links]


def test_readme_fits_and_its_links_resolve() -> None:
    assert len(README.read_text().splitlines()) <= 150
    links = check_links(README)
    assert sum(link.startswith("docs/") for link in links) >= 10
    for page in sorted((ROOT / "docs").glob("*.md")):  # and the docs pages' own relative links
        check_links(page)


# The README's example trains on CIFAR-10; here its two size lines become a tiny synthetic run.
EXAMPLE_SIZES = {
    re.compile(r"^config = bnlab\.make_config\(.*$", flags=re.M):
        'config = bnlab.make_config("bn", width=4, epochs=2, save_every=1, dataset="synthetic", '
        'synthetic_train=500, synthetic_test=100, batch_size=100)',
    re.compile(r"^sizes = dict\(.*$", flags=re.M): "sizes = dict(num_samples=50, tol=1e-3)",
}


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = fenced_block(README.read_text(), "python")
    assert len(code.strip().splitlines()) <= 14
    for line, tiny in EXAMPLE_SIZES.items():
        assert len(line.findall(code)) == 1, f"the example sets its sizes in one line each ({line.pattern})"
        code = line.sub(tiny, code)
    monkeypatch.chdir(tmp_path)  # an empty folder: the example must make the folders it writes into
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102
    assert (tmp_path / "runs" / "bn16_api" / "final.pt").is_file()
    assert {f.name for f in (tmp_path / "results" / "hess_api").iterdir()} >= {"hessian.json", "eigvecs.pt"}
    assert "[" in capsys.readouterr().out  # it printed the eigenvalues and the layers
