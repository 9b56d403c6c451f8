"""CPU threads for a training process: as many as there are idle cores when it starts.

torch's intra-op threads meet at a barrier after every operation. When another process keeps one of two cores busy,
the thread on that core runs only in its time slices and every operation waits for it: measured on the 2-core host,
a CPU-default MRT step took 136-175 s instead of 23-29 s. One thread per idle core avoids the wait. An explicit
OMP_NUM_THREADS (or accelerate's per-process setting) always wins.
"""

import os
import time


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all cores from /proc/stat; None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already counted in user time


def idle_cores(seconds: float = 0.5) -> float | None:
    """Cores left idle by every process over the next `seconds` (this one sleeps meanwhile); None off Linux."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    total = after[1] - before[1]
    if total <= 0:
        return None
    return (after[0] - before[0]) / total * (os.cpu_count() or 1)


def choose_threads(idle: float | None, cores: int) -> int:
    """Threads for the idle cores among `cores` (all of them when idleness is unknown); at least 1."""
    if idle is None:
        return max(cores, 1)
    return max(1, min(cores, int(idle + 0.5)))


def set_cpu_threads(env=os.environ) -> int | None:
    """Sets torch's thread count to `choose_threads` unless OMP_NUM_THREADS is set; returns what was set (None: left
    as it was)."""
    if env.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = choose_threads(idle_cores(), available_cores())
    torch.set_num_threads(threads)
    return threads
