"""DavidNet (Page's 9-layer ResNet) and the 8-conv "simple" net of the batch-norm post.

Both take the same options: `width` (channels of the prep layer; 64 = the published nets, every
other width scales all channels by width/64), `norm` (see `bnlab.norms`), `act` and its parameter.

Initialisation: PyTorch defaults for conv/linear, as in the original DavidNet. Exceptions, both
"He" init (the default uniform init times sqrt(6), variance 2/fan_in):
- the simple net, always (as in the batch-norm post), with classifier scale 0.125/sqrt(6);
- any net with ``norm="none"``: without normalisation the default init (variance 1/(3 fan_in))
  shrinks the signal ~6x per layer. No-BN convs also get a bias (zero-init), taking the place
  of BN's beta;
- the convs of a DavidNet with ``norm="frozen"``: its fixed statistics undo any conv scale in the
  forward pass, but with the default init they would multiply the effective step by 1/var (4-12).

Options of the bag-of-tricks recipe (`bnlab.recipes`), each off by default: ``pool_first`` (conv ->
max-pool -> norm -> act in the pooling blocks), ``frozen_scales`` (the norms' γ fixed at 1: a buffer,
only β learns) and ``whiten`` (the prep block's 3x3 conv becomes the fixed patch-whitening conv of
`bnlab.whitening`, 3 -> 27 channels, then a learnable 1x1 conv 27 -> width).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import validate as check
from .errors import BnlabError
from .norms import NORMS, freeze_scale, make_norm
from .options import opt
from .whitening import PatchWhitening

MODELS = ("davidnet", "simple")
ACTS = ("relu", "celu", "softplus")
DEFAULT_ACT_PARAM = {"relu": None, "celu": 0.3, "softplus": 10.0}
DEFAULT_CLASSIFIER_SCALE = {"davidnet": 0.125, "simple": 0.125 / math.sqrt(6)}
# 16x the published width: DavidNet's parameters grow as width^2 (6.57M at 64, 1.7G at 1024), so a
# larger width is a typo that would otherwise only fail in a huge allocation.
MAX_WIDTH = 1024
# Celu's alpha / softplus's beta: the posts use 0.3 and 10; far outside this range the activation
# overflows or degenerates (beta*x = inf), which would only show as a failure mid-training.
ACT_PARAM_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a model's architecture (recorded in every checkpoint)."""

    model: str = opt("davidnet", help="Network: davidnet, or simple (the batch-norm post's 8-conv net).",
                     choices=MODELS)
    width: int = opt(64, help="Channels of the prep layer (64 = published; every layer scales with it).",
                     unit="channels", domain=f"1..{MAX_WIDTH}")
    norm: str = opt("bn", help="Normalisation layer (overrides the preset).", choices=NORMS,
                    default_text="the variant's")
    affine: bool | None = opt(None, help="Learnable norm affine.", flag="--affine/--no-affine",
                              default_text="per norm")  # None: norms.DEFAULT_AFFINE
    act: str = opt("relu", help="Activation.", choices=ACTS)
    act_param: float | None = opt(None, help="celu alpha / softplus beta.", domain=f"[{ACT_PARAM_RANGE[0]:g}, "
                                  f"{ACT_PARAM_RANGE[1]:g}]", default_text=", ".join(
                                      f"{a} {p:g}" for a, p in DEFAULT_ACT_PARAM.items() if p is not None))
    ghost_splits: int = opt(16, help="Ghost BN splits (ghost batches of batch-size / splits).",
                            domain="1..65536, divides --batch-size")
    classifier_scale: float | None = opt(None, help="Logit scale.", domain="(0, 1000]", default_text=", ".join(
        f"{k} {v:.4g}" for k, v in DEFAULT_CLASSIFIER_SCALE.items()))  # None: the model's published scale
    num_classes: int = opt(10, help="Classes of the classifier.", domain=">= 2", cli=False)
    pool_first: bool = opt(False, help="Max-pool before the norm (conv-pool-BN-act).",
                           flag="--pool-first/--no-pool-first")
    frozen_scales: bool = opt(False, help="Fix the norms' scales γ at 1 (a buffer; β learns).",
                              flag="--frozen-scales/--no-frozen-scales")
    whiten: bool = opt(False, help="Prep layer: fixed 3x3 patch whitening (27 filters) then a learnable 1x1 conv.",
                       flag="--whiten/--no-whiten")

    def validate(self) -> None:
        if self.model not in MODELS:
            raise BnlabError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.act not in ACTS:
            raise BnlabError(f"unknown activation {self.act!r}; choose one of {', '.join(ACTS)}")
        check.integer("--width", self.width, 1, MAX_WIDTH)
        check.integer("--ghost-splits", self.ghost_splits, 1, 1 << 16)
        check.integer("num_classes", self.num_classes, 2)
        if self.act == "relu" and self.act_param is not None:
            raise BnlabError("relu takes no --act-param (it is celu's alpha / softplus's beta)")
        if self.act_param is not None:
            check.in_range("--act-param", self.act_param, *ACT_PARAM_RANGE)
        if self.classifier_scale is not None:
            check.in_range("--classifier-scale", self.classifier_scale, 0.0, 1e3, low_open=True)
        norm = make_norm(self.norm, 1, affine=self.affine, ghost_splits=self.ghost_splits)  # validates norm
        if self.frozen_scales and not getattr(norm, "affine", False):
            raise BnlabError(f"--frozen-scales fixes the norm's learnable scale, but norm {self.norm!r} "
                             f"{'has none' if self.norm in ('none', 'bn_fixed_affine') else 'has no affine here'}")


class Mul(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class ConvBlock(nn.Module):
    """conv 3x3 (no bias unless unnormalised) -> norm -> act [-> max-pool 2]; with spec.pool_first
    the pool comes right after the conv (4x less work for norm and act)."""

    def __init__(self, c_in: int, c_out: int, spec: ModelSpec, pool: bool = False, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=spec.norm == "none")
        self.norm = make_norm(spec.norm, c_out, affine=spec.affine, ghost_splits=spec.ghost_splits)
        if spec.frozen_scales:
            freeze_scale(self.norm)
        self.act = make_act(spec)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.pool_first = spec.pool_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            return self.act(self.norm(self.pool(self.conv(x))))
        return self.pool(self.act(self.norm(self.conv(x))))


class WhitenedBlock(ConvBlock):
    """The bag-of-tricks prep block: fixed patch whitening (3 -> 27) -> 1x1 conv -> norm -> act."""

    def __init__(self, c_in: int, c_out: int, spec: ModelSpec) -> None:
        whiten = PatchWhitening(c_in)
        super().__init__(whiten.out_channels, c_out, spec, kernel=1)
        self.whiten = whiten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.whiten(x))


class Residual(nn.Module):
    """x + b(a(x)) with two width-preserving conv blocks."""

    def __init__(self, c: int, spec: ModelSpec) -> None:
        super().__init__()
        self.a = ConvBlock(c, c, spec)
        self.b = ConvBlock(c, c, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


def make_act(spec: ModelSpec) -> nn.Module:
    param = spec.act_param if spec.act_param is not None else DEFAULT_ACT_PARAM[spec.act]
    if spec.act == "relu":
        return nn.ReLU(inplace=True)
    if spec.act == "celu":
        return nn.CELU(alpha=param)
    return nn.Softplus(beta=param)


def _he_rescale(model: nn.Module, bias_zero: bool, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, types):
                m.weight.mul_(math.sqrt(6.0))
                if bias_zero and m.bias is not None:
                    m.bias.zero_()


def _channels(width: int) -> tuple[int, int, int, int]:
    # Any width >= 1: tiny widths (1-4) give nets small enough for dense-Hessian tests.
    return width, 2 * width, 4 * width, 8 * width


def davidnet(width: int = 64, norm: str = "bn", act: str = "relu", **options: object) -> nn.Sequential:
    """Page's DavidNet: 94% on CIFAR-10 in 24 epochs at width 64 (6,573,120 parameters)."""
    spec = ModelSpec(model="davidnet", width=width, norm=norm, act=act, **options)  # type: ignore[arg-type]
    return build_model(spec)


def simple_net(width: int = 64, norm: str = "bn_fixed_affine", act: str = "relu",
               **options: object) -> nn.Sequential:
    """The batch-norm post's 8-conv net without residuals (4,651,712 conv parameters at width 64)."""
    spec = ModelSpec(model="simple", width=width, norm=norm, act=act, **options)  # type: ignore[arg-type]
    return build_model(spec)


def build_model(spec: ModelSpec) -> nn.Sequential:
    """The network described by `spec`, freshly initialised from the current torch RNG."""
    spec.validate()
    c0, c1, c2, c3 = _channels(spec.width)
    scale = spec.classifier_scale
    if scale is None:
        scale = DEFAULT_CLASSIFIER_SCALE[spec.model]
    if spec.model == "davidnet":
        net = nn.Sequential()
        net.add_module("prep", WhitenedBlock(3, c0, spec) if spec.whiten else ConvBlock(3, c0, spec))
        net.add_module("layer1", ConvBlock(c0, c1, spec, pool=True))
        net.add_module("layer1_res", Residual(c1, spec))
        net.add_module("layer2", ConvBlock(c1, c2, spec, pool=True))
        net.add_module("layer3", ConvBlock(c2, c3, spec, pool=True))
        net.add_module("layer3_res", Residual(c3, spec))
        net.add_module("pool", nn.AdaptiveMaxPool2d(1))
        net.add_module("flatten", nn.Flatten())
        net.add_module("classifier", nn.Linear(c3, spec.num_classes, bias=False))
        net.add_module("scale", Mul(scale))
        if spec.norm == "none":
            _he_rescale(net, bias_zero=True)
        elif spec.norm == "frozen":
            # A frozen norm divides by the statistics of init, so the conv scale does not change the
            # function, only the step size: with the default init (variance 1/(3 fan_in)) the step on
            # the normalised weights would be lr/var, 4-12x lr. He-scaled convs give var ~ 1, the
            # no-BN net's geometry. The classifier keeps BN DavidNet's scale (same logits at init).
            _he_rescale(net, bias_zero=False, types=(nn.Conv2d,))
        return net
    net = nn.Sequential()
    net.add_module("input_scale", Mul(1 / math.sqrt(2)))
    net.add_module("prep", WhitenedBlock(3, c0, spec) if spec.whiten else ConvBlock(3, c0, spec))
    for i, c_in, c in ((1, c0, c1), (2, c1, c2), (3, c2, c3)):
        net.add_module(f"layer{i}", ConvBlock(c_in, c, spec, pool=True))
        net.add_module(f"layer{i}_extra", ConvBlock(c, c, spec))
    net.add_module("pool", nn.AdaptiveMaxPool2d(1))
    net.add_module("classifier", nn.Conv2d(c3, spec.num_classes, 1, bias=False))
    net.add_module("flatten", nn.Flatten())
    net.add_module("scale", Mul(scale))
    _he_rescale(net, bias_zero=True)
    return net


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
