"""Choose the number of CPU threads for training by measuring step times.

On a CPU shared with other busy processes, a multi-threaded (OpenMP) training step waits at
every barrier for a thread that the OS has descheduled; on the 2-core development machines under
load a 2-thread step took 2.0-2.3 s and a 1-thread step 0.72-0.77 s, while on an idle machine 2
threads are about 1.8x faster than one. :class:`ThreadTuner` therefore alternates between the
configured thread count and one thread for a few probe steps, keeps the faster, and probes again
every ``reprobe`` steps since the load changes. It starts from the cores actually free
(:func:`free_cores`: CPUs minus the load average), so a busy machine does not spend its first
steps at a thread count it cannot serve, and probes again at once when the step time jumps (a
competing process started). It is used only where reproducibility does not depend on it
(training bounded by a wall-clock budget); the thread count is restored afterwards.
"""

from __future__ import annotations

import os

import torch

JUMP = 2.0  # a step this many times slower than usual means the load changed
JUMPS_TO_REPROBE = 2  # consecutive slow steps before probing again


def free_cores() -> int:
    """CPUs not busy with other work: available CPUs minus the 1-minute load average (>= 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))


class ThreadTuner:
    """Pick, by measurement, the faster of ``torch.get_num_threads()`` and 1 thread.

    Call :meth:`before_step` before each step and :meth:`after_step` with its duration.
    """

    def __init__(self, enabled: bool, fixed: int | None = None, probe: int = 3,
                 reprobe: int = 40) -> None:
        self.original = torch.get_num_threads()
        if fixed is not None:
            torch.set_num_threads(max(1, int(fixed)))
        self.options = [torch.get_num_threads(), 1]
        self.enabled = enabled and fixed is None and self.options[0] > 1
        self.probe, self.reprobe = probe, reprobe
        self.cost: dict[int, float | None] = {n: None for n in self.options}  # seconds per step, smoothed
        self.current = self.options[0]
        if self.enabled and free_cores() < self.options[0]:  # busy machine: start with 1
            self.options.reverse()
            self.current = 1
            torch.set_num_threads(1)
        self.step = 0
        self.trial: int | None = None
        self.trial_times: list[float] = []
        self.since_probe = 0
        self.slow_steps = 0  # consecutive steps much slower than the usual cost

    def before_step(self) -> None:
        if not self.enabled:
            return
        self.step += 1
        if self.step <= 2:  # warm-up steps are not representative
            return
        if self.trial is None:
            unknown = [n for n in self.options if self.cost[n] is None]
            if unknown:
                self.trial = unknown[0]
            elif self.since_probe >= self.reprobe:
                self.trial = [n for n in self.options if n != self.current][0]
            if self.trial is not None:
                self.trial_times = []
        target = self.trial if self.trial is not None else self.current
        if torch.get_num_threads() != target:
            torch.set_num_threads(target)

    def after_step(self, seconds: float) -> None:
        if not self.enabled or self.step <= 2:
            return
        if self.trial is None:
            self.since_probe += 1
            old = self.cost[self.current]
            if old is None or self._load_changed(seconds, old):  # the new regime's cost
                self.cost[self.current] = seconds
            else:
                self.cost[self.current] = 0.8 * old + 0.2 * seconds
            return
        self.trial_times.append(seconds)
        if len(self.trial_times) < self.probe:
            return
        # the first step after a switch pays for it; judge by the others
        times = sorted(self.trial_times[1:]) or self.trial_times
        self.cost[self.trial] = times[len(times) // 2]
        self.trial, self.since_probe = None, 0
        known = {n: c for n, c in self.cost.items() if c is not None}
        if len(known) == len(self.options):
            self.current = min(known, key=lambda n: known[n])

    def _load_changed(self, seconds: float, usual: float) -> bool:
        """After a few steps much slower than usual, probe the other count again at once
        (its cost was measured under the old load); True then."""
        if seconds < JUMP * usual:
            self.slow_steps = 0
            return False
        self.slow_steps += 1
        if self.slow_steps < JUMPS_TO_REPROBE:
            return False
        self.slow_steps = 0
        self.since_probe = self.reprobe
        for n in self.options:
            if n != self.current:
                self.cost[n] = None
        return True

    def describe(self) -> str:
        costs = ", ".join(f"{n} thread(s) {c:.2f} s/step" for n, c in self.cost.items()
                          if c is not None)
        return f"{self.current} thread(s)" + (f" ({costs})" if costs else "")

    def restore(self) -> None:
        torch.set_num_threads(self.original)
