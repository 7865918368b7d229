"""``eigvecs.pt``: Hessian eigenpairs as `bnlab hessian` writes them (its one reader and writer).

A torch file (loadable with ``weights_only=True``) holding::

    {"format": "bnlab-eigvecs", "version": 1,
     "eigenvalues": (k,) float64, "eigenvectors": (k, dim) float32 (rows, orthonormal to ~1e-7),
     "param_names": [...], "shapes": [[...], ...],   # the flat layout of the vectors
     "settings": {...}}                               # the operator's settings (checkpoint sha256, BN mode, units)

float32 vectors halve the file and are plenty for overlaps and warm starts. Files written before
the format marker existed (same keys, no "format") are still read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BnlabError
from .torchfile import atomic_torch_save, load_torch_file

FORMAT = "bnlab-eigvecs"
VERSION = 1
FILENAME = "eigvecs.pt"


@dataclass
class Eigvecs:
    eigenvalues: torch.Tensor  # (k,) float64
    eigenvectors: torch.Tensor  # (k, dim) float64
    param_names: list[str]
    shapes: list[list[int]]
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def write_eigvecs(path: str | os.PathLike, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                  param_names: list[str], shapes: list[Any], settings: dict[str, Any]) -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    payload = {"format": FORMAT, "version": VERSION,
               "eigenvalues": eigenvalues.detach().to(torch.float64).cpu(),
               "eigenvectors": eigenvectors.detach().to(torch.float32).cpu(),
               "param_names": list(param_names), "shapes": [list(s) for s in shapes], "settings": settings}
    return atomic_torch_save(payload, Path(path))


def eigvecs_file(path: str | os.PathLike) -> Path:
    """The file `read_eigvecs(path)` reads: `path`, or the eigvecs.pt in it when it is a folder."""
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def read_eigvecs(path: str | os.PathLike) -> Eigvecs:
    """Read `path` (an eigvecs.pt, or a `bnlab hessian` output folder holding one)."""
    p = eigvecs_file(path)
    if not p.is_file():
        raise BnlabError(f"no {FILENAME} at {path}; run `bnlab hessian CKPT --out DIR` first")
    try:
        d = load_torch_file(p)
    except Exception as e:
        raise BnlabError(f"{p} is not an eigvecs.pt written by bnlab hessian ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format", FORMAT) != FORMAT:
        raise BnlabError(f"{p} is not an eigvecs.pt written by bnlab hessian")
    if d.get("version", 1) > VERSION:
        raise BnlabError(f"{p} was written by a newer bnlab; upgrade bnlab")
    try:
        vals, vecs = d["eigenvalues"], d["eigenvectors"]
        names, shapes = list(d["param_names"]), [list(s) for s in d["shapes"]]
    except (KeyError, TypeError):
        raise BnlabError(f"{p} is an incomplete eigvecs.pt (needs eigenvalues, eigenvectors, param_names, "
                         "shapes)") from None
    if not isinstance(vecs, torch.Tensor) or vecs.dim() != 2 or not isinstance(vals, torch.Tensor) \
            or vals.shape != (vecs.shape[0],):
        raise BnlabError(f"{p} holds no (k,) eigenvalues with (k, dim) eigenvectors")
    vals, vecs = vals.to(torch.float64), vecs.to(torch.float64)
    bad = _not_orthonormal(vals, vecs, shapes)
    if bad:
        raise BnlabError(f"{p} does not hold orthonormal eigenvectors ({bad}); rerun `bnlab hessian`")
    settings = d.get("settings")
    return Eigvecs(vals, vecs, names, shapes, dict(settings) if isinstance(settings, dict) else {}, p)


# Rows are stored in float32 (orthonormal to ~1e-7): anything far beyond that is a damaged or edited file.
ORTHONORMAL_TOL = 1e-3


def _not_orthonormal(vals: torch.Tensor, vecs: torch.Tensor, shapes: list[list[int]]) -> str | None:
    """What is wrong with a (k,) / (k, dim) eigenpair block, or None."""
    try:
        dim = sum(math.prod(int(n) for n in s) for s in shapes)
    except (TypeError, ValueError):
        return "its shapes are not lists of integers"
    if vecs.shape[1] != dim:
        return f"vectors of dimension {vecs.shape[1]} for parameters of {dim} entries"
    if not (torch.isfinite(vals).all() and torch.isfinite(vecs).all()):
        return "non-finite entries"
    gram = vecs @ vecs.T
    norms = gram.diagonal().sqrt()
    if (norms - 1).abs().max() > ORTHONORMAL_TOL:
        i = int((norms - 1).abs().argmax())
        return f"row {i} has norm {float(norms[i]):.3g}"
    off = (gram - torch.eye(len(gram), dtype=gram.dtype)).abs()
    if off.max() > ORTHONORMAL_TOL:
        i, j = divmod(int(off.argmax()), len(gram))
        return f"rows {i} and {j} overlap by {float(gram[i, j]):.3g}"
    return None
