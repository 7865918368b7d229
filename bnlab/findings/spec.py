"""The findings of posts 6 and 7 that `bnlab reproduce` checks: claim, source, the source's number
and the threshold, one `Finding` per report row (docs/findings.md explains each in full).

Thresholds are fixed here once, loose enough for CPU-scale nets and tight enough that a wrong
implementation fails; they are never adapted to a scale. Eigenvalues are in mean-loss units unless
"batch-summed" (the batch-norm post's: loss summed over a batch of 256). mu = momentum, eta = lr,
lambda = weight decay (torch SGD: decay added to the gradient).
"""
from __future__ import annotations

from .record import Finding

_P6 = "P: How to train your ResNet 6 (weight decay)"
_P7 = "P: How to train your ResNet 7 (batch norm) and its notebook"

FINDINGS: tuple[Finding, ...] = (
    Finding("F1", "weight-decay", "scale invariance, Pythagorean growth",
            "A conv followed by train-mode BN is scale-invariant, so its gradient is orthogonal to it (<w,g> = 0); "
            "with lambda = 0 and plain SGD its norm therefore grows by Pythagoras and never shrinks.",
            "A (Euler's identity)", "exact identity (no number)",
            "trained BN net: per channel of the BN-preceded convs, median |cos(w_c, g_c)| over training; their "
            "median over channels < 1e-3; "
            "float64 plain SGD, lambda = 0: |‖w'‖² - ‖w‖² - eta²‖g‖²| <= 1e-4 eta²‖g‖² at every step and ‖w‖ "
            "never decreases"),
    Finding("F2", "weight-decay", "equilibrium angle per step",
            "At constant lr the angle each BN-preceded layer turns per step settles at sqrt(2 eta lambda / (1 + mu)) "
            "k_N(mu), k_N = sqrt((1 + mu)^3 (1 - mu) + mu^4) for torch's Nesterov (1.158 at mu = 0.9; 1 for heavy "
            "ball).",
            f"L (van Laarhoven 2017, Wan et al. 2021), A; {_P6}", "the formula (no measured number)",
            "after >= 5 relaxation times (1 - mu)/(4 eta lambda) at constant lr, every BN-preceded conv's "
            "measured angle within +-15% of the prediction"),
    Finding("F3", "weight-decay", "LARS-like: same step in every layer",
            "That angle is the same in every BN-preceded layer although their weight norms differ: "
            "per-layer adaptive step sizes for free.",
            _P6, "plots of per-layer relative steps (no number)",
            "coefficient of variation of the measured angle across the BN-preceded convs < 0.15 while their "
            "final ‖w‖ span >= 3x"),
    Finding("F4", "weight-decay", "only eta*lambda matters",
            "Runs with equal eta*lambda turn their layers by equal angles, and the equilibrium norm scales as "
            "‖w‖ ~ (eta/lambda)^(1/4).",
            f"{_P6}; L", "flat directions of the part-5 hyper-parameter search",
            "angles within +-10% between points of equal eta*lambda (max/min <= 1.10); fitted exponent of ‖w‖ "
            "against eta/lambda 0.25 +- 0.05"),
    Finding("F4b", "weight-decay", "exponential lr = weight decay",
            "With every parameter scale-invariant, SGD(eta, lambda) and SGD with lr eta (1 - eta lambda)^(-2t-1) "
            "and no weight decay follow the same directions w/‖w‖.",
            "L (Li & Arora 2019)", "exact equivalence (no number)",
            "float64, mu = 0, 200 steps: per-tensor directions equal to 1e-6"),
    Finding("F5", "batch-norm", "collapse at initialisation",
            "Without normalisation, deep ReLU nets at init output nearly the same value for every input: the "
            "channel-mean share of each channel's second moment grows with depth; centring prevents it.",
            f"{_P7}; L (Cho & Saul 2009), A",
            "per-channel output histograms (no number); DavidNet width 8: layer3 0.76 no BN vs 0.55 BN, "
            "logits 0.91 vs 0.89",
            "FC ReLU net (depth 50): share at layers 1, 2, 5, 10, 20, 50 within +-0.05 of the arc-cosine "
            "recursion (0, .32, .68, .85, .94, .99); centred net (pre-activations centred, as by BN; share measured "
            "before centring) flat at 1/pi +-0.05 at every layer >= 2. DavidNet at init: "
            "shares reported side by side, no threshold"),
    Finding("F6", "batch-norm", "LR stress test",
            "With an exponentially growing lr (lr0 2^(epoch/2)) the net without BN fails far earlier than the "
            "net with BN.",
            _P7, "no BN: NaN at lr 0.32 (epoch 12); BN: stable up to lr ~29 (end of the test)",
            "lr at failure BN / no BN >= 10, or BN never fails (while no BN does); failure = a non-finite loss, "
            "or an epoch's training accuracy back at <= 0.15 after it had exceeded 0.3"),
    Finding("F7", "batch-norm", "output-mean gradients",
            "The gradients of the logits' per-class batch means are large without BN and with frozen BN, small "
            "with BN, whose gradient mass sits in the classifier.",
            _P7, "‖∇mean‖² BN 2.76 / frozen 19.3 / no BN 38.2; classifier share 83.6% / 11.9% / 16.9%",
            "‖∇mean‖² frozen/BN >= 3 and no BN/BN >= 3; classifier share BN >= 0.6 and frozen <= 0.3"),
    Finding("F8", "batch-norm", "1% step flips predictions",
            "A weight step of 1% of ‖theta‖ along ∇mean_c makes frozen-BN and no-BN nets predict class c; BN "
            "nets, and random steps of the same length, barely move.",
            _P7, "shown as prediction histograms (no number)",
            "frozen and no BN: fraction predicting c after the step >= 0.5; BN's step and every random step: "
            "shift of that fraction < 0.2"),
    Finding("F9", "batch-norm", "frozen BN is far sharper; outliers + gap",
            "Freezing BN makes the loss far sharper on the same weights; its spectrum has about C outliers, "
            "then a gap.",
            _P7, "top eigenvalue (batch-summed) BN 127.9, frozen 2246, no BN 3486; frozen: 9 outliers then ~435",
            "lambda1(frozen) / lambda1(BN) >= 5; frozen lambda_k / lambda_(k+1) >= 1.8 at some k in 8..11"),
    Finding("F10", "batch-norm", "outliers live in the statistics' span",
            "The outlier eigenvectors lie in the span of the output-statistic gradients.",
            _P7, "frozen v1-v9: 0.80-0.89 (means span), 0.98-0.99 (means+variances+skews); random ~1e-5",
            "frozen top-9 median squared overlap >= 0.6 with the means span and >= 0.9 with the full span; "
            "random vectors' overlap ~ dim/P (within 2x)"),
    Finding("F11", "batch-norm", "projecting the span out removes the outliers",
            "Projecting that span out of the Hessian removes the outliers of frozen/no-BN nets and hardly "
            "changes BN's.",
            _P7, "top eigenvalue (batch-summed) frozen 2246 -> 407, BN 128 -> 115",
            "frozen lambda1 cut >= 3x; BN lambda1 cut <= 1.3x"),
    Finding("F12", "weight-decay", "edge of stability along training",
            "Nets trained at the largest stable lr sit at the edge of stability: eta lambda1 approaches the "
            "momentum-SGD threshold 2(1 + mu)/(1 + 2 mu) (1.357 at mu = 0.9, Nesterov).",
            "L (Cohen et al. 2021), A", "GD: lambda1 -> 2/eta (momentum: 2(1 + mu)/((1 + 2 mu) eta))",
            "over the constant-lr phase (its first quarter left out: sharpening time), eta lambda1 of the "
            "training loss (BN batch mode) within 0.5-2x of the threshold at every checkpoint"),
    Finding("F13", "batch-norm", "outliers are Gauss-Newton (frozen, no BN)",
            "On the same weights and batches H = G + R, G = J^T H_out J the Gauss-Newton matrix: for frozen BN "
            "and no BN the top of H is G's (the same top-C space, a small residual R), G's outliers coming from "
            "class-mean structure; BN's Hessian has no separated top.",
            "L (Sagun et al. 2017; Papyan 2019, 2020)",
            "the outliers of H are G's: C class-means outliers (+ C(C-1) cross-class), the bulk is R and G's rest",
            "frozen and no BN: squared overlap of the top-k eigenvector spaces of H and G (k = min(10, computed)) "
            ">= 0.9 and lambda1(R) <= 0.2 lambda1(H); BN: lambda_k / lambda_(k+1) of H < 1.8 at every k in 8..11; "
            "reported, no threshold: the class-means term's top eigenvalues beside G's, BN's overlap, the frozen "
            "net's G outliers in the F10 span"),
)

BY_ID = {f.id: f for f in FINDINGS}
IDS = tuple(BY_ID)


def in_group(group: str) -> tuple[str, ...]:
    return tuple(f.id for f in FINDINGS if f.group == group)
