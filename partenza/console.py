"""Boot progress lines for a console: `[  OK  ] web: ready in 0.21s (pid 4242)`.

The console is a view of the event bus, nothing more. Lines are written by a
thread of their own, so a slow serial console never holds up the
orchestrator's loop; none is ever dropped, and their order is kept. Colour is
used only on a terminal that has it: never with NO_COLOR set, TERM=dumb, or
when the output is a pipe or a file.
"""

from __future__ import annotations

import asyncio
import os
import queue
import textwrap
import threading
from collections import deque
from typing import Any, TextIO

from partenza.units import format_duration

TAGS = {
    "ok": ("  OK  ", "32"),
    "failed": ("FAILED", "31;1"),
    "warn": (" WARN ", "33"),
    "depend": ("DEPEND", "33"),
    "info": (" INFO ", "36"),
    "wait": (" WAIT ", "36"),
    "log": ("  LOG ", "2"),
}
HELD_LINES = 200
"""Lines kept back while another program has the console."""
STILL_STARTING = (5.0, 15.0)
"""Seconds until the first `still starting` line, then between later ones."""


def wants_colour(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that should get colour."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM", "dumb") in ("dumb", ""):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Writer(threading.Thread):
    """Writes lines to a stream in order, off the event loop."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(name="console", daemon=True)
        self.stream = stream
        self.lines: queue.Queue[str | threading.Event | None] = queue.Queue()

    def run(self) -> None:
        while (line := self.lines.get()) is not None:
            if isinstance(line, threading.Event):
                line.set()
                continue
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def drain(self, timeout: float) -> bool:
        """Wait until every line queued so far is written."""
        written = threading.Event()
        self.lines.put(written)
        return written.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.lines.put(None)
        self.join(timeout)


class Console:
    """Turns orchestrator events into progress lines."""

    def __init__(
        self,
        stream: TextIO,
        *,
        colour: bool | None = None,
        width: int | None = None,
        threaded: bool = True,
    ) -> None:
        self.stream = stream
        self.colour = wants_colour(stream) if colour is None else colour
        terminal = _is_terminal(stream)
        self.width = width or (_columns(stream) if terminal else 0)
        self._writer = _Writer(stream) if threaded else None
        if self._writer:
            self._writer.start()
        self._initializing: dict[str, asyncio.TimerHandle] = {}
        self.plan = "plan"
        self._held: deque[str] | None = None
        self._dropped = 0

    def close(self) -> None:
        for timer in self._initializing.values():
            timer.cancel()
        self._initializing.clear()
        if self._writer:
            self._writer.close()

    def drain(self, timeout: float = 2.0) -> None:
        """Wait (at most `timeout` seconds) until every line so far is written,
        before another program is given the terminal."""
        if self._writer:
            self._writer.drain(timeout)

    def hold(self) -> None:
        """Keep lines back while another program has the console."""
        if self._held is None:
            self._held = deque(maxlen=HELD_LINES)
            self._dropped = 0

    def release(self) -> None:
        """The console is back: write what was held, oldest first."""
        held, self._held = self._held, None
        if not held:
            return
        dropped = f" (the {self._dropped} before them are in `partenza events`)"
        count = len(held)
        self.line(
            "info",
            f"partenza: {count} line{'s' if count != 1 else ''} while the console "
            f"was away{dropped if self._dropped else ''}:",
        )
        for text in held:
            self.write(text)

    def line(self, tag: str, text: str) -> None:
        """Write one tagged line, wrapped with a hanging indent on a terminal."""
        label, code = TAGS[tag]
        prefix = f"[\x1b[{code}m{label}\x1b[0m] " if self.colour else f"[{label}] "
        if self.width and len(text) + 9 > self.width:
            body = textwrap.fill(
                text,
                self.width - 1,
                initial_indent=" " * 9,
                subsequent_indent=" " * 9,
                break_on_hyphens=False,
            )[9:]
        else:
            body = text
        self.write(prefix + body + "\n")

    def write(self, text: str) -> None:
        if self._held is not None:
            if len(self._held) == self._held.maxlen:
                self._dropped += 1
            self._held.append(text)
            return
        if self._writer:
            self._writer.lines.put(text)
        else:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "state":
            self._state(event)
        elif kind == "boot":
            self._boot(event)
        elif kind == "system":
            self._system(event)
        elif kind == "bluescreen":
            self._bluescreen(event)
        elif kind == "failover":
            self.line(
                "warn",
                f"{event['capability']}: failing over from {event['failed']} to "
                f"{event['provider']} ({event['reason']})",
            )

    def _state(self, event: dict[str, Any]) -> None:
        name, new, reason = event["module"], event["new"], event["reason"]
        timer = self._initializing.pop(name, None)
        if timer:
            timer.cancel()
        if new == "initializing":
            self._watch_start(name, reason, STILL_STARTING[0])
        elif new == "ready" and event["old"] in ("degraded", "ready"):
            self.line("ok", f"{name}: {reason}")
        elif new == "ready":
            took = event.get("ready_in")
            pid = event.get("pid")
            restarts = event.get("restarts") or 0
            when = f" in {took:.2f}s" if took is not None else ""
            if restarts:
                self.line(
                    "ok", f"{name}: ready again{when} (pid {pid}, restart {restarts})"
                )
            else:
                self.line("ok", f"{name}: ready{when} (pid {pid})")
        elif new == "restarting":
            self.line("warn", f"{name}: {reason}")
        elif new == "hung":
            self.line("warn", f"{name}: hung, {reason}")
        elif new == "degraded":
            self.line("warn", f"{name}: degraded, {reason}")

        elif new == "failed":
            blocks = event.get("blocks") or []
            suffix = f"; blocked: {', '.join(blocks)}" if blocks else ""
            self.line("failed", f"{name}: {reason}{suffix}")
        elif new == "blocked":
            self.line("depend", f"{name}: blocked, {reason}")
        elif new == "stopped":
            if "SIGKILL" in reason:
                self.line("warn", f"{name}: stopped, {reason}")
            elif reason.endswith("finished"):
                self.line("info", f"{name}: {reason}")
            else:
                self.line("ok", f"{name}: stopped ({reason})")

    def _watch_start(self, name: str, reason: str, after: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        started = loop.time()

        def still(waited: float = after) -> None:
            self.line(
                "wait",
                f"{name}: still starting after {format_duration(waited)} ({reason})",
            )
            nxt = waited + STILL_STARTING[1]
            self._initializing[name] = loop.call_at(started + nxt, still, nxt)

        self._initializing[name] = loop.call_at(started + after, still)

    def _boot(self, event: dict[str, Any]) -> None:
        counts: dict[str, int] = event.get("counts") or {}
        took = format_duration(event.get("took") or 0.0)
        summary = ", ".join(
            f"{count} {state}" for state, count in sorted(counts.items())
        )
        bad = counts.get("failed", 0) + counts.get("blocked", 0)
        if bad:
            self.line("warn", f"{self.plan}: booted in {took}, degraded: {summary}")
        else:
            self.line("ok", f"{self.plan}: booted in {took}: {summary}")

    def _system(self, event: dict[str, Any]) -> None:
        self.plan = event.get("plan") or self.plan
        old, new, reason = event["old"], event["new"], event["reason"]
        if old in (None, "starting") and new in ("running", "degraded"):
            return  # The boot summary says it.
        if new == "stopping":
            self.line("info", f"{self.plan}: shutting down ({reason})")
        elif new == "degraded":
            self.line("warn", f"{self.plan}: degraded ({reason})")
        elif new == "running" and old not in ("starting", "running"):
            # Running again; a new reason while running (a module restarting,
            # one stopped) has its own line already.
            self.line("ok", f"{self.plan}: running, {reason}")

    def _bluescreen(self, event: dict[str, Any]) -> None:
        width = min(self.width or 80, 80)
        rule = "=" * (width - 1)
        lines = [
            rule,
            f" CRITICAL FAILURE: {event['module']}",
            f" error:    {event.get('error')}",
            f" stage:    {event.get('stage')}",
            f" blocked:  {', '.join(event.get('blocks') or []) or 'nothing'}",
            f" manifest: {event.get('file')}",
            " last output:",
        ]
        lines += [f"   {text[: width - 5]}" for text in (event.get("logs") or [])[-6:]]
        lines += [
            " The system is in rescue. Look with `partenza status` and",
            f" `partenza logs {event['module']}`; once it is mended,",
            f" `partenza start {event['module']}`; `partenza shutdown` stops all.",
            rule,
        ]
        self.write("\n".join(lines) + "\n")


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
