"""The control socket: JSON requests, one object a line, and the event stream.

Every request is `{"v": 1, "id": ..., "op": ..., ...params}`; every reply
carries the same `v` and `id` and either `"ok": true, "result": {...}` or
`"ok": false, "error": {"message": ..., "hint": ...}`. Streaming requests
(`subscribe`, `logs` with `follow`) answer once, then send messages carrying
`event` or `log` on the same connection until the client hangs up. The
protocol is written down for other tools in `docs/protocol.md`.

The socket is created mode 0600 in a folder of mode 0711, and a connecting
peer's uid (SO_PEERCRED) must be root's or the orchestrator's own.

What a client can hold is bounded: at most MAX_CONNECTIONS connections are
served at once; a connection that sends no whole request, or reads none of its
replies, for the idle time is closed; a streaming client has at most
STREAM_BACKLOG bytes waiting for it. Out of open files, accepting pauses
instead of failing in a loop, and recurring warnings are logged once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from partenza import __version__
from partenza.errors import PartenzaError, PlanError, RateLimit, did_you_mean
from partenza.orchestrator import (
    BLOCKED,
    FAILED,
    INACTIVE,
    READY,
    STOPPED,
    Orchestrator,
    Unit,
    diff_plans,
)

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_REQUEST = 1 << 20
MAX_DEPTH = 32
"""Levels of arrays and objects one request may nest."""
ACTIONS = ("exit", "poweroff", "reboot", "halt")
"""What a shutdown ends with; outside PID 1 all three end the orchestrator."""
DISCARD_FOR = 2.0
"""Seconds an oversized request is read and thrown away before hanging up."""
MAX_CONNECTIONS = 256
"""Connections served at once; one more gets an error line and is closed."""
IDLE_FOR = 30.0
"""Seconds a connection may go without sending a whole request, or without
reading its replies, before it is closed. `PARTENZA_CONTROL_IDLE` sets another."""
IDLE_VARIABLE = "PARTENZA_CONTROL_IDLE"
STREAM_BACKLOG = 1 << 20
"""Bytes of messages that may wait for one streaming client, beyond its first
reply: a subscriber past it is cut off as too slow, a log follower loses lines."""
FLUSH_FOR = 5.0
"""Seconds a closed connection has to take what was written to it before it is
dropped, and what was written with it."""
ACCEPT_PAUSE = 1.0
"""Seconds accepting stops when it fails, as it does out of open files."""
LISTEN_BACKLOG = 100
WARN_EVERY = 60.0
"""Seconds between two warnings of one recurring kind."""

Params = dict[str, Any]


class RequestError(PartenzaError):
    """A request that cannot be served; sent back as the error of the reply."""

    def __init__(
        self, message: str, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class _Stuck(Exception):
    """A client that has read none of its replies for the idle time."""


class _Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pid: int,
        idle: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = pid
        """The peer's pid, as the kernel gave it on accept."""
        self.idle = idle

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message; raises _Stuck when the client reads nothing for
        the idle time while replies pile up for it."""
        self.writer.write(_encode(message))
        try:
            async with asyncio.timeout(self.idle):
                await self.writer.drain()
        except TimeoutError:
            raise _Stuck from None


class _Stream:
    """The messages of one streaming request, written straight to the client.

    Nothing waits for the client but what its transport holds, and of that
    what came after the first reply may not pass STREAM_BACKLOG bytes.
    """

    def __init__(self, conn: _Connection) -> None:
        self.transport = conn.writer.transport
        self.written = 0
        self.first = 0
        """Bytes of the first reply (and what came with it), exempt from the bound."""
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def open(self, *messages: dict[str, Any]) -> None:
        """Write the reply and what goes with it, whatever their size."""
        for message in messages:
            data = _encode(message)
            self.transport.write(data)
            self.written += len(data)
        self.first = self.written

    @property
    def backlog(self) -> int:
        """Bytes written after the first reply that the client has not taken."""
        waiting = self.transport.get_write_buffer_size()
        return min(waiting, self.written - self.first)

    def offer(self, data: bytes) -> bool:
        """Write `data` unless that takes the backlog past the bound; False then."""
        if self.ended.done() or self.transport.is_closing():
            return True  # The stream is over: nothing more is written.
        if self.backlog + len(data) > STREAM_BACKLOG:
            return False
        self.transport.write(data)
        self.written += len(data)
        return True

    def end(self, last: dict[str, Any]) -> None:
        """Write `last` and end the stream; the connection is closed after it."""
        if self.ended.done():
            return
        if not self.transport.is_closing():
            self.transport.write(_encode(last))
        self.ended.set_result(None)


class ControlServer:
    """Serves the control socket for one orchestrator."""

    def __init__(
        self, orchestrator: Orchestrator, path: Path, idle: float | None = None
    ) -> None:
        self.orchestrator = orchestrator
        self.path = path
        self.idle = idle if idle is not None else _idle_from_environment()
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._closing = False
        self._clients: set[asyncio.Task[None]] = set()
        self._warnings: dict[str, RateLimit] = {}
        self._ops: dict[str, Callable[[Params, _Connection, Any], Awaitable[Any]]] = {
            "hello": self._hello,
            "status": self._status,
            "why": self._why,
            "plan": self._plan,
            "logs": self._logs,
            "start": self._start,
            "stop": self._stop,
            "restart": self._restart,
            "shutdown": self._shutdown,
            "validate": self._validate,
            "reload": self._reload,
            "continue": self._continue,
            "note": self._note,
            "subscribe": self._subscribe,
        }

    async def start(self) -> None:
        """Bind the socket.

        Raises:
            PartenzaError: another orchestrator answers on it, or it cannot be made.
        """
        folder = self.path.parent
        try:
            # Traversable but not listable: modules that run as other users
            # reach the contract socket in it; the control socket is 0600.
            # Only the last folder is made: a mistyped path makes no tree.
            folder.mkdir(exist_ok=True)
            folder.chmod(0o711)
        except OSError as exc:
            why = exc.strerror
            if isinstance(exc, FileNotFoundError):
                why = f"{folder.parent} does not exist"
            raise PartenzaError(
                f"cannot create the socket's folder {folder}: {why}",
                "choose another with --socket or PARTENZA_RUNTIME_DIR",
            ) from None
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise PartenzaError(
                    f"another orchestrator is running on {self.path}",
                    "stop it with `partenza shutdown`, or set PARTENZA_RUNTIME_DIR",
                )
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
            listener.listen(LISTEN_BACKLOG)
        except OSError as exc:
            listener.close()
            raise PartenzaError(
                f"cannot listen on {self.path}: {exc.strerror}"
            ) from None
        finally:
            os.umask(old_umask)
        listener.setblocking(False)
        os.chmod(self.path, 0o600)
        self._listener = listener
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_all())

    async def close(self) -> None:
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(self._clients, timeout=1.0)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """Log a recurring warning at most once every WARN_EVERY seconds,
        saying how many like it were left out in between."""
        limit = self._warnings.setdefault(kind, RateLimit(WARN_EVERY, 1))
        left_out = limit.allow()
        if left_out is None:
            return
        if left_out:
            message += f" ({left_out} more like it since the last warning)"
        log.warning(message, *args)

    async def _accept_all(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                # Out of open files (EMFILE) the next accept fails at once
                # too: wait, and leave the clients in the listen backlog.
                self._warn(
                    "accept",
                    "control socket: accepting paused for %g s: %s",
                    ACCEPT_PAUSE,
                    exc.strerror or exc,
                )
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            try:
                self._admit(sock)
            except Exception:
                sock.close()
                log.error(
                    "control socket: a new connection was dropped: internal error",
                    exc_info=True,
                )

    def _admit(self, sock: socket.socket) -> None:
        """Serve a new connection, or refuse it."""
        pid = self._allowed(sock)
        if pid is None:
            sock.close()
            return
        if len(self._clients) >= MAX_CONNECTIONS:
            self._warn(
                "full",
                "control socket: refused a connection of pid %d: %d are open, "
                "the most served at once",
                pid,
                MAX_CONNECTIONS,
            )
            _refuse(
                sock,
                _error(
                    None,
                    f"too many connections: {MAX_CONNECTIONS} are open",
                    "try again once some have closed",
                ),
            )
            return
        task = asyncio.get_running_loop().create_task(self._connection(sock, pid))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _connection(self, sock: socket.socket, pid: int) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(
                sock=sock, limit=MAX_REQUEST
            )
            await self._serve(_Connection(reader, writer, pid, self.idle))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except _Stuck:
            log.warning(
                "control socket: connection of pid %d closed: it read none of its "
                "replies for %g s",
                pid,
                self.idle,
            )
        except asyncio.CancelledError:
            # Closing the server cancels its connections; ending quietly here
            # keeps Python 3.11's streams from reporting the cancellation.
            pass
        except Exception:
            log.error(
                "control socket: connection of pid %d ended: internal error",
                pid,
                exc_info=True,
            )
        finally:
            if writer is None:
                sock.close()
            else:
                # Closing, the server waits a second for its connections.
                await _hang_up(writer, 0.5 if self._closing else FLUSH_FOR)

    def _allowed(self, sock: socket.socket) -> int | None:
        """The peer's pid when it may use the socket, else None."""
        try:
            creds = sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
        except OSError:
            return None
        pid, uid, _ = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return pid
        self._warn("uid", "control socket: refused pid %d of uid %d", pid, uid)
        return None

    async def _serve(self, conn: _Connection) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle):
                    line = await conn.reader.readline()
            except TimeoutError:
                await conn.send(
                    _error(
                        None,
                        f"connection closed: no whole request in {self.idle:g} s",
                        "send each request as one line, newline included",
                    )
                )
                return
            except ValueError:
                await conn.send(
                    _error(None, "request too long", f"at most {MAX_REQUEST} bytes")
                )
                await _discard_input(conn.reader)
                return
            if not line:
                return
            if not line.strip():
                continue
            request_id: Any = None
            op: Any = None
            try:
                request = _parse(line)
                request_id = request.get("id")
                version = request.get("v")
                # Only the integer: JSON's true and 1.0 are not versions.
                if type(version) is not int or version != PROTOCOL:
                    raise RequestError(
                        f"protocol version {version!r} is not spoken here",
                        f'send "v": {PROTOCOL}',
                    )
                op = request.get("op")
                handler = self._ops.get(op) if isinstance(op, str) else None
                if handler is None:
                    guess = did_you_mean(str(op), self._ops)
                    raise RequestError(
                        f"unknown op {op!r}",
                        f"did you mean {guess!r}?"
                        if guess
                        else "ops: " + ", ".join(self._ops),
                    )
                result = await handler(request, conn, request_id)
            except PartenzaError as exc:
                reply = _error(request_id, exc.message, exc.hint)
                problems = getattr(exc, "problems", None)
                if problems:
                    reply["error"]["problems"] = [str(p) for p in problems]
                await conn.send(reply)
                continue
            except (ConnectionError, _Stuck):
                raise
            except Exception as exc:
                log.error(
                    "control socket: %s request of pid %d failed: internal error: %r",
                    op,
                    conn.pid,
                    exc,
                    exc_info=True,
                )
                await conn.send(
                    _error(
                        request_id,
                        f"internal error: {exc!r}",
                        "the orchestrator's log has the details",
                    )
                )
                continue
            if result is _STREAMED:
                return
            await conn.send(
                {"v": PROTOCOL, "id": request_id, "ok": True, "result": result}
            )

    # The requests.

    def _unit(self, params: Params) -> Unit:
        name = params.get("module")
        if not isinstance(name, str):
            raise RequestError(
                "this request needs a module name", 'send "module": NAME'
            )
        try:
            return self.orchestrator.unit(name)
        except KeyError:
            guess = did_you_mean(name, self.orchestrator.units)
            hint = (
                f"did you mean {guess!r}?" if guess else "`partenza status` lists them"
            )
            raise RequestError(f"unknown module {name!r}", hint) from None

    async def _hello(self, params: Params, conn: _Connection, rid: Any) -> Any:
        return {"protocol": PROTOCOL, "version": __version__, "pid": os.getpid()}

    async def _status(self, params: Params, conn: _Connection, rid: Any) -> Any:
        orchestrator = self.orchestrator
        if params.get("module") is not None:
            unit = self._unit(params)
            return {
                "system": orchestrator.system_record(),
                "module": orchestrator.record(unit),
            }
        return orchestrator.snapshot()

    async def _why(self, params: Params, conn: _Connection, rid: Any) -> Any:
        unit = self._unit(params)
        links = self.orchestrator.why_links(unit.name)
        return {
            "module": unit.name,
            "chain": self.orchestrator.why(unit.name),
            "links": links,
            "stays_down": self.orchestrator.stays_down(unit.name),
        }

    async def _plan(self, params: Params, conn: _Connection, rid: Any) -> Any:
        return self.orchestrator.plan.to_json()

    async def _logs(self, params: Params, conn: _Connection, rid: Any) -> Any:
        unit = self._unit(params)
        count = params.get("lines", 50)
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            raise RequestError(f"lines must be a count of 0 or more, got {count!r}")
        lines = [line.to_json() for line in unit.log.tail(count)]
        result = {"module": unit.name, "lines": lines}
        if not params.get("follow"):
            return result
        stream = _Stream(conn)
        dropped = 0

        def listener(line: Any) -> None:
            # A follower that falls behind loses lines, not the stream: it is
            # told how many were dropped once it has caught up.
            nonlocal dropped
            data = _encode({"v": PROTOCOL, "id": rid, "log": line.to_json()})
            if dropped:
                data = _encode({"v": PROTOCOL, "id": rid, "dropped": dropped}) + data
            if stream.offer(data):
                dropped = 0
            else:
                dropped += 1

        stream.open({"v": PROTOCOL, "id": rid, "ok": True, "result": result})
        unsubscribe = unit.log.subscribe(listener)
        try:
            await _follow(conn, stream)
        finally:
            unsubscribe()
        return _STREAMED

    async def _subscribe(self, params: Params, conn: _Connection, rid: Any) -> Any:
        since = params.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            raise RequestError(f"since must be a sequence number, got {since!r}")
        bus = self.orchestrator.bus
        same_run = params.get("boot") in (None, bus.boot_id)
        missed = bus.since(since) if since is not None and same_run else None
        stream = _Stream(conn)

        def listener(event: dict[str, Any]) -> None:
            if stream.ended.done():
                return
            if stream.offer(_encode({"v": PROTOCOL, "id": rid, "event": event})):
                return
            # Cut off, so that what waits for a client that stopped reading
            # stays bounded; the connection goes once that has drained, or
            # after FLUSH_FOR if it does not.
            waiting = stream.backlog
            unsubscribe()
            stream.end(
                _error(rid, "too slow: the stream fell behind", "subscribe again")
            )
            log.warning(
                "control socket: event stream of pid %d cut off: too slow, "
                "%d bytes were waiting for it",
                conn.pid,
                waiting,
            )

        if missed is None:
            result = {"resumed": False, **self.orchestrator.snapshot()}
            stream.open({"v": PROTOCOL, "id": rid, "ok": True, "result": result})
        else:
            result = {"resumed": True, "seq": since, "boot": bus.boot_id}
            stream.open(
                {"v": PROTOCOL, "id": rid, "ok": True, "result": result},
                *({"v": PROTOCOL, "id": rid, "event": event} for event in missed),
            )
        unsubscribe = bus.subscribe(listener)
        try:
            await _follow(conn, stream)
        finally:
            unsubscribe()
        return _STREAMED

    async def _start(self, params: Params, conn: _Connection, rid: Any) -> Any:
        unit = self._unit(params)
        self.orchestrator.start(unit.name)
        timeout = unit.spec.ready.timeout + 5.0
        return await self._wait(unit, params, timeout, _up_or_given_up)

    async def _restart(self, params: Params, conn: _Connection, rid: Any) -> Any:
        unit = self._unit(params)
        generation = unit.generation
        self.orchestrator.restart(unit.name)
        timeout = unit.spec.stop.timeout + unit.spec.ready.timeout + 5.0
        return await self._wait(
            unit,
            params,
            timeout,
            lambda u: u.generation > generation and _up_or_given_up(u),
        )

    async def _stop(self, params: Params, conn: _Connection, rid: Any) -> Any:
        unit = self._unit(params)
        self.orchestrator.stop(unit.name)
        timeout = unit.spec.stop.timeout + 5.0
        return await self._wait(unit, params, timeout, _down)

    async def _wait(
        self, unit: Unit, params: Params, timeout: float, wanted: Callable[[Unit], bool]
    ) -> Any:
        done = True
        wait = params.get("wait", True)
        if not isinstance(wait, bool):
            raise RequestError(f"wait must be true or false, got {wait!r}")
        if wait:
            limit = _seconds(params.get("timeout", timeout))
            if limit is None:
                raise RequestError(
                    f"timeout must be seconds, 0 or more; got {params.get('timeout')!r}"
                )
            done = await self.orchestrator.settled(unit, wanted, limit)
        return {"module": self.orchestrator.record(unit), "settled": done}

    async def _shutdown(self, params: Params, conn: _Connection, rid: Any) -> Any:
        reason = str(params.get("reason") or "shutdown requested")
        action = params.get("action", "exit")
        if action not in ACTIONS:
            raise RequestError(
                f"unknown shutdown action {action!r}", "one of " + ", ".join(ACTIONS)
            )
        asyncio.get_running_loop().call_soon(
            lambda: self.orchestrator.shutdown(reason, action=action)
        )
        return {"state": "stopping", "action": action}

    async def _compile(self) -> Any:
        """Compile the plan folder again, off the loop: pydantic is slow to load."""
        from partenza.plan import compile_plan

        return await asyncio.to_thread(compile_plan, self.orchestrator.source)

    async def _validate(self, params: Params, conn: _Connection, rid: Any) -> Any:
        try:
            plan = await self._compile()
        except PlanError as exc:
            return {"valid": False, "problems": [str(p) for p in exc.problems]}
        checks = await self.orchestrator.run_checks()
        problems = [
            f"{name}: {check['how']}"
            for name, check in checks.items()
            if not check["ok"]
        ]
        return {
            "valid": not problems,
            "problems": problems,
            "notes": [str(note) for note in plan.notes],
            "changes": diff_plans(self.orchestrator.plan, plan),
            "checks": checks,
        }

    async def _reload(self, params: Params, conn: _Connection, rid: Any) -> Any:
        try:
            plan = await self._compile()
        except PlanError as exc:
            raise RequestError(
                f"{self.orchestrator.source}: {exc}; nothing was changed",
                "fix them and reload again",
                problems=[str(p) for p in exc.problems],
            ) from None
        changes = self.orchestrator.reload(plan)
        return {"changes": changes, "notes": [str(note) for note in plan.notes]}

    async def _note(self, params: Params, conn: _Connection, rid: Any) -> Any:
        text = params.get("text")
        level = params.get("level", "info")
        source = params.get("source", "client")
        if not isinstance(text, str) or not text:
            raise RequestError("a note needs text", 'send "text": "..."')
        if level not in ("info", "warning", "error"):
            raise RequestError(f"unknown level {level!r}", "info, warning or error")
        text = text.replace("\n", " ")[:500]
        log.log(
            {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[
                level
            ],
            "%s: %s",
            source,
            text,
        )
        self.orchestrator.bus.publish(
            "note", source=str(source)[:40], level=level, text=text
        )
        return {}

    async def _continue(self, params: Params, conn: _Connection, rid: Any) -> Any:
        self.orchestrator.resume(by=conn.pid)
        return {"system": self.orchestrator.system_record()}


_STREAMED = object()


def _up_or_given_up(unit: Unit) -> bool:
    if unit.busy and unit.state != READY:
        return False
    return unit.state in (READY, FAILED, BLOCKED) or (
        unit.state == STOPPED and unit.completed
    )


def _down(unit: Unit) -> bool:
    return not unit.busy and unit.state in (STOPPED, INACTIVE, FAILED, BLOCKED)


def _seconds(value: Any) -> float | None:
    """`value` as seconds, or None unless it is a finite number of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _parse(line: bytes) -> dict[str, Any]:
    """One request line as an object.

    Raises:
        RequestError: it is not JSON, not an object, nests too deeply, or holds
            a number that is not finite (NaN, Infinity, 1e400).
    """
    try:
        request = json.loads(line, parse_constant=_not_a_number, parse_float=_finite)
    except UnicodeDecodeError:
        raise RequestError("not UTF-8", "JSON, one object a line") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"not JSON: {exc.msg}", "one object a line") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        # An integer of more digits than Python converts.
        raise RequestError(
            "not JSON: a number too long to read", "one object a line"
        ) from None
    if not isinstance(request, dict):
        raise RequestError("a request must be a JSON object")
    if _deeper_than(request, MAX_DEPTH):
        raise _too_deep()
    return request


def _not_a_number(name: str) -> Any:
    raise RequestError(
        f"not JSON: {name} is not a JSON number", "numbers must be finite"
    )


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(
            f"number out of range: {text[:40]}", "numbers must be finite"
        )
    return value


def _too_deep() -> RequestError:
    return RequestError(
        "request nested too deeply",
        f"at most {MAX_DEPTH} levels of arrays and objects",
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays and objects more than `limit` levels deep."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


async def _follow(conn: _Connection, stream: _Stream) -> None:
    """Wait until the client hangs up, or the stream is ended."""
    hangup = asyncio.ensure_future(conn.reader.read(1))
    try:
        await asyncio.wait({hangup, stream.ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if hangup.done() and not hangup.cancelled():
            hangup.exception()  # A reset connection is a hang-up too.
        hangup.cancel()


async def _hang_up(writer: asyncio.StreamWriter, wait: float) -> None:
    """Close a connection once the client has taken what was written to it;
    drop it, and what it still holds, if it has not after `wait` seconds."""
    writer.close()
    try:
        async with asyncio.timeout(wait):
            await writer.wait_closed()
    except Exception:
        pass
    finally:
        writer.transport.abort()


def _refuse(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one line to a connection that is not served, and close it."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.send(_encode(message))
        # Take what the client has sent already, so that closing does not
        # reset the connection before it reads the line.
        for _ in range(16):
            if not sock.recv(65536):
                break
    sock.close()


def _idle_from_environment() -> float:
    text = os.environ.get(IDLE_VARIABLE)
    if not text:
        return IDLE_FOR
    seconds = None
    with contextlib.suppress(ValueError):
        seconds = _seconds(float(text))
    if not seconds:
        log.warning(
            "control socket: %s=%r ignored: not a number of seconds above 0",
            IDLE_VARIABLE,
            text,
        )
        return IDLE_FOR
    return seconds


def _error(request_id: Any, message: str, hint: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if hint:
        error["hint"] = hint
    return {"v": PROTOCOL, "id": request_id, "ok": False, "error": error}


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read what the client still sends, for a while, so that hanging up does
    not reset the connection before the client has read the reply."""
    try:
        async with asyncio.timeout(DISCARD_FOR):
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionError):
        pass


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
