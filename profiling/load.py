"""What else the machine did while a pass of timings ran: other processes' CPU, load, frequency.

A slowdown that hits every run alike (a 2-thread measurement sharing a core with a busy process
runs ~2x slower, with a tight spread) cannot be seen in the samples; it can be seen in the CPU
time the rest of the machine used meanwhile. `psutil` reads it from `/proc/stat` (all CPUs:
busy = user + nice + system + irq + softirq + steal, where steal is time the hypervisor gave to
other guests) and this process's own CPU time; the difference, divided by the wall time, is how
many cores other processes kept busy. If that is more than the cores this measurement leaves free
(usable cores - its threads, with a small tolerance for the kernel's own work), the scheduler had
to share this process's cores: the pass is *contended*. Load average and CPU frequency (where the
machine exposes it; virtual machines often report a constant) are recorded as context.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psutil

# Cores other processes may use beyond the free ones before a pass counts as contended: the
# kernel, this process's own Python bookkeeping and short daemons stay well under it.
CONTENTION_TOLERANCE_CORES = 0.25


@dataclass(frozen=True, kw_only=True)
class PassLoad:
    """The machine during one pass of timed rounds."""

    wall_s: float
    other_cores: float
    free_cores: float
    load_1m: float | None
    cpu_mhz: float | None
    contended: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = f"other processes used {self.other_cores:.2f} of {self.free_cores:g} free core(s)"
        if self.load_1m is not None:
            text += f", load average {self.load_1m:.2f}"
        return text


class LoadProbe(Protocol):
    """Brackets a pass: `start()` before the first timed round, `stop(token)` after the last."""

    def start(self) -> Any: ...

    def stop(self, token: Any) -> PassLoad: ...


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(psutil.Process().cpu_affinity() or ()) or (os.cpu_count() or 1)
    except (AttributeError, psutil.Error):  # macOS has no affinity
        return os.cpu_count() or 1


def _busy_s(times: Any) -> float:
    return sum(float(getattr(times, name, 0.0))
               for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class SystemLoadProbe:
    """The real machine, through psutil; `threads` is how many cores the measurement uses."""

    def __init__(self, threads: int, *, tolerance_cores: float = CONTENTION_TOLERANCE_CORES):
        if threads < 1:
            raise ValueError("threads: must be >= 1")
        self.threads = threads
        self.tolerance_cores = tolerance_cores
        self._process = psutil.Process()

    def start(self) -> tuple[float, float, float]:
        own = self._process.cpu_times()
        return (time.perf_counter(), _busy_s(psutil.cpu_times()), own.user + own.system)

    def stop(self, token: tuple[float, float, float]) -> PassLoad:
        wall0, busy0, own0 = token
        own = self._process.cpu_times()
        wall = max(time.perf_counter() - wall0, 1e-9)
        other_s = max(_busy_s(psutil.cpu_times()) - busy0 - (own.user + own.system - own0), 0.0)
        free = float(max(usable_cores() - self.threads, 0))
        other = other_s / wall
        try:
            load: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        freq = psutil.cpu_freq()
        return PassLoad(wall_s=wall, other_cores=other, free_cores=free, load_1m=load,
                        cpu_mhz=float(freq.current) if freq is not None and freq.current else None,
                        contended=other > free + self.tolerance_cores)
