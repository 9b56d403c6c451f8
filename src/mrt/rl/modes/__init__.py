"""The progress forms (`progress_mode`): the one list of them. A new form is a module here and a line below."""

from mrt.rl.modes.base import ProgressMode
from mrt.rl.modes.branched import BranchedMode
from mrt.rl.modes.dense import DenseMode
from mrt.rl.modes.termination import TerminationBaselineMode

MODES: dict[str, type[ProgressMode]] = {mode.name: mode for mode in (DenseMode, TerminationBaselineMode, BranchedMode)}

__all__ = ["MODES", "ProgressMode", "mode_class"]


def mode_class(name: str) -> type[ProgressMode]:
    """The form called `name` (a KeyError listing the forms otherwise)."""
    if name not in MODES:
        raise KeyError(f"no progress_mode {name!r}; the forms are {list(MODES)}")
    return MODES[name]
