"""MRT (STaR): generate traces, score their prefixes with mu (run), select by progress (select, pure), then
fine-tune with TRL's SFTTrainer."""

from mrt.lazy import lazy_exports

_NAMES = {"STaRConfig": "mrt.star.run", "run": "mrt.star.run"}
__all__ = list(_NAMES)
__getattr__ = lazy_exports(__name__, _NAMES)
