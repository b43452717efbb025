"""Thread tuning under load, with step times fed in (no timing in the test): it starts from the
cores actually free and probes again when the step time jumps."""

import pytest
import torch

from napari_semseg.core import threads
from napari_semseg.core.threads import ThreadTuner


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run(tuner, seconds_for):
    """One step: the tuner sets the threads, the step takes seconds_for(threads)."""
    tuner.before_step()
    tuner.after_step(seconds_for(torch.get_num_threads()))


def test_busy_machine_starts_with_one_thread(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 1)
    tuner = ThreadTuner(enabled=True)
    assert tuner.current == 1 and torch.get_num_threads() == 1
    tuner.restore()
    assert torch.get_num_threads() == 2


def test_idle_machine_starts_with_all_threads(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    tuner = ThreadTuner(enabled=True)
    assert tuner.current == 2 and torch.get_num_threads() == 2


def test_a_jump_in_step_time_retunes(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    tuner = ThreadTuner(enabled=True, reprobe=1000)  # no periodic probe: only the jump
    idle = {2: 1.0, 1: 1.8}
    for _ in range(12):
        run(tuner, idle.get)
    assert tuner.current == 2
    busy = {2: 6.0, 1: 2.0}  # another process starts: 2 threads now wait at every barrier
    for _ in range(10):
        run(tuner, busy.get)
    assert tuner.current == 1, tuner.describe()


def test_steady_times_do_not_retune(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    tuner = ThreadTuner(enabled=True, reprobe=1000)
    times = {2: 1.0, 1: 1.8}
    for _ in range(12):
        run(tuner, times.get)
    probes = tuner.since_probe
    for _ in range(20):
        run(tuner, times.get)
    assert tuner.current == 2 and tuner.since_probe == probes + 20


def test_free_cores_is_at_least_one():
    assert 1 <= threads.free_cores() <= (torch.multiprocessing.cpu_count() or 1)
