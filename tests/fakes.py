"""A stand-in for `ProcessManager`: the orchestrator's state machine, no processes.

Each fake child has real pipes for stdout and stderr (so the log readers work
unchanged) and an exit future the test or a behaviour completes. Signals are
recorded and, by default, end the child as a real one would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from partenza.process import ExitStatus

Behaviour = Callable[["FakeChild"], None]


class _FakePopen:
    def __init__(self) -> None:
        out_r, self.out_w = os.pipe()
        err_r, self.err_w = os.pipe()
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        self.returncode: int | None = None


class FakeChild:
    """One pretend process."""

    def __init__(
        self, pid: int, module: str, argv: Sequence[str], token: str | None
    ) -> None:
        self.pid = self.pgid = pid
        self.module = module
        self.argv = list(argv)
        self.token = token
        self.popen = _FakePopen()
        self.started = time.monotonic()
        self.spawned_at = time.monotonic()
        self.exited: asyncio.Future[ExitStatus] = (
            asyncio.get_running_loop().create_future()
        )
        self.status: ExitStatus | None = None
        self.signals: list[tuple[float, int]] = []
        self.ignores: set[int] = set()

    @property
    def running(self) -> bool:
        return self.status is None

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self.exited)

    def write(self, text: str, stream: str = "out") -> None:
        fd = self.popen.out_w if stream == "out" else self.popen.err_w
        os.write(fd, text.encode())

    def exit(self, code: int | None = 0, sig: int | None = None) -> None:
        if self.exited.done():
            return
        for fd in (self.popen.out_w, self.popen.err_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.status = ExitStatus(code, sig)
        self.exited.set_result(self.status)


def runs(child: FakeChild) -> None:
    """Keep running until signalled."""


def crashes(code: int = 1) -> Behaviour:
    """Exit with `code` right after starting."""

    def behaviour(child: FakeChild) -> None:
        asyncio.get_running_loop().call_soon(child.exit, code)

    return behaviour


def ignores_sigterm(child: FakeChild) -> None:
    child.ignores.add(signal.SIGTERM)


class FakeProcesses:
    """Implements what the orchestrator asks of `ProcessManager`."""

    def __init__(self, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours = behaviours or {}
        self.children: list[FakeChild] = []
        self.missing: set[str] = set()
        self._pids = itertools.count(10000)
        self.orphans_reaped = 0
        self.subreaper = True

    def install(self) -> None:
        pass

    def uninstall(self) -> None:
        pass

    def reap(self) -> None:
        pass

    def spawn(self, argv: Sequence[str], *, env: dict[str, str], **_: Any) -> FakeChild:
        module = env.get("PARTENZA_MODULE", "?")
        if module in self.missing:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        child = FakeChild(next(self._pids), module, argv, env.get("PARTENZA_TOKEN"))
        self.children.append(child)
        self.behaviours.get(module, runs)(child)
        return child

    def signal(self, child: FakeChild, sig: int) -> int:
        child.signals.append((time.monotonic(), sig))
        if sig == signal.SIGKILL or sig not in child.ignores:
            code, number = (None, sig)
            asyncio.get_running_loop().call_soon(child.exit, code, number)
        return 0

    def alive(self, child: FakeChild) -> bool:
        return child.running

    def leftovers(self) -> list[int]:
        return []

    def watch(self, pid: int) -> None:
        return None

    def kill(self, pid: int, sig: int) -> None:
        pass

    def of(self, module: str) -> list[FakeChild]:
        """Every child started for `module`, oldest first."""
        return [child for child in self.children if child.module == module]
