#!/usr/bin/env python3
"""Mutation testing of bnlab's numeric core with mutmut, one module at a time.

mutmut reads its configuration from ``pyproject.toml`` in the directory it runs in and tests a
copy of the sources (``mutants/``). This driver exports a source tree (the working tree, or any
git revision with ``--ref``) into a scratch directory per module, appends the module's
``[tool.mutmut]`` section there (which files to mutate, which fast tests to run against them), runs
``mutmut run --max-children 1`` and scores the result. Nothing is written into the repository.

    python tests/mutation/run_mutation.py theory schedule          # some modules
    python tests/mutation/run_mutation.py --all                    # every module (hours on 2 cores)
    python tests/mutation/run_mutation.py --ref d633fa0 theory     # the suite as it was at a commit
    python tests/mutation/run_mutation.py --report theory          # re-score the last run, no testing
    python tests/mutation/run_mutation.py --survivors theory       # also print each survivor's diff
    python tests/mutation/run_mutation.py --rerun-survivors theory # after adding tests: only the survivors
    python tests/mutation/run_mutation.py curvature.lanczos --names M1 M2 ...  # only these mutants

Score = killed / (mutants run - equivalent); timeouts count as killed. Equivalent mutants (no
observable behaviour changes) are listed with their reasons in ``tests/mutation/equivalent.txt``
(``mutant_name  # reason``; see tests/MUTATION.md). ``--sample N`` runs a seeded random sample of N
mutants of a module (for a quick estimate; the table says so). Needs ``pip install mutmut`` (3.x).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(os.environ.get("BNLAB_REPO", Path(__file__).resolve().parents[2]))  # env: run a copy of this script
EQUIVALENT = Path(__file__).with_name("equivalent.txt")

# Lines never mutated: user-facing message text (exact wording is the CLI tests' business, not the
# numeric core's) and progress-bar labels. Same exclusions for every run, so scores stay comparable.
DO_NOT_MUTATE_PATTERNS = [
    r"raise BnlabError\(",
    r'^\s+f?"[^"]*"\)*( from None)?$',  # continuation line of a message string
    r"Progress\(",
]

# Tests too slow to run once per mutant (each is tens of seconds to minutes on 2 loaded cores):
# the end-to-end eigensolver runs through the HVP operator at tol 1e-10 and the every-variant
# model-unchanged sweep. Their claims are also covered by faster tests of the same file.
SLOW_FOR_MUTATION = [
    "tests/curvature/test_curvature.py::test_hvp_and_eigenpairs_match_dense[davidnet-bn-batch]",
    "tests/curvature/test_curvature.py::test_hvp_and_eigenpairs_match_dense[simple-ghost-batch]",
    "tests/curvature/test_curvature.py::test_hvp_and_eigenpairs_match_dense[simple-frozen-none]",
    "tests/curvature/test_curvature.py::test_model_never_changes_any_variant_any_call",
    "tests/outstats/test_outstats.py::test_model_unchanged",
]

# module key -> (files to mutate, pytest test selection). A selection is the module's own fast tests: the
# focused files written against independent truths (tests/curvature/test_operator.py, ...). At revisions
# before those existed (the "before" column of tests/MUTATION.md) they are missing and dropped, and the
# module's original test file is what runs (minus SLOW_FOR_MUTATION).
OLD_CURVATURE = "tests/curvature/test_curvature.py"
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "curvature.operator": (["bnlab/curvature/operator.py"], ["tests/curvature/test_operator.py",
                                                            "tests/distributed/test_subgroups.py"]),
    "curvature.base": (["bnlab/curvature/base.py"], ["tests/curvature/test_base.py", "tests/curvature/test_operator.py",
                                                    "tests/distributed/test_subgroups.py"]),
    "curvature.ggn": (["bnlab/curvature/ggn.py", "bnlab/curvature/linop.py"], ["tests/curvature/test_ggn.py",
                                                                              "tests/curvature/test_linop.py",
                                                                              "tests/distributed/test_subgroups.py"]),
    "curvature.hvp": (["bnlab/curvature/hvp.py"], ["tests/curvature/test_operator.py", "tests/curvature/test_hvp.py"]),
    "curvature.lanczos": (["bnlab/curvature/lanczos.py"], ["tests/curvature/test_eigensolvers.py"]),
    "curvature.block_lanczos": (["bnlab/curvature/block_lanczos.py"], ["tests/curvature/test_block_lanczos.py",
                                                                      "tests/curvature/test_block_lanczos_restart.py"]),
    "curvature.trace": (["bnlab/curvature/trace.py"], ["tests/curvature/test_estimators.py"]),
    "curvature.density": (["bnlab/curvature/density.py"], ["tests/curvature/test_estimators.py"]),
    "outstats.gradients": (["bnlab/outstats/gradients.py"], ["tests/outstats/test_outstats.py",
                                                             "tests/distributed/test_subgroups.py"]),
    "outstats.moments": (["bnlab/outstats/moments.py"], ["tests/outstats/test_outstats.py",
                                                        "tests/outstats/test_moments.py"]),
    "outstats.subspace": (["bnlab/outstats/subspace.py"], ["tests/outstats/test_outstats.py",
                                                          "tests/outstats/test_subspace.py"]),
    "outstats.perturb": (["bnlab/outstats/perturb.py"], ["tests/outstats/test_outstats.py",
                                                        "tests/outstats/test_perturb.py"]),
    "dynamics.analysis": (["bnlab/dynamics/analysis.py"], ["tests/dynamics/test_analysis.py"]),
    "theory": (["bnlab/theory.py"], ["tests/test_theory.py"]),
    "schedule": (["bnlab/schedule.py"], ["tests/test_train.py::test_lr_schedules", "tests/test_schedule.py"]),
    "freeze": (["bnlab/freeze.py"], ["tests/test_freeze.py"]),
}
# what ran at the base revision, where the focused files did not exist yet
FALLBACK = {"curvature": [OLD_CURVATURE], "dynamics": ["tests/dynamics/test_dynamics.py"]}

KILLED = {1, 3}
TIMEOUT = {24, -24, 36, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def export_tree(ref: str | None, dest: Path) -> None:
    """bnlab/, tests/ and pyproject.toml of `ref` (None: the working tree) into `dest`."""
    dest.mkdir(parents=True)
    parts = ["bnlab", "tests", "pyproject.toml"]
    if ref is None:
        for p in parts:
            src = REPO / p
            if src.is_dir():
                shutil.copytree(src, dest / p, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest / p)
        return
    with tempfile.TemporaryFile() as f:
        subprocess.run(["git", "-C", str(REPO), "archive", ref, *parts], stdout=f, check=True)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="data")


def selection_args(tree: Path, key: str, selection: list[str]) -> list[str]:
    present = [s for s in selection if (tree / s.split("::")[0]).exists()]
    if not present:
        present = [s for s in FALLBACK.get(key.split(".")[0], []) if (tree / s).exists()]
    if not present:
        raise SystemExit(f"none of the tests {selection} exist in {tree}")
    deselect = [a for s in SLOW_FOR_MUTATION if (tree / s.split("::")[0]).exists() for a in ("--deselect", s)]
    return present + deselect


def write_config(tree: Path, key: str, files: list[str], selection: list[str]) -> None:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    with open(tree / "pyproject.toml", "a") as f:
        f.write("\n[tool.mutmut]\n"
                'source_paths = ["bnlab"]\n'
                f"only_mutate = {toml_list(files)}\n"
                f"do_not_mutate_patterns = {toml_list(DO_NOT_MUTATE_PATTERNS)}\n"
                f"pytest_add_cli_args_test_selection = {toml_list(selection_args(tree, key, selection))}\n"
                # in-process (mutmut collects which tests reach which function): no xdist workers
                'pytest_add_cli_args = ["-p", "no:cacheprovider", "-n", "0"]\n'
                # mutmut's CPU limit is 30·(a test's duration + constant), and a test's duration leaves out
                # its fixtures: the sub-group world (tens of CPU seconds, in setup) timed every mutant out
                'timeout_constant = 10.0\n'
                # torch is not fork-safe after use: fork mutants from a clean server process
                'process_isolation = "forkserver"\n')


def mutant_names(tree: Path, files: list[str]) -> list[str]:
    """All mutant names of `files`, generated offline (as mutmut names them)."""
    code = ("import json, sys\n"
            "from mutmut.mutation.file_mutation import mutate_file_contents\n"
            "out = []\n"
            "for f in sys.argv[1:]:\n"
            "    prefix = f[:-3].replace('/', '.')\n"
            "    out += [prefix + '.' + n for n in mutate_file_contents(f, open(f).read()).mutant_names]\n"
            "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code, *files], cwd=tree, capture_output=True, text=True,
                         env=_env(), check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the exported tree must win: drop PYTHONPATH entries that hold a bnlab package (e.g. the repository)
    keep = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "bnlab").is_dir()]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def read_equivalents() -> dict[str, str]:
    out = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text().splitlines():
            name, _, reason = line.partition("#")
            if name.strip():
                out[name.strip()] = reason.strip()
    return out


def results(tree: Path, files: list[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for f in files:
        meta = tree / "mutants" / (f + ".meta")
        if meta.is_file():
            out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def score(key: str, codes: dict[str, int | None], sampled: list[str] | None) -> dict:
    names = sampled if sampled is not None else list(codes)
    eq = read_equivalents()
    run = [n for n in names if codes.get(n) is not None]
    killed = [n for n in run if codes[n] in KILLED]
    timeout = [n for n in run if codes[n] in TIMEOUT]
    survived = [n for n in run if codes[n] in SURVIVED | NO_TESTS or codes[n] not in KILLED | TIMEOUT]
    equivalent = [n for n in survived if n in eq]
    open_ = [n for n in survived if n not in eq]
    denom = len(run) - len(equivalent)
    return {"module": key, "mutants": len(codes), "run": len(run), "sampled": sampled is not None,
            "killed": len(killed) + len(timeout), "timeouts": len(timeout), "equivalent": len(equivalent),
            "survived": open_, "score": (len(killed) + len(timeout)) / denom if denom else float("nan")}


def run_module(key: str, args: argparse.Namespace) -> dict:
    files, selection = MODULES[key]
    tree = Path(args.workdir) / (key + (f"@{args.ref}" if args.ref else ""))
    if args.rerun_survivors:  # fresh tests against the survivors of the last run (stats recollected)
        if args.ref:
            raise SystemExit("--rerun-survivors tests the working tree's tests; drop --ref")
        names = json.loads((tree / "score.json").read_text())["survived"]
        for dest in (tree / "tests", tree / "mutants" / "tests"):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(REPO / "tests", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tree / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        shutil.copy2(REPO / "pyproject.toml", tree / "pyproject.toml")  # the current test selection
        write_config(tree, key, files, selection)
        if names:
            with open(tree / "mutmut.log", "a") as log:
                subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *names], cwd=tree,
                               env=_env(), stdout=log, stderr=subprocess.STDOUT)
    elif not args.report:
        if tree.exists():
            shutil.rmtree(tree)
        export_tree(args.ref, tree)
        write_config(tree, key, files, selection)
        sampled = None
        names: list[str] = []
        if args.sample:
            every = mutant_names(tree, files)
            sampled = sorted(random.Random(args.seed).sample(every, min(args.sample, len(every))))
            names = sampled
        elif args.names:  # e.g. the open survivors of a CPU run, on a CUDA machine
            prefixes = tuple(f[:-3].replace("/", ".") + "." for f in files)
            sampled = names = [n for n in args.names if n.startswith(prefixes)]
            if not names:
                raise SystemExit(f"none of the --names belong to {key}")
        (tree / "sample.json").write_text(json.dumps(sampled))
        with open(tree / "mutmut.log", "w") as log:
            cmd = ["mutmut", "run", "--max-children", str(args.max_children), *names]
            rc = subprocess.run(cmd, cwd=tree, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        if rc:
            print(f"{key}: mutmut exited with {rc}; see {tree / 'mutmut.log'}", file=sys.stderr)
    sampled = json.loads((tree / "sample.json").read_text()) if (tree / "sample.json").is_file() else None
    s = score(key, results(tree, files), sampled)
    (tree / "score.json").write_text(json.dumps(s, indent=1))
    if args.survivors:
        for name in s["survived"]:
            show = subprocess.run(["mutmut", "show", name], cwd=tree, env=_env(), capture_output=True, text=True)
            print(show.stdout)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"module keys: {', '.join(MODULES)}")
    ap.add_argument("--all", action="store_true", help="every module")
    ap.add_argument("--ref", default=None, help="git revision to test (default: the working tree)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bnlab-mutation"))
    ap.add_argument("--max-children", type=int, default=1, help="parallel mutant workers (1 on a shared machine)")
    ap.add_argument("--sample", type=int, default=0, help="run only a seeded random sample of N mutants")
    ap.add_argument("--names", nargs="+", default=None, metavar="MUTANT",
                    help="run only these mutants (each module takes the names of its own file)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="only re-score existing runs")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="copy the current tests into the last run and test its open survivors again")
    ap.add_argument("--survivors", action="store_true", help="print the diff of every open survivor")
    args = ap.parse_args()
    keys = list(MODULES) if args.all else args.modules
    unknown = [k for k in keys if k not in MODULES]
    if unknown or not keys:
        ap.error(f"give module keys ({', '.join(MODULES)}) or --all")
    rows = [run_module(k, args) for k in keys]
    print(f"{'module':22s} {'mutants':>7s} {'run':>5s} {'killed':>6s} {'equiv':>5s} {'open':>5s} {'score':>6s}")
    for r in rows:
        flag = " (sample)" if r["sampled"] else ""
        print(f"{r['module']:22s} {r['mutants']:7d} {r['run']:5d} {r['killed']:6d} {r['equivalent']:5d} "
              f"{len(r['survived']):5d} {r['score']:6.1%}{flag}")
        for n in r["survived"]:
            print(f"    survived: {n}")


if __name__ == "__main__":
    main()
