"""MRT on top of TRL's GRPOTrainer: `MRTConfig` (config), `MRTTrainer` (trainer), the progress forms behind one
interface (modes/: dense, termination, branched), the branched form's pure parts (branched) and the private TRL
names the trainer relies on (trl_api)."""

from mrt.lazy import lazy_exports

_NAMES = {"MRTConfig": "mrt.rl.config", "MRTTrainer": "mrt.rl.trainer"}
__all__ = list(_NAMES)
__getattr__ = lazy_exports(__name__, _NAMES)
