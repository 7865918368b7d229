"""Fake cifar10-fast dawn_utils.py (see README.md): `net` records the channels it was asked for."""
from torch import nn


def net(channels=None, weight=0.125):
    return {"channels": dict(channels), "linear": nn.Linear(channels["layer3"], 10, bias=False)}
