"""Readiness checks: when a started module counts as ready.

A check is made before the module's process is spawned and armed at once, so
a log line or a file that appears in the first millisecond is not missed.
`wait()` returns a short description of what succeeded (`tcp 127.0.0.1:8080
answered`); the caller bounds it with the check's timeout and, when that runs
out, reports `last_error` as the cause.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from partenza.logs import ModuleLog
from partenza.plan import ReadySpec
from partenza.process import Child, signal_group

Spawn = Callable[..., Child]


class ReadyCheck:
    """One module's readiness check for one start."""

    def __init__(
        self,
        spec: ReadySpec,
        *,
        log: ModuleLog,
        spawn: Spawn,
        env: dict[str, str],
        cwd: str,
    ) -> None:
        self.spec = spec
        self.log = log
        self.spawn = spawn
        self.env = env
        self.cwd = cwd
        self.last_error = "no answer yet"
        self._matched: asyncio.Future[str] | None = None
        self._probe: Child | None = None

    def arm(self) -> None:
        """Start listening where a check listens (the module's output)."""
        if self.spec.kind == "log":
            self._matched = self.log.matcher(self.spec.pattern, self.spec.stream)
            self.last_error = "no matching line yet"

    async def wait(self) -> str:
        """Return once the module is ready, with what showed it."""
        kind = self.spec.kind
        if kind == "started":
            return "process started"
        if kind == "log":
            assert self._matched is not None
            line = await self._matched
            return f"log line matched: {line[:60]}"
        if kind == "tcp":
            return await self._poll(self._tcp)
        if kind == "exec":
            return await self._poll(self._exec)
        if kind == "file":
            return await self._poll(self._file)
        raise ValueError(f"unknown ready kind {kind!r}")

    async def _poll(self, attempt: Callable[[], object]) -> str:
        while True:
            result = await attempt()  # type: ignore[misc]
            if result:
                return str(result)
            await asyncio.sleep(self.spec.interval)

    async def _tcp(self) -> str | None:
        host, port = self.spec.host, self.spec.port
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port),
                timeout=max(1.0, self.spec.interval),
            )
        except (OSError, TimeoutError) as exc:
            self.last_error = _socket_error(exc)
            return None
        writer.close()
        return f"tcp {host}:{port} answered"

    async def _file(self) -> str | None:
        if os.path.exists(self.spec.path):
            return f"file {self.spec.path} appeared"
        self.last_error = f"{self.spec.path} does not exist yet"
        return None

    async def _exec(self) -> str | None:
        command = self.spec.command
        try:
            probe = self.spawn(command, env=self.env, cwd=self.cwd, capture=False)
        except OSError as exc:
            self.last_error = f"cannot run {command[0]}: {exc.strerror}"
            return None
        self._probe = probe
        try:
            status = await probe.exited
        finally:
            if probe.running:
                signal_group(probe.pgid, signal.SIGKILL)
            self._probe = None
        if status.success:
            return f"{' '.join(command)[:60]} exited 0"
        self.last_error = f"check {status.describe()}"
        return None

    def close(self) -> None:
        """Stop listening and kill a check command that is still running."""
        if self._matched is not None and not self._matched.done():
            self._matched.cancel()
        if self._probe is not None and self._probe.running:
            signal_group(self._probe.pgid, signal.SIGKILL)


def _socket_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
