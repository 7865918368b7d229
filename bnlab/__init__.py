"""bnlab: why batch norm and weight decay work, measured on DavidNet."""
__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint  # noqa: E402

__all__ = ["Checkpoint", "__version__", "load_checkpoint"]
