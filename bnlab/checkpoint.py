"""Checkpoints: one self-describing file per snapshot, written atomically, loadable with
``torch.load(weights_only=True)``, and `load_checkpoint` for notebooks and analyses."""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bnmode import has_batch_stats
from .config import TrainConfig
from .errors import BnlabError
from .io.torchfile import atomic_torch_save, load_torch_file
from .models import build_model
from .version import __version__

FORMAT = "bnlab-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = ("raw", "ema")  # which weights of a checkpoint to load: the trained ones, or their average (EMA runs)


@dataclass
class Checkpoint:
    model: nn.Module
    config: TrainConfig
    meta: dict[str, Any]  # everything else stored: epoch, step, metrics, status, versions, ...
    path: Path

    @property
    def has_batch_stats(self) -> bool:
        return has_batch_stats(self.model)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write payload (already holding model/config/...) to path atomically: tmp file + rename."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "versions": {"bnlab": __version__, "torch": str(torch.__version__)}, **payload}
    return atomic_torch_save(payload, Path(path))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of writes a kill interrupted (call only while owning the folder)."""
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        if f.is_file():
            f.unlink()
            removed.append(f)
    return removed


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, after checking that it is a complete bnlab checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise BnlabError(f"no checkpoint at {path}")
    try:
        payload = load_torch_file(path, map_location=map_location)
    except pickle.UnpicklingError:
        raise BnlabError(f"{path} is not a bnlab checkpoint (holds objects beyond tensors and plain "
                         "containers; foreign file?)") from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise BnlabError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                         f"{type(e).__name__}: {first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BnlabError(f"{path} is not a bnlab checkpoint (foreign file: no '{FORMAT}' marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise BnlabError(f"{path} was written by a newer bnlab (format {payload['format_version']}); upgrade bnlab")
    for key in ("config", "model"):
        if key not in payload:
            raise BnlabError(f"{path} is an incomplete bnlab checkpoint (no {key!r})")
    bad = _malformed(payload)
    if bad:
        raise BnlabError(f"{path} is a malformed bnlab checkpoint ({bad})")
    return payload


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "config": (dict,), "model": (dict,), "optimizer": (dict,), "rng": (dict,), "epoch": (int,), "step": (int,),
    "metrics": (list,), "status": (str,), "diverged": (dict, type(None)), "frozen": (dict, type(None)),
    "versions": (dict,), "runtime": (dict,), "seed": (int,), "device": (str,), "ema": (dict,),
}


def _malformed(payload: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint that claims to be bnlab's, or None."""
    for key, types in _FIELD_TYPES.items():
        if key in payload and not isinstance(payload[key], types):
            return f"field {key!r} is a {type(payload[key]).__name__}"
    for key in ("model", "ema"):
        if key in payload and not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                      for k, v in payload[key].items()):
            return f"its {'model' if key == 'model' else 'EMA'} weights are not a name -> tensor mapping"
    if "metrics" in payload and not all(isinstance(m, dict) for m in payload["metrics"]):
        return "its metrics are not a list of records"
    return None


def model_from_payload(payload: dict[str, Any], path: Path, weights: str = "raw") -> tuple[nn.Module, TrainConfig]:
    """The checkpoint's model with its trained weights (raw) or their moving average (ema)."""
    if weights not in WEIGHTS:
        raise BnlabError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "ema" and "ema" not in payload:
        raise BnlabError(f"{path} holds no EMA weights (its run was trained without --ema); use --weights raw")
    config = TrainConfig.from_dict(payload["config"])
    model = build_model(config.model)
    load_weights(model, payload["model" if weights == "raw" else "ema"], path)
    return model, config


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """model.load_state_dict(weights), refusing (one line) weights of another shape or dtype."""
    expected = model.state_dict()
    for name, t in weights.items():  # load_state_dict would cast silently (int64 weights truncate)
        if name in expected and t.dtype != expected[name].dtype:
            raise BnlabError(f"{path}: weight {name} is {str(t.dtype).replace('torch.', '')}, the model's is "
                             f"{str(expected[name].dtype).replace('torch.', '')} (hand-edited or foreign file?)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise BnlabError(f"{path}: weights do not fit the recorded model ({str(e).splitlines()[0]})") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "raw") -> Checkpoint:
    """Load a bnlab checkpoint: the model (on `device`, in eval mode), its config and metadata.

    weights: "raw" (the trained weights) or "ema" (their moving average, for runs trained with --ema;
    recorded in meta["weights"]).
    """
    path = Path(path)
    payload = read_checkpoint(path)
    model, config = model_from_payload(payload, path, weights)
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "config", "ema")}
    meta["weights"] = weights
    return Checkpoint(model=model, config=config, meta=meta, path=path)


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, for recording which checkpoint an analysis read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
