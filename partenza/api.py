"""The control socket: JSON requests, one object a line, and the event stream.

Every request is `{"v": 1, "id": ..., "op": ..., ...params}`; every reply
carries the same `v` and `id` and either `"ok": true, "result": {...}` or
`"ok": false, "error": {"message": ..., "hint": ...}`. Streaming requests
(`subscribe`, `logs` with `follow`) answer once, then send messages carrying
`event` or `log` on the same connection until the client hangs up. The
protocol is written down for other tools in `docs/protocol.md`.

The socket is created mode 0600 in a folder of mode 0711, and a connecting
peer's uid (SO_PEERCRED) must be root's or the orchestrator's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from partenza import __version__
from partenza.errors import PartenzaError, PlanError, did_you_mean
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
ACTIONS = ("exit", "poweroff", "reboot", "halt")
"""What a shutdown ends with; outside PID 1 all three end the orchestrator."""
DISCARD_FOR = 2.0
"""Seconds an oversized request is read and thrown away before hanging up."""
QUEUE_LIMIT = 10000
"""Messages queued for one streaming client before it is cut off as too slow."""

Params = dict[str, Any]


class RequestError(PartenzaError):
    """A request that cannot be served; sent back as the error of the reply."""

    def __init__(
        self, message: str, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class _Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = pid
        """The peer's pid, as the kernel gave it on accept."""

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()


class ControlServer:
    """Serves the control socket for one orchestrator."""

    def __init__(self, orchestrator: Orchestrator, path: Path) -> None:
        self.orchestrator = orchestrator
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
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
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, path=str(self.path), limit=MAX_REQUEST
            )
        except OSError as exc:
            raise PartenzaError(
                f"cannot listen on {self.path}: {exc.strerror}"
            ) from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(self._clients, timeout=1.0)
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            pid = self._allowed(writer)
            if pid is None:
                return
            await self._serve(_Connection(reader, writer, pid))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Closing the server cancels its connections; ending quietly here
            # keeps Python 3.11's streams from reporting the cancellation.
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _allowed(self, writer: asyncio.StreamWriter) -> int | None:
        """The peer's pid when it may use the socket, else None."""
        sock = writer.get_extra_info("socket")
        try:
            creds = sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
        except OSError:
            return None
        pid, uid, _ = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return pid
        log.warning("control socket: refused pid %d of uid %d", pid, uid)
        return None

    async def _serve(self, conn: _Connection) -> None:
        while True:
            try:
                line = await conn.reader.readline()
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
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise RequestError("a request must be a JSON object")
                request_id = request.get("id")
                version = request.get("v")
                if version != PROTOCOL:
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
            except UnicodeDecodeError:
                await conn.send(
                    _error(request_id, "not UTF-8", "JSON, one object a line")
                )
                continue
            except json.JSONDecodeError as exc:
                await conn.send(
                    _error(request_id, f"not JSON: {exc.msg}", "one object a line")
                )
                continue
            except PartenzaError as exc:
                reply = _error(request_id, exc.message, exc.hint)
                problems = getattr(exc, "problems", None)
                if problems:
                    reply["error"]["problems"] = [str(p) for p in problems]
                await conn.send(reply)
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
        if count is not None and (not isinstance(count, int) or count < 0):
            raise RequestError(f"lines must be a count of 0 or more, got {count!r}")
        lines = [line.to_json() for line in unit.log.tail(count)]
        result = {"module": unit.name, "lines": lines}
        if not params.get("follow"):
            return result
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        dropped = 0

        def listener(line: Any) -> None:
            # A follower that falls behind loses lines, not the stream: it is
            # told how many were dropped once it has caught up.
            nonlocal dropped
            if queue.qsize() >= QUEUE_LIMIT:
                dropped += 1
                return
            if dropped:
                queue.put_nowait({"v": PROTOCOL, "id": rid, "dropped": dropped})
                dropped = 0
            queue.put_nowait({"v": PROTOCOL, "id": rid, "log": line.to_json()})

        unsubscribe = unit.log.subscribe(listener)
        try:
            await conn.send({"v": PROTOCOL, "id": rid, "ok": True, "result": result})
            await self._pump(conn, queue, rid)
        finally:
            unsubscribe()
        return _STREAMED

    async def _subscribe(self, params: Params, conn: _Connection, rid: Any) -> Any:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def listener(event: dict[str, Any]) -> None:
            if queue.qsize() >= QUEUE_LIMIT:
                queue.put_nowait(None)
            else:
                queue.put_nowait({"v": PROTOCOL, "id": rid, "event": event})

        since = params.get("since")
        if since is not None and (not isinstance(since, int) or since < 0):
            raise RequestError(f"since must be a sequence number, got {since!r}")
        bus = self.orchestrator.bus
        same_run = params.get("boot") in (None, bus.boot_id)
        missed = bus.since(since) if since is not None and same_run else None
        unsubscribe = bus.subscribe(listener)
        try:
            if missed is None:
                result = {"resumed": False, **self.orchestrator.snapshot()}
            else:
                result = {"resumed": True, "seq": since, "boot": bus.boot_id}
                for event in missed:
                    queue.put_nowait({"v": PROTOCOL, "id": rid, "event": event})
            await conn.send({"v": PROTOCOL, "id": rid, "ok": True, "result": result})
            await self._pump(conn, queue, rid)
        finally:
            unsubscribe()
        return _STREAMED

    async def _pump(
        self, conn: _Connection, queue: asyncio.Queue[dict[str, Any] | None], rid: Any
    ) -> None:
        """Forward queued messages until the client hangs up or falls behind."""
        hangup = asyncio.ensure_future(conn.reader.read(1))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait(
                    {getter, hangup}, return_when=asyncio.FIRST_COMPLETED
                )
                if not getter.done():
                    getter.cancel()
                    return
                message = getter.result()
                if message is None:
                    await conn.send(
                        _error(
                            rid, "too slow: the stream fell behind", "subscribe again"
                        )
                    )
                    return
                await conn.send(message)
        finally:
            hangup.cancel()

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
            limit = params.get("timeout", timeout)
            if not isinstance(limit, (int, float)) or limit < 0:
                raise RequestError(f"timeout must be seconds, 0 or more; got {limit!r}")
            done = await self.orchestrator.settled(unit, wanted, float(limit))
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
