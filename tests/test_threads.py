"""mrt.threads: a CPU training process takes one thread per idle core (a busy core makes every op wait)."""

import subprocess
import sys

import pytest

from mrt.threads import available_cores, choose_threads, idle_cores, set_cpu_threads


def test_choose_threads_rounds_the_idle_cores_within_the_available_ones():
    assert choose_threads(2.0, 2) == 2
    assert choose_threads(1.3, 2) == 1 and choose_threads(1.6, 2) == 2
    assert choose_threads(0.1, 2) == 1  # never 0
    assert choose_threads(7.9, 4) == 4  # never more than this process may use
    assert choose_threads(None, 3) == 3  # unknown: all of them


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_process_takes_its_core_away():
    cores = available_cores()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        idle = idle_cores(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert idle is not None and 0.0 <= idle <= cores - 0.7  # the busy loop held about one core


def test_an_explicit_omp_num_threads_wins(monkeypatch):
    import torch

    before = torch.get_num_threads()
    assert set_cpu_threads({"OMP_NUM_THREADS": "1"}) is None
    assert torch.get_num_threads() == before
