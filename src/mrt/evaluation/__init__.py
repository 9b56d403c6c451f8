"""Evaluation of how models use test-time compute: sampling, forced answers after each episode (run), and the
report's tables and plots (report)."""

from mrt.lazy import lazy_exports

_NAMES = {"EvalConfig": "mrt.evaluation.run", "evaluate": "mrt.evaluation.run", "write_report": "mrt.evaluation.report"}
__all__ = list(_NAMES)
__getattr__ = lazy_exports(__name__, _NAMES)
