"""Per-step training dynamics of every parameter tensor, computed on the device.

For each logged step and parameter tensor: ‖w‖ after the step, ‖g‖ (loss gradient, no weight
decay), ‖Δw‖, ‖Δw‖/‖w_before‖, cos(w_before, g) and the angle between w_before and w_after.
With `grad_lags` K > 0 it also keeps the last K loss gradients (one copy per optimizer step) and logs, at
each logged step, cos(g_t, g_{t-k}) for k = 1..K per tensor (``dynamics_gradcorr.csv``): the autocorrelation
that the equilibrium angle's correlated form reads (`bnlab.theory.correlated_angle`).

Values stay on the device until `flush` (every ~20 s and at each epoch end), so logging every step
costs a few small reductions and no host syncs.

The angle is computed without cancellation: with a = w_after, b = w_before, Δ = a - b,
r = 1/‖a‖ - 1/‖b‖, ‖â - b̂‖² = ‖Δ‖²/‖a‖² + 2r(Δ·b)/‖a‖ + r²‖b‖², angle = 2 asin(‖â - b̂‖/2).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .log import CHANNEL_COLUMNS, COLUMNS, append_rows, gradcorr_columns


def _angle(dw2: torch.Tensor, dwb: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    na = na.double().clamp_min(1e-300)
    nb = nb.double().clamp_min(1e-300)
    r = 1 / na - 1 / nb
    d2 = dw2.double() / na**2 + 2 * r * dwb.double() / na + r**2 * nb**2
    return 2 * torch.asin((d2.clamp_min(0).sqrt() / 2).clamp(max=1.0))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """All of t's elements as a 1-D view when its memory allows (order is irrelevant: we only sum)."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # a view: channels_last is contiguous in NHWC order
    return t.reshape(-1)


def _dots(a: list[torch.Tensor], b: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> for every pair, in float32, in a handful of kernels (not one per tensor: on a GPU
    per-tensor reductions made the log cost more than half of a training step)."""
    prods = torch._foreach_mul(a, b)
    return torch.segment_reduce(torch.cat([_flat(p) for p in prods]).float(), "sum", lengths=lengths)


class DynamicsTracker:
    """Call `before_step` after backward and `after_step` after optimizer.step()."""

    def __init__(self, model: nn.Module, channels: bool = False, grad_lags: int = 0) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.numel = [p.numel() for p in self.params]
        self.lengths = torch.tensor(self.numel, device=self.params[0].device if self.params else "cpu")
        self.prev = [torch.empty_like(p) for p in self.params]
        self.channels = channels
        self.ch_idx = [i for i, p in enumerate(self.params) if p.dim() >= 2] if channels else []
        self.rows: list[tuple[int, float, float, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.ch_rows: list[tuple[int, list[torch.Tensor]]] = []
        self._before: tuple[torch.Tensor, ...] = ()
        self.grad_lags = grad_lags
        self._ring: list[list[torch.Tensor]] = []  # the last grad_lags gradients, oldest overwritten first
        self._ring_norms: list[torch.Tensor] = []
        self._ring_pos = 0
        self._gcos: torch.Tensor | None = None
        self.gc_rows: list[tuple[int, torch.Tensor]] = []

    @torch.no_grad()
    def observe_grads(self, log: bool) -> None:
        """Every optimizer step after backward (when `grad_lags` > 0): on a logged step (`log`), the cosines of
        this gradient with the kept ones (NaN where fewer than k steps were kept: the run's first steps, or
        after a resume); then keep this one."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norms = torch.stack(torch._foreach_norm(grads))
        K, kept = self.grad_lags, len(self._ring)
        if log:
            nan = torch.tensor(float("nan"), device=norms.device)
            cols = []
            for k in range(1, K + 1):
                if k > kept:
                    cols.append(torch.full_like(norms, float("nan")))
                    continue
                slot = (self._ring_pos - k) % kept
                dots = _dots(grads, self._ring[slot], self.lengths)
                den = norms * self._ring_norms[slot]
                cols.append(torch.where(den > 0, dots / den.clamp_min(1e-300), nan))
            self._gcos = torch.stack(cols, 1).float()
        if kept < K:  # still filling: the newest is the last appended
            self._ring.append([g.detach().clone() for g in grads])
            self._ring_norms.append(norms)
            self._ring_pos = len(self._ring) % K
        else:  # full: overwrite the oldest
            torch._foreach_copy_(self._ring[self._ring_pos], grads)
            self._ring_norms[self._ring_pos] = norms
            self._ring_pos = (self._ring_pos + 1) % K

    @torch.no_grad()
    def before_step(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        torch._foreach_copy_(self.prev, [p.detach() for p in self.params])
        wb = torch.stack(torch._foreach_norm(self.prev))
        gn = torch.stack(torch._foreach_norm(grads))
        wg = _dots(self.prev, grads, self.lengths)
        self._before = (wb, gn, wg)
        if self.channels:
            self._ch_before = []
            for i in self.ch_idx:
                w = self.prev[i].flatten(1).float()
                g = grads[i].flatten(1).float()
                self._ch_before.append((w.norm(dim=1), g.norm(dim=1), (w * g).sum(1)))

    @torch.no_grad()
    def after_step(self, step: int, epoch: float, lr: float, loss: torch.Tensor, acc: torch.Tensor) -> None:
        wb, gn, wg = self._before
        dws = torch._foreach_sub([p.detach() for p in self.params], self.prev)
        wa = torch.stack(torch._foreach_norm([p.detach() for p in self.params]))
        dn = torch.stack(torch._foreach_norm(dws))
        dwb = _dots(dws, self.prev, self.lengths)
        # Undefined for a zero tensor (BN biases at init): NaN rather than a huge number.
        nan = torch.tensor(float("nan"), device=wb.device)
        rel = torch.where(wb > 0, dn / wb, nan)
        cos = torch.where(wb * gn > 0, wg / (wb * gn), nan)
        ang = torch.where((wa > 0) & (wb > 0), _angle(dn**2, dwb, wa, wb).float(), nan)
        stats = torch.stack([wa, gn, dn, rel, cos, ang], dim=1)
        self.rows.append((step, epoch, lr, loss.detach().float(), acc.detach().float(), stats))
        if self._gcos is not None:
            self.gc_rows.append((step, self._gcos))
            self._gcos = None
        if self.channels:
            out = []
            for i, (cwb, cgn, cwg) in zip(self.ch_idx, self._ch_before):
                a = self.params[i].detach().flatten(1).float()
                b = self.prev[i].flatten(1).float()
                d = a - b
                cwa, cdn = a.norm(dim=1), d.norm(dim=1)
                cang = _angle(cdn**2, (d * b).sum(1), cwa, cwb).float()
                ccos = torch.where(cwb * cgn > 0, cwg / (cwb * cgn), float("nan"))
                out.append(torch.stack([cwa, cgn, cdn, ccos, cang], 1))
            self.ch_rows.append((step, out))

    def flush(self, path: Path, channel_path: Path | None = None, gradcorr_path: Path | None = None) -> None:
        """Append the buffered rows to the CSV file(s) (header on a new file), then clear the buffer."""
        if self.rows:
            steps, epochs, lrs, losses, accs, stats = zip(*self.rows)
            losses = torch.stack(losses).cpu().tolist()
            accs = torch.stack(accs).cpu().tolist()
            stats = torch.stack(stats).cpu().tolist()
            with append_rows(path, COLUMNS) as w:
                for s, e, lr, lo, ac, st in zip(steps, epochs, lrs, losses, accs, stats):
                    for name, n, vals in zip(self.names, self.numel, st):
                        w.writerow([s, f"{e:.6g}", f"{lr:.8g}", f"{lo:.6g}", f"{ac:.6g}", name, n,
                                    *(f"{v:.8g}" for v in vals)])
        if self.ch_rows and channel_path is not None:
            with append_rows(channel_path, CHANNEL_COLUMNS) as w:
                for s, per_param in self.ch_rows:
                    for i, t in zip(self.ch_idx, per_param):
                        for c, vals in enumerate(t.cpu().tolist()):
                            w.writerow([s, self.names[i], c, *(f"{v:.8g}" for v in vals)])
        if self.gc_rows and gradcorr_path is not None:
            with append_rows(gradcorr_path, gradcorr_columns(self.grad_lags)) as w:
                for s, t in self.gc_rows:
                    for name, vals in zip(self.names, t.cpu().tolist()):
                        w.writerow([s, name, *(f"{v:.6g}" for v in vals)])
        self.rows.clear()
        self.ch_rows.clear()
        self.gc_rows.clear()
