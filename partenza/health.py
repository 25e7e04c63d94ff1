"""Readiness checks, health probes and configuration checks.

A readiness check is made before the module's process is spawned and armed at
once, so a log line, a file or a notify datagram that appears in the first
millisecond is not missed. `wait()` returns a short description of what
succeeded (`tcp 127.0.0.1:8080 answered`); the caller bounds it with the
check's timeout and, when that runs out, reports `last_error` as the cause.

A health probe (`probe`) runs once a module is ready, one at a time, each
bounded by its timeout: a command still running then is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence

from partenza.listeners import listener_belongs, listening, wait_for_listener
from partenza.logs import ModuleLog, PipeReader
from partenza.plan import HealthSpec, ReadySpec
from partenza.process import Child, signal_group
from partenza.units import format_duration

Spawn = Callable[..., Child]
FAST_POLL = 0.01
FAST_FOR = 1.0
"""A polling readiness check tries every FAST_POLL seconds for FAST_FOR seconds,
then every `interval`."""


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
        members: Callable[[], Iterable[int]] | None = None,
        module: str = "the module",
    ) -> None:
        self.spec = spec
        self.members = members
        """The module's processes, to tell its listener from another's."""
        self.module = module
        self.log = log
        self.spawn = spawn
        self.env = env
        self.cwd = cwd
        self.last_error = "no answer yet"
        self._matched: asyncio.Future[str] | None = None
        self._probe: Child | None = None
        self._foreign = False
        """Whether the port's listener was seen to be another process's."""
        self.said: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolved by the orchestrator when the module says it is ready, over
        the contract (`handshake`) or with `READY=1` (`notify`)."""

    def arm(self) -> None:
        """Start listening where a check listens (the module's output)."""
        if self.spec.kind == "log":
            self._matched = self.log.matcher(self.spec.pattern, self.spec.stream)
            self.last_error = "no matching line yet"
        elif self.spec.kind == "handshake":
            self.last_error = "no hello and ready on the contract socket yet"
        elif self.spec.kind == "notify":
            self.last_error = "no READY=1 on NOTIFY_SOCKET yet"

    async def wait(self) -> str:
        """Return once the module is ready, with what showed it."""
        kind = self.spec.kind
        if kind == "started":
            return "process started"
        if kind == "log":
            assert self._matched is not None
            line = await self._matched
            return f"log line matched: {line[:60]}"
        if kind in ("handshake", "notify"):
            return await self.said
        if kind == "tcp":
            if _local(self.spec.host):
                return await self._poll(self._tcp, self._until_listener)
            return await self._poll(self._tcp)
        if kind == "exec":
            return await self._poll(self._exec)
        if kind == "file":
            return await self._poll(self._file)
        raise ValueError(f"unknown ready kind {kind!r}")

    async def _poll(
        self,
        attempt: Callable[[], Awaitable[str | None]],
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> str:
        # Retry often during the first second, then every `interval`: most
        # modules are ready a few milliseconds after their first refusal.
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            result = await attempt()
            if result:
                return result
            soon = loop.time() - started < FAST_FOR
            await pause(
                min(FAST_POLL, self.spec.interval) if soon else self.spec.interval
            )

    async def _until_listener(self, period: float) -> None:
        """Wait `period`, or less once something listens on the port; a
        listener of another process does not cut the wait short."""
        if self._foreign:
            await asyncio.sleep(period)
        else:
            await wait_for_listener(self.spec.port, period)

    async def _tcp(self) -> str | None:
        host, port = self.spec.host, self.spec.port
        if _local(host) and listening(port) is False:
            # Nobody to connect to: spare the connection attempt.
            self.last_error = "nothing listens on the port"
            return None
        try:
            await asyncio.wait_for(
                _connect(host, port), timeout=max(1.0, self.spec.interval)
            )
        except (OSError, TimeoutError) as exc:
            self.last_error = _socket_error(exc)
            return None
        # A leftover process on the port must not pass for the module.
        if (
            self.members is not None
            and _local(host)
            and listener_belongs(port, self.members()) is False
        ):
            self.last_error = (
                f"{host}:{port} answers, but from no process of {self.module}"
            )
            self._foreign = True
            return None
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
            status = await probe.wait()
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
        if not self.said.done():
            self.said.cancel()
        if self._probe is not None and self._probe.running:
            signal_group(self._probe.pgid, signal.SIGKILL)


async def _connect(host: str, port: int) -> None:
    """Open a TCP connection and close it again."""
    if not _local(host):
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return
    # A bare socket: a stream's transport and protocol cost more than the
    # connection itself on loopback.
    addresses = {"localhost": ["127.0.0.1", "::1"], "0.0.0.0": ["127.0.0.1"]}
    addresses["::"] = ["::1"]
    refusal: OSError | None = None
    for address in addresses.get(host, [host]):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as sock:
            try:
                await asyncio.get_running_loop().sock_connect(sock, (address, port))
                return
            except OSError as exc:
                refusal = refusal or exc
    assert refusal is not None
    raise refusal


def _local(host: str) -> bool:
    return host in ("localhost", "::1", "0.0.0.0", "::") or host.startswith("127.")


def _socket_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def probe(
    spec: HealthSpec, spawn: Spawn, env: dict[str, str], cwd: str
) -> str | None:
    """Run one health probe: None when it passed, else what went wrong."""
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.kind == "exec":
                return await _probe_exec(spec, spawn, env, cwd)
            if spec.kind == "tcp":
                with await _connect(spec.host, spec.port):
                    return None
            return await _probe_http(spec)
    except TimeoutError:
        return f"no answer within {format_duration(spec.timeout)}"
    except OSError as exc:
        return _socket_error(exc)


async def _probe_exec(
    spec: HealthSpec, spawn: Spawn, env: dict[str, str], cwd: str
) -> str | None:
    try:
        child = spawn(spec.command, env=env, cwd=cwd, capture=False)
    except OSError as exc:
        return f"cannot run {spec.command[0]}: {exc.strerror}"
    try:
        status = await child.wait()
    finally:
        if child.running:
            signal_group(child.pgid, signal.SIGKILL)
    return None if status.success else f"{spec.command[0]} {status.describe()}"


async def _probe_http(spec: HealthSpec) -> str | None:
    parts = urllib.parse.urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "User-Agent: partenza\r\nConnection: close\r\n\r\n"
    ).encode()
    # A plain socket, closed before this returns: a probe leaves nothing open.
    with await _connect(host, port) as sock:
        await loop.sock_sendall(sock, request)
        answer = b""
        while b"\n" not in answer and len(answer) < 1024:
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                break
            answer += chunk
    line = answer.split(b"\n", 1)[0]
    words = line.decode("latin-1").split()
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        return f"not an HTTP answer: {line[:40]!r}"
    status = int(words[1])
    return None if spec.passes(status) else f"HTTP {status}"


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking socket; the caller closes it."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Collector:
    """Keeps a command's output lines, for a configuration check."""

    def __init__(self, name: str, limit: int = 200) -> None:
        self.name = name
        self.lines: list[str] = []
        self.limit = limit
        self._partial: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes) -> None:
        pieces = (self._partial.get(stream, b"") + data).split(b"\n")
        self._partial[stream] = pieces.pop()
        for piece in pieces:
            self._keep(piece)

    def end(self, stream: str) -> None:
        rest = self._partial.pop(stream, b"")
        if rest:
            self._keep(rest)

    def _keep(self, raw: bytes) -> None:
        if len(self.lines) < self.limit:
            self.lines.append(raw.decode("utf-8", "backslashreplace").rstrip("\r"))


async def run_check(
    spawn: Spawn, command: Sequence[str], env: dict[str, str], cwd: str, timeout: float
) -> tuple[bool, str, list[str]]:
    """Run a configuration check: passed, how it ended, and its output."""
    try:
        child = spawn(command, env=env, cwd=cwd, capture=True)
    except OSError as exc:
        return False, f"cannot run {command[0]}: {exc.strerror}", []
    collector = _Collector(command[0])
    assert child.popen.stdout is not None and child.popen.stderr is not None
    readers = [
        PipeReader(child.popen.stdout, collector, "out"),  # type: ignore[arg-type]
        PipeReader(child.popen.stderr, collector, "err"),  # type: ignore[arg-type]
    ]
    try:
        status = await asyncio.wait_for(child.wait(), timeout)
        ended = status.describe()
        passed = status.success
    except TimeoutError:
        signal_group(child.pgid, signal.SIGKILL)
        await child.wait()
        ended, passed = f"killed after {format_duration(timeout)}", False
    await asyncio.wait([reader.closed for reader in readers], timeout=1.0)
    for reader in readers:
        reader.close()
    return passed, ended, collector.lines
