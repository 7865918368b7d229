"""The one style of every bnlab figure, for the scripts in figures/: a re-export of `bnlab.plotting.style`
(the single source, which the package's own figures use too)."""
from bnlab.plotting.style import *  # noqa: F401,F403
from bnlab.plotting.style import _is_grey, _log_subs  # noqa: F401
