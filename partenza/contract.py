"""The module contract: the handshake on `PARTENZA_SOCKET`, and systemd's notify
protocol on `NOTIFY_SOCKET`.

The contract socket is a Unix stream socket carrying JSON, one object a line,
as `docs/contract.md` describes. A module connects, says hello with its name,
the token of its current start, its API version and its capabilities, and is
welcomed or refused; after a welcome it may say `ready`, send `heartbeat`s and
`status` text, and answer `validate` requests.

Each start of a module that speaks systemd's notify protocol gets a datagram
socket of its own, bound before the process is spawned, so a `READY=1` sent in
its first millisecond is already queued. Which socket a datagram arrives on
says which module sent it: no sender lookup can race a sender that has already
exited, as `systemd-notify` does at once.

Nothing a module sends can harm the orchestrator: messages are bounded,
malformed ones are logged and dropped, a client that says nothing is
disconnected, and each notify socket is read a bounded number of datagrams at
a time, so a flood from one module never starves the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ORCHESTRATOR_API = (1, 0)
"""The contract version this orchestrator speaks."""
HELLO_TIMEOUT = 5.0
MAX_MESSAGE = 64 * 1024
MAX_BAD_MESSAGES = 20
"""Malformed messages tolerated on one connection before it is closed."""
NOTIFY_BATCH = 64
"""Datagrams read from one notify socket before the loop serves others."""
NOTIFY_MAX = 4096
MAX_FDS = 16
UNIX_PATH_MAX = 107


def api_version() -> str:
    return f"{ORCHESTRATOR_API[0]}.{ORCHESTRATOR_API[1]}"


def api_fits(version: str, compatibility: str) -> str | None:
    """Why a module of `version` and `compatibility` cannot be welcomed, or None.

    Same major only. A module of a newer minor must be backward compatible
    (it works with older orchestrators); one of an older minor must be forward
    compatible (it works with newer ones).
    """
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not match:
        return f"API version {version[:20]!r} is not MAJOR.MINOR"
    major, minor = int(match.group(1)), int(match.group(2))
    ours = api_version()
    if major != ORCHESTRATOR_API[0]:
        return f"module speaks API {version}, this orchestrator {ours}: another major"
    if minor > ORCHESTRATOR_API[1] and compatibility not in ("backward", "both"):
        return (
            f"module speaks API {version}, newer than this orchestrator's {ours}, "
            f"and is not backward compatible ({compatibility})"
        )
    if minor < ORCHESTRATOR_API[1] and compatibility not in ("forward", "both"):
        return (
            f"module speaks API {version}, older than this orchestrator's {ours}, "
            f"and is not forward compatible ({compatibility})"
        )
    return None


class Session:
    """A welcomed connection of one module's current start."""

    def __init__(self, module: str, writer: asyncio.StreamWriter) -> None:
        self.module = module
        self.writer = writer
        self.validates = False
        self.role: str | None = None
        """What a built-in sidecar said it is: `verifier`, `metrics`, `logger`."""
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0

    async def send(self, message: dict[str, Any]) -> None:
        self.post(message)
        await self.writer.drain()

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message without waiting for it to be read."""
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")

    @property
    def backlog(self) -> int:
        """Bytes written to the module that it has not read yet."""
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport else 0

    async def validate(self, timeout: float) -> dict[str, Any]:
        """Ask the module to check its configuration; its answer, or a failure."""
        self._next += 1
        number = self._next
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[number] = future
        try:
            await self.send({"type": "validate", "id": number})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return {"ok": False, "problems": [f"no answer within {timeout:g}s"]}
        except ConnectionError:
            return {"ok": False, "problems": ["the module hung up"]}
        finally:
            self._waiting.pop(number, None)

    def answered(self, message: dict[str, Any]) -> None:
        future = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(message)

    def close(self) -> None:
        self.writer.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("closed"))


class Listener:
    """What the contract tells the orchestrator; implemented by `Orchestrator`."""

    def contract_hello(
        self, hello: dict[str, Any], session: Session
    ) -> str | dict[str, Any]:
        """Check a hello: the reason to refuse it, or the welcome to send."""
        raise NotImplementedError

    def contract_message(self, session: Session, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def contract_closed(self, session: Session) -> None:
        raise NotImplementedError

    def contract_refused(self, module: str | None, reason: str) -> None:
        raise NotImplementedError


class ContractServer:
    """Serves `PARTENZA_SOCKET` for every module."""

    def __init__(self, listener: Listener, path: Path) -> None:
        self.listener = listener
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        check_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.path), limit=MAX_MESSAGE
        )
        # Modules may run as other users; their token is what admits them.
        os.chmod(self.path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session: Session | None = None
        try:
            session = await self._handshake(reader, writer)
            if session is not None:
                await self._serve(reader, session)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if session is not None:
                self.listener.contract_closed(session)
                session.close()
            else:
                writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Session | None:
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT)
        except TimeoutError:
            self.listener.contract_refused(
                None, f"a client said nothing for {HELLO_TIMEOUT:g}s"
            )
            return None
        except ValueError:
            self.listener.contract_refused(None, "a hello longer than 64 KiB")
            return None
        if not line:
            return None
        hello = _parse(line)
        if hello is None or hello.get("type") != "hello":
            reason = "the first message was not a hello"
            await _refuse(writer, reason)
            self.listener.contract_refused(None, reason)
            return None
        module = hello.get("module") if isinstance(hello.get("module"), str) else None
        session = Session(module or "?", writer)
        session.validates = bool(hello.get("validate"))
        role = hello.get("role")
        session.role = role if isinstance(role, str) else None
        answer = self.listener.contract_hello(hello, session)
        if isinstance(answer, str):
            await _refuse(writer, answer)
            self.listener.contract_refused(module, answer)
            return None
        await session.send(answer)
        return session

    async def _serve(self, reader: asyncio.StreamReader, session: Session) -> None:
        bad = 0
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                log.warning(
                    "%s: contract message over 64 KiB; hanging up", session.module
                )
                return
            if not line:
                return
            message = _parse(line)
            if message is None or not isinstance(message.get("type"), str):
                bad += 1
                log.warning("%s: dropped a malformed contract message", session.module)
                if bad >= MAX_BAD_MESSAGES:
                    log.warning(
                        "%s: too many malformed messages; hanging up", session.module
                    )
                    return
                continue
            if message["type"] == "validated":
                session.answered(message)
                continue
            self.listener.contract_message(session, message)


async def _refuse(writer: asyncio.StreamWriter, reason: str) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(json.dumps({"type": "refused", "reason": reason}).encode() + b"\n")
        await writer.drain()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def check_path(path: Path) -> None:
    """Raise ValueError when `path` is too long to bind a Unix socket to."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(
            f"{path} is longer than the {UNIX_PATH_MAX} bytes a Unix socket path "
            "may have; set PARTENZA_RUNTIME_DIR to a shorter folder"
        )


def notify_path(folder: Path, module: str, token: str) -> Path:
    """A short, unguessable socket path for one start of one module."""
    digest = hashlib.sha256(f"{module}\0{token}".encode()).hexdigest()[:16]
    return folder / f"{digest}.sock"


def parse_notify(data: bytes) -> dict[str, str]:
    """`READY=1\\nSTATUS=Up` as a dict; lines without `=` are dropped."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifySocket:
    """One start's `NOTIFY_SOCKET`: a datagram socket read from the loop."""

    def __init__(
        self, path: Path, on_message: Callable[[dict[str, str]], None]
    ) -> None:
        check_path(path)
        self.path = path
        self._on_message = on_message
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(str(path))
        os.chmod(path, 0o666)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._read)
        self.dropped = 0

    def _read(self) -> None:
        for _ in range(NOTIFY_BATCH):
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, NOTIFY_MAX, MAX_FDS)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("notify socket %s: %s", self.path.name, exc)
                return
            # Descriptors are never kept: closing the one that comes with
            # BARRIER=1 is the answer sd_notify_barrier() waits for.
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            fields = parse_notify(data)
            if not fields:
                self.dropped += 1
                continue
            self._on_message(fields)

    def close(self) -> None:
        """Take what is still queued, then close."""
        self._read()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
