"""perturbation_table against numbers computed here with numpy: a linear classifier (weights W, bias b)
on batches of 6 and 2, stepped by δ‖θ‖ along given directions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.errors import BnlabError
from bnlab.outstats.perturb import perturbation_table
from conftest import requires_cuda

C, D = 3, 4


def setup() -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(D, C).double()
    x = torch.randn(8, D, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    dirs = torch.randn(C, D * C + C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, batches, dirs


def by_hand(model: nn.Linear, batches, theta_step: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(fraction predicted as each class, mean cross-entropy, mean centred logits) with θ + theta_step."""
    W = model.weight.detach().numpy() + theta_step[:C * D].reshape(C, D)  # parameters() order: weight, bias
    b = model.bias.detach().numpy() + theta_step[C * D:]
    x = np.concatenate([xb.numpy() for xb, _ in batches])
    y = np.concatenate([yb.numpy() for _, yb in batches])
    z = x @ W.T + b
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    frac = np.bincount(z.argmax(1), minlength=C) / len(y)
    return frac, float(-logp[np.arange(len(y)), y].mean()), (z - z.mean(1, keepdims=True)).mean(0)


@pytest.mark.parametrize("delta", [0.01, 0.3])
def test_steps_along_given_directions_and_seeded_random_ones(delta: float) -> None:
    model, batches, dirs = setup()
    theta = np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])
    step = delta * np.linalg.norm(theta)
    table = perturbation_table(model, batches, dirs, mode="none", delta=delta, seed=3)
    assert table["delta"] == delta
    assert table["theta_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-12)
    assert table["step_norm"] == pytest.approx(step, rel=1e-12)
    frac0, loss0, mean0 = by_hand(model, batches, np.zeros_like(theta))
    gen = torch.Generator().manual_seed(3)  # the random directions: one draw per class, in order
    assert [r["class"] for r in table["rows"]] == list(range(C))
    for c, row in enumerate(table["rows"]):
        g = dirs[c].numpy()
        frac_g, loss_g, mean_g = by_hand(model, batches, g / np.linalg.norm(g) * step)
        r = torch.randn(theta.size, generator=gen, dtype=torch.float64).numpy()
        frac_r, loss_r, mean_r = by_hand(model, batches, r / np.linalg.norm(r) * step)
        want = {"frac_before": frac0[c], "frac_after_grad": frac_g[c], "frac_after_random": frac_r[c],
                "loss_before": loss0, "loss_after_grad": loss_g, "loss_after_random": loss_r,
                "mean_logit_shift_grad": mean_g[c] - mean0[c], "mean_logit_shift_random": mean_r[c] - mean0[c]}
        assert set(row) == {"class", *want}
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (c, key)
    # the random rows depend on the seed, and only on it
    again = perturbation_table(model, batches, dirs, mode="none", delta=delta, seed=3)
    other = perturbation_table(model, batches, dirs, mode="none", delta=delta, seed=4)
    assert again == table
    assert [r["mean_logit_shift_random"] for r in other["rows"]] != [r["mean_logit_shift_random"]
                                                                      for r in table["rows"]]


def test_chosen_classes_zero_direction_and_bad_delta() -> None:
    model, batches, dirs = setup()
    table = perturbation_table(model, batches, dirs[[2, 0]], mode="none", classes=[2, 0])
    assert [r["class"] for r in table["rows"]] == [2, 0]
    full = perturbation_table(model, batches, dirs, mode="none")
    assert table["rows"][0]["frac_after_grad"] == full["rows"][2]["frac_after_grad"]
    # the defaults: the post's step of 1% of the weight norm, random directions of seed 0
    assert full["delta"] == 0.01 and full["step_norm"] == pytest.approx(0.01 * full["theta_norm"])
    assert full == perturbation_table(model, batches, dirs, mode="none", delta=0.01, seed=0)
    with pytest.raises(BnlabError, match="class 1 is zero"):
        perturbation_table(model, batches, torch.zeros(2, dirs.shape[1], dtype=torch.float64), mode="none",
                           classes=[1, 2])
    with pytest.raises(BnlabError, match="--delta must be positive"):
        perturbation_table(model, batches, dirs, mode="none", delta=0.0)


@requires_cuda
def test_the_table_on_cuda_equals_cpu() -> None:
    model, batches, dirs = setup()
    want = perturbation_table(model, batches, dirs, mode="none", delta=0.05)
    got = perturbation_table(model.cuda(), [(x.cuda(), y.cuda()) for x, y in batches], dirs, mode="none", delta=0.05)
    for g, w in zip(got["rows"], want["rows"]):
        for key in ("frac_before", "frac_after_grad", "frac_after_random", "loss_before", "loss_after_grad",
                    "loss_after_random", "mean_logit_shift_grad", "mean_logit_shift_random"):
            assert g[key] == pytest.approx(w[key], rel=1e-9, abs=1e-12), key  # random directions: drawn on the CPU
