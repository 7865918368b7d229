"""Every figure script draws from the real output files of the bnlab command it belongs to.

Each script exposes functions returning a matplotlib Figure; the tests call them on outputs that the
commands wrote at tiny size and check what a reader sees: panels, axis labels, titles, legends,
shared axes, colours. `main()` of each script is run once to check the files (PNG + PDF) and the
"wrote PATH" messages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from bnlab.checkpoint import save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.models import build_model

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "figures"))  # the scripts import their shared style as `figstyle`

import figstyle  # noqa: E402
import plot_collapse  # noqa: E402
import plot_dynamics  # noqa: E402
import plot_findings  # noqa: E402
import plot_hessian  # noqa: E402
import plot_hessian_series  # noqa: E402
import plot_outstats  # noqa: E402
import plot_sweep  # noqa: E402

TINY = ["--width", "2", "--dataset", "synthetic", "--subset", "160", "--test-subset", "40",
        "--batch-size", "32", "--epochs", "2", "--lr-schedule", "const", "-q"]
MODELS = ("bn", "no_bn")


def bnlab(*args: object) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def legend_texts(legend) -> list[str]:  # noqa: ANN001
    assert legend is not None, "figure has no legend"
    return [t.get_text() for t in legend.get_texts()]


def visible_axes(fig: Figure) -> list:
    # colour bars are axes too; count only panels with data
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]


def outside_right(fig: Figure, legend, ax) -> bool:  # noqa: ANN001
    fig.canvas.draw()
    return legend.get_window_extent().x0 >= ax.get_window_extent().x1


def check_saved(capsys: pytest.CaptureFixture, folder: Path, stems: set[str]) -> None:
    lines = capsys.readouterr().out.splitlines()
    for stem in stems:
        for ext in ("png", "pdf"):
            path = folder / f"{stem}.{ext}"
            assert path.is_file(), path
            assert f"wrote {path}" in lines


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for variant in MODELS:
        cfg = make_config(variant, model="simple", width=2, act="softplus", dataset="synthetic",
                          synthetic_train=200, synthetic_test=50)
        torch.manual_seed(0)
        out[variant] = root / f"{variant}.pt"
        save_checkpoint(out[variant], {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return out


@pytest.fixture(scope="module")
def hessian_dirs(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hessian")
    for name, ck in ckpts.items():
        bnlab("hessian", ck, "--top-k", "3", "--tol", "1e-3", "--num-samples", "40", "--batch-size", "20",
              "--density", "--density-probes", "2", "--density-steps", "8", "--out", root / name, "-q")
    return {name: root / name for name in ckpts}


@pytest.fixture(scope="module")
def outstats_dirs(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outstats")
    for name, ck in ckpts.items():
        bnlab("outstats", ck, "--num-samples", "40", "--batch-size", "20", "--num-eigs", "2", "--project",
              "--out", root / name, "-q")
    return {name: root / name for name in ckpts}


@pytest.fixture(scope="module")
def dynamics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dynamics")
    bnlab("train", "--variant", "bn", *TINY, "--lr", "0.2", "--wd", "5e-3", "--save-every", "1", "--out", root / "run")
    bnlab("dynamics", root / "run", "--out", root / "dyn")
    return root / "dyn"


@pytest.fixture(scope="module")
def series_dir(dynamics_dir: Path) -> Path:
    """`bnlab hessian RUN_DIR` on the dynamics fixture's run (a checkpoint per epoch): hessian_series.json."""
    out = dynamics_dir.parent / "series"
    bnlab("hessian", dynamics_dir.parent / "run", "--top-k", "2", "--tol", "1e-2", "--num-samples", "40",
          "--batch-size", "20", "--out", out, "-q")
    return out


@pytest.fixture(scope="module")
def reproduce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cheapest findings of `bnlab reproduce --scale smoke` (F4b: float64 simulations; F5: collapse at init)."""
    out = tmp_path_factory.mktemp("repro") / "r"
    bnlab("reproduce", "F4b", "F5", "--scale", "smoke", "--no-figures", "--out", out, "-q")
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    bnlab("sweep", "--grid", "lr=0.1,0.2 wd=2.5e-3,5e-3", *TINY, "--out", root / "sweep")
    return root / "sweep"


def test_style_helper_writes_png_and_pdf(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fig = Figure()
    fig.subplots().plot([1, 2], [3, 4])
    written = figstyle.save(fig, tmp_path / "sub" / "x.png")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    check_saved(capsys, tmp_path / "sub", {"x"})
    # no grey among the data colours: grey is reserved for references
    assert all(max(c) - min(c) > 0.05 for c in figstyle.colors(9))


def test_hessian_figure(hessian_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recs = [json.loads((hessian_dirs[m] / "hessian.json").read_text()) for m in MODELS]
    fig = plot_hessian.figure(recs, ["BN", "no BN"])
    eig_ax, dens_ax = visible_axes(fig)
    assert (eig_ax.get_xlabel(), eig_ax.get_ylabel()) == ("rank", "Hessian eigenvalue")
    assert dens_ax.get_xlabel() == "eigenvalue" and "density" in dens_ax.get_ylabel()
    assert eig_ax.get_title() and dens_ax.get_title()
    # rank is the x axis (integer ticks), colour is the checkpoint, named in the figure legend
    ticks = eig_ax.get_xticks()
    assert list(ticks) == [1, 2, 3]
    texts = legend_texts(fig.legends[0])
    assert texts[:2] == ["BN (batch BN, mean loss)", "no BN (mean loss)"]
    eig_lines = [ln for ln in eig_ax.get_lines() if ln.get_linestyle() == "-"]
    dens_lines = dens_ax.get_lines()
    assert len(eig_lines) == 2 and len(dens_lines) == 2
    assert to_rgb(eig_lines[0].get_color()) != to_rgb(eig_lines[1].get_color())
    for e, d in zip(eig_lines, dens_lines):  # same colour per checkpoint in both panels
        assert to_rgb(e.get_color()) == to_rgb(d.get_color())
    plot_hessian.main([str(hessian_dirs[m] / "hessian.json") for m in MODELS]
                      + ["--labels", "BN,no BN", "-o", str(tmp_path / "fig" / "hessian.png")])
    check_saved(capsys, tmp_path / "fig", {"hessian"})


def test_outstats_figures(outstats_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    loaded = {m: plot_outstats.load(outstats_dirs[m]) for m in MODELS}
    runs = {m: s for m, (s, _) in loaded.items()}

    fig = plot_outstats.layer_norms_figure(runs)
    (ax,) = visible_axes(fig)
    assert ax.get_yscale() == "log" and "‖∇ mean logit 0‖²" in ax.get_ylabel() and ax.get_xlabel() == "layer"
    assert legend_texts(ax.get_legend()) == list(MODELS) and outside_right(fig, ax.get_legend(), ax)

    # one panel per model on one shared y axis, so that sizes compare across models
    for make in (plot_outstats.perturbation_figure, plot_outstats.overlaps_figure, plot_outstats.projected_figure):
        fig = make(runs)
        axes = visible_axes(fig)
        assert [a.get_title() for a in axes] == list(MODELS), make.__name__
        assert axes[0].get_shared_y_axes().joined(axes[0], axes[1]), make.__name__
        assert fig.get_suptitle() and fig.legends, make.__name__

    fig = plot_outstats.perturbation_figure(runs)
    assert legend_texts(fig.legends[0]) == [w for _, w in plot_outstats.PERTURB]
    assert visible_axes(fig)[0].get_ylim() == (0, 1)

    assert [t.get_text() for t in visible_axes(fig)[0].get_xticklabels()][:2] == ["class 0", "class 1"]
    assert figstyle.class_names({"dataset": "cifar10"}, 10)[:2] == ["airplane", "automobile"]

    fig = plot_outstats.overlaps_figure(runs)
    assert "random direction" in legend_texts(fig.legends[0])
    for ax, m in zip(visible_axes(fig), MODELS):  # the random line lies inside a log axis, well above its bottom
        lo, hi = ax.get_ylim()
        rnd = runs[m]["span"]["random_overlap_expected"]
        assert ax.get_yscale() == "log" and lo < rnd / 2 and hi >= 1

    fig = plot_outstats.projected_figure(runs)
    axes = visible_axes(fig)
    assert legend_texts(fig.legends[0]) == list(plot_outstats.OPERATORS)
    k = max(len(runs[m]["projected"]["eigenvalues"]) for m in MODELS)
    for ax in axes:  # integer ranks only, no empty ones
        assert ax.get_xlabel() == "rank" and list(ax.get_xticks()) == list(range(1, k + 1))
        assert ax.get_xlim() == (0.5, k + 0.5)

    for m, (_, tensors) in loaded.items():
        fig = plot_outstats.kde_figure(m, tensors)
        layers = list(tensors["activations"]["checkpoint"])
        axes = visible_axes(fig)
        assert len(axes) == len(layers)
        assert [a.get_title().split()[0] for a in axes] == layers
        assert all(a.get_ylabel() == "activation" for a in axes[::3])
        assert legend_texts(fig.legends[0]) == ["at initialisation", "trained"]
        assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1", "2"]  # width 2: two channels

    plot_outstats.main([str(outstats_dirs[m]) for m in MODELS] + ["--out", str(tmp_path / "fig")])
    # each input is named by the model its record describes, not by its folder
    check_saved(capsys, tmp_path / "fig", {"layer_grad_norms", "perturbation", "overlaps", "projected_eigs",
                                          "kde_simple_net_w2_BN", "kde_simple_net_w2_no_BN"})


def test_dynamics_figures(dynamics_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    series, layers, summary = plot_dynamics.load(dynamics_dir)
    params, display = plot_dynamics._theory_layers(layers)
    assert params == list(layers.loc[layers["ratio"].notna(), "param"])
    theory_layers = [display[p] for p in params]  # "(~)" marks approximately invariant layers

    # one panel per layer (its measured line and its prediction only), one legend for the line styles
    fig = plot_dynamics.norms_figure(series, layers)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == theory_layers and fig.get_suptitle()
    assert axes[0].get_ylabel() == "‖w‖" and axes[-1].get_xlabel() == "step"
    for ax in axes:
        assert [ln.get_linestyle() for ln in ax.get_lines()] == ["-", "--"] and ax.get_legend() is None
    assert len(fig.legends) == 1 and legend_texts(fig.legends[0]) == ["measured", "lagged equilibrium prediction"]

    fig = plot_dynamics.angles_figure(series, layers)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == theory_layers and len(fig.legends) == 1
    assert all(len(ax.get_lines()) == 2 for ax in axes)
    assert "angle" in axes[0].get_ylabel() and axes[0].get_shared_y_axes().joined(axes[0], axes[-1])
    assert "predicted equilibrium" in legend_texts(fig.legends[0])
    # at the end of a schedule (lr -> 0) the prediction falls to 0: those steps are not drawn
    last = series["step"].max()
    ended = series.assign(lr=np.where(series["step"] >= last - 1, 0.0, series["lr"]))
    fig = plot_dynamics.angles_figure(ended, layers, {"compare_to": "lagged"})
    for ax in visible_axes(fig):
        assert all(max(ln.get_xdata()) < last - 1 for ln in ax.get_lines())
    assert "left out" in fig.get_suptitle() and "lagged prediction" in legend_texts(fig.legends[0])

    fig = plot_dynamics.ratio_figure(layers, summary)
    (ax,) = visible_axes(fig)
    assert ax.get_xlabel().startswith("layer") and ax.get_ylabel() == "measured / predicted angle"
    assert "last 25% of steps" in ax.get_title()
    assert legend_texts(ax.get_legend()) == ["prediction (ratio 1)", "±15% of the prediction",
                                             "measured / predicted"]
    assert [t.get_text() for t in ax.get_xticklabels()] == theory_layers

    plot_dynamics.main([str(dynamics_dir), "--out", str(tmp_path / "fig")])
    check_saved(capsys, tmp_path / "fig", {"dynamics_norms", "dynamics_angles", "dynamics_ratio"})


def test_sweep_figures(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    df = plot_sweep.load(sweep_dir)
    assert len(df) == 4

    fig = plot_sweep.heatmap_figure(df)
    ax, cbar = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("learning rate", "weight decay")
    assert "equal lr·wd" in ax.get_title()
    iso = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert iso  # lr*wd iso-lines exist with two values on each axis ...
    numbers = [t for t in ax.texts if t.get_text()]
    assert len(numbers) == 4
    assert all(t.get_zorder() > ln.get_zorder() and t.get_bbox_patch() is not None for t in numbers for ln in iso)
    assert cbar.get_ylabel() == "test accuracy (%)"
    lo, hi = cbar.get_ylim()
    assert hi - lo >= plot_sweep.MIN_SPAN - 1e-9
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.005", "0.0025"]  # wd grows upwards

    one_wd = df[df["weight_decay"] == df["weight_decay"].max()]
    fig = plot_sweep.heatmap_figure(one_wd)
    ax, cbar = fig.axes
    assert not ax.get_lines() and "lr·wd" not in ax.get_title()  # ... and are not promised without them
    lo, hi = cbar.get_ylim()
    assert hi - lo >= plot_sweep.MIN_SPAN - 1e-9

    fig = plot_sweep.angle_figure(df)
    (ax,) = visible_axes(fig)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lr · wd", "equilibrium angle per step (rad)")
    assert ax.get_xscale() == ax.get_yscale() == "log"
    texts = legend_texts(ax.get_legend())
    assert {"learning rate", "weight decay", "0.1", "0.2", "0.0025", "0.005"} <= set(texts)
    assert any(t.startswith("theory, momentum 0.9") for t in texts)
    # each lr gets a full-strength palette colour (not a pale end of a sequential map)
    point_colors = {tuple(np.round(c[:3], 3)) for coll in ax.collections for c in coll.get_facecolors()}
    palette = {tuple(np.round(c, 3)) for c in figstyle.colors(2)}
    assert point_colors == palette

    plot_sweep.main([str(sweep_dir), "--out", str(tmp_path / "fig")])
    check_saved(capsys, tmp_path / "fig", {"sweep_heatmap", "sweep_angle"})


def test_collapse_command_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    r = CliRunner().invoke(main, ["collapse", "--depth", "10", "--width", "1024", "--inputs", "300",
                                  "--hist-layers", "1,5,10,99", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "c" / "collapse.json").read_text())
    assert rec["hist_layers"] == [1, 5, 10]  # layers beyond the depth are dropped
    plain, theory, centred = rec["share_plain"], rec["theory_share"], rec["share_centred"]
    assert len(plain) == 10 and abs(plain[9] - theory[9]) < 0.05 and centred[9] < 0.45 < plain[9]
    rec, values = plot_collapse.load(tmp_path / "c")
    assert values["plain"]["5"].shape == (8, 300)

    fig = plot_collapse.share_figure(rec)
    (ax,) = visible_axes(fig)
    assert ax.get_xlabel() == "layer" and "share" in ax.get_ylabel() and ax.get_title()
    assert legend_texts(ax.get_legend()) == [name for _, name in plot_collapse.NETS]

    fig = plot_collapse.kde_figure(rec, values)
    axes = visible_axes(fig)
    assert [a.get_title().split("   ")[0] for a in axes] == ["layer 1", "layer 5", "layer 10"]
    assert axes[0].get_ylabel() == "pre-activation" and all(a.get_xlabel() == "channel" for a in axes)
    assert legend_texts(fig.legends[0]) == ["ReLU MLP", "centred pre-activations"]

    # run as a script, the way the README shows (it finds figstyle beside itself)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, str(ROOT / "figures" / "plot_collapse.py"), str(tmp_path / "c"),
                        "--out", str(tmp_path / "fig")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == [f"wrote {tmp_path / 'fig' / n}" for n in
                                     ("collapse_share.png", "collapse_share.pdf", "collapse_kde.png",
                                      "collapse_kde.pdf")]
    bad = CliRunner().invoke(main, ["collapse", "--hist-layers", "a,b", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "--hist-layers" in bad.output


def test_scripts_report_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = ((plot_hessian, [str(tmp_path / "none.json")]), (plot_outstats, [str(tmp_path), "--out", str(tmp_path)]),
             (plot_dynamics, [str(tmp_path)]), (plot_sweep, [str(tmp_path)]),
             (plot_collapse, [str(tmp_path), "--out", str(tmp_path)]), (plot_hessian_series, [str(tmp_path)]),
             (plot_findings, [str(tmp_path)]),
             # a script that writes several figures cannot write them to one file name
             (plot_dynamics, [str(tmp_path), "-o", str(tmp_path / "x.png")]),
             (plot_hessian, [str(tmp_path / "none.json"), "-o", str(tmp_path / "x.svg")]))
    for module, argv in cases:
        with pytest.raises(SystemExit) as e:
            module.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{module.PROG}: error: ") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def _wrote(capsys: pytest.CaptureFixture) -> list[Path]:
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(("wrote ", "skipped ")) for line in lines), lines
    return [Path(line.removeprefix("wrote ")) for line in lines if line.startswith("wrote ")]


def test_every_script_writes_exactly_the_files_it_reports(
        hessian_dirs: dict[str, Path], outstats_dirs: dict[str, Path], dynamics_dir: Path, sweep_dir: Path,
        series_dir: Path, reproduce_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    collapse = tmp_path / "collapse"
    bnlab("collapse", "--depth", "4", "--width", "64", "--inputs", "40", "--hist-layers", "1,4", "--out", collapse)
    capsys.readouterr()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the current folder unless asked
    hess = [str(hessian_dirs[m] / "hessian.json") for m in MODELS]
    runs = [  # (script, argv, the folder it must write into, the stems it must write)
        (plot_hessian, [*hess, "--out", "figs/"], cwd / "figs", {"hessian"}),
        (plot_hessian, [*hess, "-o", str(tmp_path / "h" / "eig.png")], tmp_path / "h", {"eig"}),
        (plot_hessian_series, [str(series_dir), "--out", str(tmp_path / "s") + "/"], tmp_path / "s",
         {"hessian_series"}),
        (plot_hessian_series, [str(series_dir / "hessian_series.json")], series_dir, {"hessian_series"}),
        (plot_outstats, [*(str(outstats_dirs[m]) for m in MODELS), "-o", str(tmp_path / "o")], tmp_path / "o",
         {"layer_grad_norms", "perturbation", "overlaps", "projected_eigs", "kde_simple_net_w2_BN",
          "kde_simple_net_w2_no_BN"}),
        (plot_dynamics, [str(dynamics_dir), "--out", str(tmp_path / "d")], tmp_path / "d",
         {"dynamics_norms", "dynamics_angles", "dynamics_ratio"}),
        (plot_sweep, [str(sweep_dir), "-o", str(tmp_path / "w")], tmp_path / "w", {"sweep_heatmap", "sweep_angle"}),
        (plot_collapse, [str(collapse), "--out", str(tmp_path / "c")], tmp_path / "c",
         {"collapse_share", "collapse_kde"}),
        (plot_findings, [str(reproduce_dir), "-o", str(tmp_path / "f")], tmp_path / "f", {"F4b", "F5"}),
        (plot_findings, [str(reproduce_dir)], reproduce_dir / "figures", {"F4b", "F5"}),
    ]
    for module, argv, folder, stems in runs:
        before = {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
        module.main(argv)
        reported = _wrote(capsys)
        written = {p for p in folder.rglob("*") if p.is_file()} - before
        assert len(reported) == len(set(reported)), (module.PROG, reported)  # one line per file
        assert {p.resolve() for p in reported} == {p.resolve() for p in written}, (module.PROG, reported, written)
        assert {p.name for p in written} == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}, module.PROG
        assert all(p.stat().st_size > 1000 for p in written)
    assert not any(p.is_file() for p in cwd.iterdir())  # e.g. no ./figs.png beside figs/


def test_hessian_series_keeps_lr_zero_and_uses_the_recorded_lambda1(series_dir: Path) -> None:
    series = plot_hessian_series.load(series_dir)
    cps = sorted(series["checkpoints"], key=lambda c: c["step"])
    assert len(cps) >= 2
    series["checkpoints"][-1]["lr"] = 0.0  # the end of a schedule: eta*lambda1 = 0, lambda1 is still recorded
    series["checkpoints"][-1]["eta_lambda1"] = 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero on the way
        fig = plot_hessian_series.figure(series)
    eig_ax, ratio_ax, _ = visible_axes(fig)
    lam1 = next(ln for ln in eig_ax.get_lines() if ln.get_label() == "λ1")
    scale = series["settings"]["scale_factor"]
    assert list(lam1.get_xdata()) == [c["step"] for c in cps]  # every checkpoint, lr = 0 included
    assert np.allclose(lam1.get_ydata(), [c["eigenvalues"][0] / scale for c in cps])
    ratio = next(ln for ln in ratio_ax.get_lines() if ln.get_label() == "η·λ1 / threshold")
    assert list(ratio.get_xdata()) == [c["step"] for c in cps[:-1]]  # no ratio where eta = 0 ...
    assert "η = 0 (no ratio)" in legend_texts(ratio_ax.get_legend())  # ... and the figure says so
    for ax in (eig_ax, ratio_ax):  # every point inside the axis, between labelled ticks
        lo, hi = ax.get_ylim()
        ys = np.concatenate([ln.get_ydata() for ln in ax.get_lines()  # the data, not the reference lines
                             if len(ln.get_ydata()) and not ln.get_label().startswith("_")])
        assert lo <= ys.min() and ys.max() <= hi
        ticks = [*ax.yaxis.get_majorticklocs(), *ax.yaxis.get_minorticklocs()]
        assert any(np.isclose(t, lo) for t in ticks) and any(np.isclose(t, hi) for t in ticks), (lo, hi, ticks)
