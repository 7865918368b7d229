"""What every finding's figure draws from: `FindingView` (its report record and the folders of the stages it
read) and the helpers its panels share (a titled figure, the models as their records name them)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from . import style

MODEL_LABELS = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}


class FindingView:
    """One finding's report record and where its stages' outputs are."""

    def __init__(self, root: Path, rec: dict[str, Any]) -> None:
        self.rec, self.root = rec, Path(root)
        self.stages = rec.get("setting", {}).get("stages", {})

    def out(self, stage: str) -> Path:
        return self.root / self.stages[stage]["folder"] / "out"

    def json(self, stage: str, name: str) -> dict[str, Any]:
        return json.loads((self.out(stage) / name).read_text())

    @property
    def values(self) -> dict[str, Any]:
        return self.rec["values"]

    def title(self) -> str:
        return f"{self.rec['id']} ({self.rec['verdict']}): {self.rec['title']}"


def panel(f: FindingView, width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Any]]:
    """A figure of `ncols` panels in a row under the finding's title."""
    style.apply()
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(f.title(), fontsize=11)
    return fig, list(axes)


def model_names(f: FindingView, stage_of: Callable[[str], str], name: str) -> dict[str, str]:
    """{bn|frozen|no_bn: the model as its record describes it}, e.g. "simple net w2, frozen BN"."""
    names = {}
    for m, short in MODEL_LABELS.items():
        try:
            names[m] = style.model_label(f.json(stage_of(m), name)["settings"])
        except (KeyError, OSError, ValueError):
            names[m] = short
    return names


def named_outstats(f: FindingView) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The outstats records of the finding's models, and each model as its record describes it."""
    runs = {m: f.json(f"outstats_{m}", "outstats.json") for m in MODEL_LABELS if f"outstats_{m}" in f.stages}
    return runs, {m: style.model_label(s["settings"]) if s.get("settings") else MODEL_LABELS[m]
                  for m, s in runs.items()}


def invariant_series(f: FindingView) -> Any:
    """The dynamics series (pandas) of the BN-preceded convs the weight-decay finding checked."""
    import pandas as pd

    s = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_series.csv")
    convs = list(f.values.get("ratios", f.values.get("angles", {})))
    return s[s["param"].isin(convs)] if convs else s[s["ratio"].notna()]


def layer_lines(ax: Any, s: Any, y: str, colors: dict[Any, Any]) -> None:
    for p, g in s.groupby("param", sort=False):
        ax.plot(g["step"], g[y], color=colors[p], lw=1.2, label=p)
