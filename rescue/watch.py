"""The system's state for the prompt and the completer, kept from the event stream.

A `Watcher` subscribes in a thread of its own, with its own event loop, and
keeps the system record and each module's state current. When the stream
breaks it marks itself disconnected and subscribes again, with backoff. It
only ever reads; every command the shell runs has its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from partenza.client import AsyncClient, ClientError

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 2.0
"""Seconds between tries to subscribe again: the first wait, doubled up to this."""


class Watcher:
    """Follows the event stream on `socket` until `stop()`.

    `on_change` is called, from the watcher's thread, after each change that
    the prompt may show.
    """

    def __init__(
        self, socket: Path | str, on_change: Callable[[], None] | None = None
    ) -> None:
        self.socket = Path(socket)
        self.on_change = on_change
        self.system: dict[str, Any] | None = None
        """The latest system record, or None before the first snapshot."""
        self.modules: dict[str, str] = {}
        """Each module's name to its state."""
        self.reloads = 0
        """How many reloads the stream has told of."""
        self.resumed_by: int | None = None
        """The pid that last resumed the boot (`continue`), once one has."""
        self.touched: dict[str, float] = {}
        """Each module's name to when (monotonic) its state last changed."""
        self.connected = False
        self.error: str | None = None
        """Why the last connection failed or ended."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._heard = threading.Event()
        self._stopping = False

    @property
    def reachable(self) -> bool:
        """Connected, or not yet told otherwise."""
        return self.connected or self.error is None

    def wait_heard(self, timeout: float) -> bool:
        """Wait until the first subscription has answered or failed."""
        return self._heard.wait(timeout)

    def seed(self, snapshot: dict[str, Any]) -> None:
        """Take a snapshot fetched by other means, before the stream has one."""
        self._apply_snapshot(snapshot)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="rescue-watcher", daemon=True
        )
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        """End the subscription and the thread."""
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self._follow())
            self._ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
        finally:
            self._loop.close()

    async def _follow(self) -> None:
        wait = RETRY_FIRST
        while not self._stopping:
            client = AsyncClient(self.socket)
            try:
                await client.connect()
                async for message in client.stream("subscribe"):
                    if "event" in message:
                        self._apply_event(message["event"])
                    elif "modules" in message:
                        self._apply_snapshot(message)
                        self._set_connected(True, None)
                        wait = RETRY_FIRST
                self._set_connected(False, "the orchestrator closed the connection")
            except ClientError as exc:
                self._set_connected(False, exc.message)
            except (OSError, ValueError) as exc:
                self._set_connected(False, str(exc))
            finally:
                await client.close()
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)

    def _set_connected(self, connected: bool, error: str | None) -> None:
        changed = connected != self.connected
        self.connected, self.error = connected, error
        self._heard.set()
        if changed:
            if connected:
                log.info("rescue: following the events on %s", self.socket)
            else:
                log.warning(
                    "rescue: lost the event stream on %s: %s", self.socket, error
                )
            self._changed()

    def _apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.system = dict(snapshot["system"])
        self.modules = {m["name"]: m["state"] for m in snapshot["modules"]}
        self._changed()

    def _apply_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "system" and self.system is not None:
            system = dict(self.system)
            system["state"], system["reason"] = event["new"], event["reason"]
            if event["new"] != "rescue":
                system["rescue"] = None
            self.system = system
        elif kind == "bluescreen" and self.system is not None:
            self.system = {**self.system, "rescue": event["module"]}
        elif kind == "state":
            self.touched[event["module"]] = time.monotonic()
            self.modules = {**self.modules, event["module"]: event["new"]}
        elif kind == "reload":
            self.reloads += 1
        elif kind == "resumed":
            self.resumed_by = event.get("by") or 0
        elif kind == "added":
            record = event.get("record") or {}
            self.modules = {**self.modules, event["module"]: record.get("state", "")}
        elif kind == "removed":
            self.modules = {
                k: v for k, v in self.modules.items() if k != event["module"]
            }
        else:
            return
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("rescue: the prompt could not be redrawn")
