"""Hyper-parameter sweeps: the grid (its spec, its points, its file grid.json).

Grid spec (``--grid``): whitespace-separated ``key=v1,v2,...`` axes, e.g.
``"lr=0.1,0.2,0.4 wd=1.25e-4,2.5e-4,5e-4 momentum=0.9"``. Keys are `bnlab.config.make_config`'s flat
options (``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``width``, ``epochs``, ``seed``, ...) or the
aliases in `ALIASES` (``wd``, ``bs``). Points are the Cartesian product, last axis fastest.

Sweep directory layout::

    OUT/grid.json            the grid file (format below); written once, checked on every rerun
    OUT/points/NAME/         one ordinary run directory per point (`bnlab dynamics` works on it)
    OUT/summary.csv, OUT/summary.json

Grid file format (``grid.json``, JSON object)::

    {"format": "bnlab-sweep-grid", "version": 1,
     "variant": "bn" | null,
     "base": {flat make_config options shared by every point},
     "axes": [["lr", [0.1, 0.2]], ["weight_decay", [0.0005]], ...],
      "threads": 1,
     "points": [{"index": 0, "name": "lr=0.1_weight_decay=0.0005", "overrides": {"lr": 0.1, ...}}, ...]}

Point folder names: ``key=value`` pairs joined by ``_``; floats as ``%g`` when that is exact, else their
shortest exact form (``0.1234561``); other values percent-encoded outside ``[A-Za-z0-9=_-.+,:]``, so a
name is always one path component (``data_dir=a/../b`` -> ``data_dir=a%2F..%2Fb``). An axis listing a
value twice, or points whose names would be equal (also up to case) or longer than 255 bytes, are
refused before anything is written.

"points" is derived from "axes" (and rewritten identically); a cluster job array runs one point per
task with ``bnlab sweep --grid-file OUT/grid.json --out OUT --point $TASK_ID --no-summary`` and a last
``bnlab sweep --grid-file OUT/grid.json --out OUT --summary-only`` writes the summary.

Resume: a point whose status.json says finished or diverged is skipped; a point with a last.pt
(crashed or interrupted) is resumed from it, one with only its config.json (killed before its first
epoch) restarts in place; a new or empty folder is trained into. Nothing is ever emptied: a point
folder holding files but no run, a symbolic link or a file is refused (that point fails, with why).

Threads: every point trains with the grid's fixed ``threads`` torch threads (default 1), recorded
in grid.json, whatever ``--jobs`` is: CPU kernels reduce in an order that depends on the thread
count, so a fixed count makes a point's result independent of -j and of resumption.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validate as check
from ..config import DataSpec, TrainConfig, make_config
from ..errors import BnlabError
from ..io.jsonfile import read_json
from ..models import ModelSpec
from ..options import is_optional, load_flat, opt, strip_optional, type_hints, type_name

GRID_FORMAT = "bnlab-sweep-grid"
GRID_VERSION = 2  # 2: "threads" per point
ALIASES = {"wd": "weight_decay", "bs": "batch_size"}


def _flat_fields() -> dict[str, type]:
    """Each flat make_config option (a grid key) and the dataclass that declares it."""
    return {f.name: cls for cls in (ModelSpec, DataSpec, TrainConfig) for f in dataclasses.fields(cls)
            if f.name not in ("model", "data")}


FIELDS = _flat_fields()


def canonical_key(key: str) -> str:
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in FIELDS:
        raise BnlabError(f"unknown grid key {key!r}; use a training option such as lr, wd, momentum, nesterov, "
                         f"width, epochs, seed, batch_size")
    return key


def field_hint(key: str) -> Any:
    """The type a grid key's values have (its config field's type hint; key already canonical)."""
    return type_hints(FIELDS[key])[key]


def parse_value(key: str, text: str) -> Any:
    """A grid/option value converted to its config field's type (key already canonical)."""
    hint = field_hint(key)
    kind = strip_optional(hint)
    text = text.strip()
    if text.lower() in ("none", "null") and is_optional(hint):
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typing.get_origin(kind) is tuple:  # a tuple value in a grid spec is colon-separated: 0:5:24
            item = typing.get_args(kind)[0]
            return tuple(item(v) for v in text.split(":"))
        if kind in (int, float):
            return kind(text)
    except ValueError:
        raise BnlabError(f"bad value {text!r} for grid key {key} (expects {type_name(hint)})") from None
    return text


def typed_value(key: str, value: Any) -> Any:
    """A grid file's (JSON) value for `key`, checked against and converted to its config field's type."""
    return load_flat((FIELDS[key],), {key: value}, what="grid file")[key]


def parse_grid(spec: str) -> list[tuple[str, list[Any]]]:
    """``"lr=0.1,0.2 wd=5e-4"`` -> [("lr", [0.1, 0.2]), ("weight_decay", [0.0005])]."""
    axes: list[tuple[str, list[Any]]] = []
    for item in spec.replace(";", " ").split():
        if "=" not in item:
            raise BnlabError(f"bad grid spec item {item!r}: expected key=v1,v2,...")
        key, _, values = item.partition("=")
        key = canonical_key(key.strip())
        if any(k == key for k, _ in axes):
            raise BnlabError(f"grid key {key} given twice")
        vals = [parse_value(key, v) for v in values.split(",") if v.strip()]
        if not vals:
            raise BnlabError(f"grid key {key} has no values")
        axes.append((key, vals))
    check_axes(axes)
    if not axes:
        raise BnlabError("empty grid spec; expected e.g. \"lr=0.1,0.2 wd=5e-4\"")
    return axes


# Characters a point's folder name keeps as they are; any other (path separators, spaces, '%', ...) is
# percent-encoded, so a name is always one path component and two different values never share one.
_NAME_SAFE = "=_-.+,:"
NAME_MAX = 255  # bytes of one path component on common file systems


def _fmt(v: Any) -> str:
    """A value as it appears in a point's folder name: short ('0.1', '5e-05') and lossless."""
    if isinstance(v, float):
        short = format(v, "g")
        return short if float(short) == v else repr(v)  # '%g' keeps 6 digits: 0.1234561 and 0.1234562 differ
    if isinstance(v, (tuple, list)):
        return ":".join(_fmt(x) for x in v)  # as the grid spec writes a tuple
    return urllib.parse.quote(str(v), safe=_NAME_SAFE)


def point_name(overrides: dict[str, Any]) -> str:
    """The folder name of a point: ``key=value`` pairs joined by '_', one safe path component."""
    return "_".join(f"{k}={_fmt(v)}" for k, v in overrides.items())


def check_axes(axes: list[tuple[str, list[Any]]]) -> None:
    """Refuse an axis that lists one value twice: two points would be one run (and share a folder)."""
    for key, values in axes:
        seen: list[Any] = []
        for v in values:
            if any(type(v) is type(w) and v == w for w in seen):
                raise BnlabError(f"grid key {key} lists the value {_fmt(v)} twice; give each value once")
            seen.append(v)


@dataclass
class Point:
    index: int
    name: str
    overrides: dict[str, Any]


@dataclass
class Grid:
    axes: list[tuple[str, list[Any]]]
    base: dict[str, Any] = field(default_factory=dict)  # flat make_config options of every point
    variant: str | None = opt(None, help="Training variant of every point (bn, no_bn, ...).",
                              default_text="bn (custom with --set norm=...)")
    # Part of a point's identity (see the module docs); the command line's default is None because a
    # --grid-file brings its own.
    threads: int = opt(1, help="Torch threads per point, fixed for the whole sweep and recorded in grid.json so a "
                       "point's result does not depend on --jobs.", domain=f"1..{check.MAX_WORKERS}")

    def validate(self) -> list[Point]:
        """Every point's config checked (one line on the first bad one); returns the points."""
        check.integer("--threads", self.threads, 1, check.MAX_WORKERS)
        check_axes(self.axes)
        points = self.points()
        self.check_names(points)
        for p in points:
            try:
                cfg = self.config(p)
                cfg.data.check_batch_size(cfg.batch_size)  # here, not in training: before the folder exists
            except BnlabError as e:
                raise BnlabError(f"grid point {p.name}: {e}") from None
        return points

    def points(self) -> list[Point]:
        keys = [k for k, _ in self.axes]
        out = []
        for i, combo in enumerate(itertools.product(*(v for _, v in self.axes))):
            ov = dict(zip(keys, combo))
            out.append(Point(i, point_name(ov), ov))
        return out

    def check_names(self, points: list[Point]) -> None:
        """Every point gets a folder of its own: refuse names too long or equal (also up to case, which
        case-insensitive file systems do not tell apart) before anything is written."""
        seen: dict[str, Point] = {}
        for p in points:
            if len(p.name.encode()) > NAME_MAX:
                raise BnlabError(f"grid point {p.index}'s folder name is {len(p.name.encode())} bytes (at most "
                                 f"{NAME_MAX}); use shorter values or fewer axes")
            other = seen.setdefault(p.name.casefold(), p)
            if other is not p:
                raise BnlabError(f"grid points {other.index} and {p.index} would share the folder points/{p.name}; "
                                 "give values that differ")

    def config(self, point: Point) -> TrainConfig:
        clash = set(self.base) & set(point.overrides)
        if clash:
            raise BnlabError(f"option(s) {', '.join(sorted(clash))} given both as a grid axis and as a train option")
        options = {**self.base, **point.overrides}
        return make_config(options.pop("variant", self.variant), **options)

    def to_dict(self) -> dict[str, Any]:
        return {"format": GRID_FORMAT, "version": GRID_VERSION, "variant": self.variant, "base": self.base,
                "axes": [[k, v] for k, v in self.axes], "threads": self.threads,
                "points": [dataclasses.asdict(p) for p in self.points()]}

    @classmethod
    def from_dict(cls, d: Any) -> Grid:
        """The grid of a grid.json object; anything not of the documented shape is refused."""
        if not isinstance(d, dict) or d.get("format") != GRID_FORMAT:
            raise BnlabError(f"not a bnlab grid file (no \"format\": \"{GRID_FORMAT}\")")
        if not isinstance(d.get("version", 1), int) or d.get("version", 1) > GRID_VERSION:
            raise BnlabError("grid file written by a newer bnlab; upgrade bnlab")
        base, axes, variant = d.get("base", {}), d.get("axes"), d.get("variant")
        if not isinstance(base, dict):
            raise BnlabError("grid file: \"base\" must be an object of train options")
        if not isinstance(axes, list) or not axes or not all(
                isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and isinstance(a[1], list) and a[1]
                for a in axes):
            raise BnlabError("grid file: \"axes\" must be a non-empty list of [key, [values...]] pairs")
        if variant is not None and not isinstance(variant, str):
            raise BnlabError("grid file: \"variant\" must be a string or null")
        threads = d.get("threads", 1)
        base = {key: typed_value(key, v) for key, v in ((canonical_key(k), v) for k, v in base.items())}
        axes = [(key, [typed_value(key, v) for v in vs]) for key, vs in ((canonical_key(k), vs) for k, vs in axes)]
        return cls(axes=axes, base=base, variant=variant, threads=threads)


def read_grid_file(path: str | os.PathLike) -> Grid:
    return Grid.from_dict(read_json(Path(path), "grid file"))
