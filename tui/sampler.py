"""CPU and memory of each module, read with psutil off the UI's loop.

The orchestrator sends pids, not figures; `Sampler.sample` reads `/proc` once
for every process, adds up each module's whole process tree (a module may be
a shell and its children), and turns CPU seconds into a percentage of one core
since the previous call. It is called from a worker thread, one call at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

Usage = dict[str, tuple[float | None, int]]
"""Per module name: CPU percent (None on the first look) and resident bytes."""
SampleFunction = Callable[[dict[str, int]], Usage]


class Sampler:
    """Turns `{module: pid}` into `{module: (cpu %, rss)}`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[int, float, float]] = {}

    def __call__(self, pids: dict[str, int]) -> Usage:
        return self.sample(pids)

    def sample(self, pids: dict[str, int]) -> Usage:
        with self._lock:
            return self._sample(pids)

    def _sample(self, pids: dict[str, int]) -> Usage:
        # Read every process once: its parent, CPU seconds and memory.
        now = time.monotonic()
        facts: dict[int, tuple[float, int]] = {}
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid", "cpu_times", "memory_info"]):
            info = proc.info
            times, memory = info.get("cpu_times"), info.get("memory_info")
            if times is None or memory is None:
                continue
            facts[proc.pid] = (times.user + times.system, memory.rss)
            children.setdefault(info.get("ppid") or 0, []).append(proc.pid)

        # Add up each module's tree and compare with the previous look.
        usage: Usage = {}
        last: dict[str, tuple[int, float, float]] = {}
        for name, pid in pids.items():
            if pid not in facts:
                continue
            cpu_seconds, rss = 0.0, 0
            stack, seen = [pid], set()
            while stack:
                current = stack.pop()
                if current in seen or current not in facts:
                    continue
                seen.add(current)
                seconds, resident = facts[current]
                cpu_seconds += seconds
                rss += resident
                stack.extend(children.get(current, ()))
            percent = None
            previous = self._last.get(name)
            if previous is not None and previous[0] == pid and now > previous[2]:
                delta = max(0.0, cpu_seconds - previous[1])
                percent = 100.0 * delta / (now - previous[2])
            usage[name] = (percent, rss)
            last[name] = (pid, cpu_seconds, now)
        self._last = last
        return usage
