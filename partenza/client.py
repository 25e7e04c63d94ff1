"""The client side of the control socket, for the CLI, the TUI and the rescue shell.

Standard library only, and light to import: `partenza status` must answer in
a few milliseconds. `Client` is blocking; `AsyncClient` is the same protocol
on asyncio for the TUI.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

PROTOCOL = 1
MAX_MESSAGE = 1 << 24


class ClientError(Exception):
    """The orchestrator answered with an error, or could not be reached."""

    def __init__(
        self, message: str, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = problems or []

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotRunning(ClientError):
    """Nothing listens on the control socket."""


def _not_running(path: Path, exc: OSError) -> NotRunning:
    reason = exc.strerror or str(exc)
    return NotRunning(
        f"no orchestrator answers on {path}: {reason.lower()}",
        "is `partenza boot` running? PARTENZA_RUNTIME_DIR chooses another socket",
    )


def _unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok"):
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
    error = reply.get("error") or {}
    raise ClientError(
        error.get("message", "the request failed"),
        error.get("hint"),
        error.get("problems"),
    )


class Client:
    """A blocking connection to the control socket.

    Args:
        path: The socket.
        timeout: Seconds to wait for each reply; None waits for ever.
    """

    def __init__(self, path: Path | str, timeout: float | None = 30.0) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except OSError as exc:
            self._sock.close()
            raise _not_running(self.path, exc) from None
        self._buffer = b""
        self._next_id = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, op: str, params: dict[str, Any]) -> int:
        self._next_id += 1
        message = {"v": PROTOCOL, "id": self._next_id, "op": op, **params}
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        return self._next_id

    def _receive(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ClientError("the orchestrator did not answer in time") from None
            except OSError as exc:
                raise _not_running(self.path, exc) from None
            if not data:
                raise ClientError("the orchestrator closed the connection")
            self._buffer += data
            if len(self._buffer) > MAX_MESSAGE:
                raise ClientError("a reply was too long")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, op: str, **params: Any) -> dict[str, Any]:
        """Send one request and return its result.

        Raises:
            ClientError: the orchestrator refused it, or did not answer.
        """
        self._send(op, params)
        return _unwrap(self._receive())

    def stream(self, op: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Send a streaming request; yield its result, then each message after it."""
        self._send(op, params)
        yield _unwrap(self._receive())
        self._sock.settimeout(None)
        while True:
            try:
                message = self._receive()
            except ClientError as exc:
                if "closed the connection" in exc.message:
                    return
                raise
            if message.get("ok") is False:
                _unwrap(message)
            yield message


class AsyncClient:
    """The same protocol on asyncio streams."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._reader: Any = None
        self._writer: Any = None
        self._next_id = 0

    async def connect(self) -> AsyncClient:
        import asyncio

        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=MAX_MESSAGE
            )
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def _send(self, op: str, params: dict[str, Any]) -> None:
        self._next_id += 1
        message = {"v": PROTOCOL, "id": self._next_id, "op": op, **params}
        self._writer.write(json.dumps(message).encode() + b"\n")
        try:
            await self._writer.drain()
        except OSError as exc:
            raise _not_running(self.path, exc) from None

    async def _receive(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        if not line:
            raise ClientError("the orchestrator closed the connection")
        return json.loads(line)

    async def request(self, op: str, **params: Any) -> dict[str, Any]:
        await self._send(op, params)
        return _unwrap(await self._receive())

    async def stream(self, op: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        await self._send(op, params)
        yield _unwrap(await self._receive())
        while True:
            message = await self._receive()
            if message.get("ok") is False:
                _unwrap(message)
            yield message
