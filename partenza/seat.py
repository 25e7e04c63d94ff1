"""The console as a resource: the progress lines, or a program that holds it.

At boot the console shows progress lines. With `[console] mode = "top"` the
orchestrator hands the console to `partenza top`. On a critical failure it
hands it to the bluescreen (`partenza rescue --bluescreen MODULE`): whatever
held it is stopped first, and when the rescue shell ends, the console goes
back to what had it before. While a program holds the console the progress
lines are held back, and written once the console returns.

A console that is the orchestrator's own controlling terminal (`partenza boot`
run from a shell) is handed over by making the program's process group the
terminal's foreground group. Any other console (a tty named in the plan,
`/dev/console` as PID 1) is handed over by starting the program in a session
of its own that takes the terminal as its controlling terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partenza.console import Console
from partenza.orchestrator import Orchestrator
from partenza.process import Child, sigttou_blocked

log = logging.getLogger(__name__)

HOLDER_STOP_TIMEOUT = 3.0


@dataclass
class Terminal:
    """An open terminal that can be the console."""

    fd: int
    path: str
    own: bool
    """It is this process's controlling terminal, and this process is in its
    foreground process group."""


def find_terminal(tty: str | None) -> Terminal | None:
    """The console: the named tty, else the terminal `partenza boot` runs on."""
    if tty:
        try:
            fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            log.warning("console %s: cannot open it: %s", tty, exc.strerror)
            return None
        return Terminal(fd, tty, _is_foreground(fd) and _same_device(fd, 0))
    if not _isatty(0):
        return None
    path = _terminal_path(0)
    return Terminal(os.dup(0), path, _is_foreground(0))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _is_foreground(fd: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def _same_device(a: int, b: int) -> bool:
    try:
        return os.fstat(a).st_rdev == os.fstat(b).st_rdev
    except OSError:
        return False


def _terminal_path(fd: int) -> str:
    try:
        return os.ttyname(fd)
    except OSError:
        # With devtmpfs mounted over /dev, ttyname fails; the link still says.
        return os.readlink(f"/proc/self/fd/{fd}")


def _hung_up(fd: int) -> bool:
    """Whether the terminal on `fd` has hung up (its other end closed)."""
    try:
        termios.tcgetattr(fd)
    except termios.error as exc:
        return exc.args[0] == errno.EIO
    return False


class Seat:
    """Decides who has the console, and hands it over."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        console: Console,
        socket: Path,
        terminal: Terminal | None,
    ) -> None:
        self.orchestrator = orchestrator
        self.console = console
        self.socket = socket
        self.terminal = terminal
        self.holder: Child | None = None
        self.holding: str | None = None
        """`top` or `rescue`: what holds the console now."""
        self._next: tuple[str, list[str]] | None = None
        self._saved_modes: list[Any] | None = None
        self._closing = False
        self.on_hangup: Callable[[], None] | None = None
        """Called when the orchestrator's own terminal is found hung up."""
        self._waiting_fd: int | None = None
        """The terminal read for an Enter that opens a new rescue shell."""

    def attach(self) -> None:
        self.orchestrator.bus.subscribe(self._on_event)
        self.orchestrator.finishing.append(self.close)

    def _command(self, *words: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "partenza.cli",
            "--socket",
            str(self.socket),
            *words,
        ]

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        plan = self.orchestrator.plan
        if kind == "system" and event["old"] is None and plan.console.mode == "top":
            self.give("top", self._command("top"))
        elif kind == "resumed":
            self._stop_waiting()
        elif kind == "bluescreen":
            if not plan.rescue.shell:
                return
            if self.terminal is None:
                self.console.line(
                    "info",
                    "partenza: no terminal for the rescue shell; run "
                    f"`partenza rescue` to look into {event['module']}",
                )
                return
            if self.holding == "rescue":
                return
            self.give(
                "rescue", self._command("rescue", "--bluescreen", event["module"])
            )

    def give(self, kind: str, argv: list[str]) -> None:
        """Hand the console to `argv`; a holder that has it now is stopped first."""
        terminal = self.terminal
        if terminal is None or self._closing:
            return
        self._stop_waiting()
        self._fresh_fd(terminal)
        if self.holder is not None:
            self._next = (kind, argv)
            self.holder.popen.send_signal(signal.SIGTERM)
            asyncio.get_running_loop().call_later(
                HOLDER_STOP_TIMEOUT, self._force_out, self.holder
            )
            return
        self.console.drain()
        self.console.hold()
        env = dict(os.environ)
        env.setdefault("TERM", "linux")
        try:
            self._saved_modes = termios.tcgetattr(terminal.fd)
        except termios.error:
            self._saved_modes = None
        try:
            child = self.orchestrator.processes.spawn_on_terminal(
                argv,
                env=env,
                terminal=terminal.fd,
                path=terminal.path,
                own_terminal=terminal.own,
            )
        except OSError as exc:
            self.console.release()
            self.console.line(
                "warn", f"partenza: cannot start {kind} on the console: {exc}"
            )
            return
        if terminal.own:
            self._foreground(child.pid)
            # Had it read the terminal before it was given it, SIGTTIN stopped
            # it; as a shell's `fg` does, continue it now that it may read.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGCONT)
        self.holder, self.holding = child, kind
        log.info("console given to %s (pid %d)", kind, child.pid)
        child.exited.add_done_callback(lambda _: self._returned(child))

    def _foreground(self, pgid: int) -> None:
        assert self.terminal is not None
        with sigttou_blocked():
            try:
                os.tcsetpgrp(self.terminal.fd, pgid)
            except OSError as exc:
                log.warning("console: cannot hand over the terminal: %s", exc.strerror)

    def _force_out(self, child: Child) -> None:
        if child.running:
            child.popen.send_signal(signal.SIGKILL)

    def _returned(self, child: Child) -> None:
        """The holder ended: take the console back, then pass it on if asked."""
        if child is not self.holder:
            return
        kind, self.holder, self.holding = self.holding, None, None
        terminal = self.terminal
        assert terminal is not None
        if terminal.own and _hung_up(terminal.fd):
            # The terminal closed under the holder: the kernel told the
            # holder, as its foreground group, and not us.
            log.warning("console: the terminal hung up while %s had it", kind)
            self.console.release()
            if self.on_hangup is not None and not self._closing:
                self.on_hangup()
            return
        if terminal.own:
            self._foreground(os.getpgrp())
        if self._saved_modes is not None:
            with sigttou_blocked(), contextlib.suppress(termios.error):
                termios.tcsetattr(terminal.fd, termios.TCSANOW, self._saved_modes)
        self.console.release()
        status = child.exited.result().describe()
        log.info("console back from %s (%s)", kind, status)
        if self._closing:
            return
        if self._next is not None:
            self._next, (next_kind, argv) = None, self._next
            self.give(next_kind, argv)
        elif kind == "rescue" and self.orchestrator.plan.console.mode == "top":
            if not self.orchestrator.shutting_down:
                self.give("top", self._command("top"))
        elif kind == "rescue" and self.orchestrator.rescue is not None:
            # As sulogin does: while the system is in rescue, the console
            # offers a rescue shell, at a key press so that a shell that
            # cannot open (a refused password) does not come back in a loop.
            module = self.orchestrator.rescue
            self.console.line(
                "warn",
                f"partenza: the rescue shell {status} and {module} is still down; "
                "press Enter on the console for a new one",
            )
            self._wait_for_enter(module)

    def _wait_for_enter(self, module: str, *, fresh: bool = False) -> None:
        terminal = self.terminal
        assert terminal is not None
        loop = asyncio.get_running_loop()
        fd = self._fresh_fd(terminal)

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data and b"\n" not in data and b"\r" not in data:
                return
            self._stop_waiting()
            if data:
                self._reopen(module)
            elif terminal.own:
                if self.on_hangup is not None and not self._closing:
                    log.warning("console: the terminal hung up")
                    self.on_hangup()
            elif not fresh:
                self._wait_for_enter(module, fresh=True)
            else:
                log.warning("console: %s gives no input", terminal.path)

        try:
            loop.add_reader(fd, readable)
        except (OSError, ValueError) as exc:
            log.warning("console: cannot wait for a key on the terminal: %s", exc)
            return
        self._waiting_fd = fd

    def _fresh_fd(self, terminal: Terminal) -> int:
        """The terminal's descriptor, opened again if it was hung up.

        A terminal that is not the orchestrator's own (a serial console) is
        hung up for every descriptor open on it when the session of a program
        it was lent to ends; the device itself works on."""
        if terminal.own or not _hung_up(terminal.fd):
            return terminal.fd
        try:
            fd = os.open(terminal.path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("console %s: cannot open it again: %s", terminal.path, exc)
            return terminal.fd
        os.close(terminal.fd)
        terminal.fd = fd
        return fd

    def _stop_waiting(self) -> None:
        if self._waiting_fd is not None:
            asyncio.get_running_loop().remove_reader(self._waiting_fd)
            self._waiting_fd = None

    def _reopen(self, module: str) -> None:
        if self._closing or self.orchestrator.shutting_down:
            return
        if self.holder is None and self.orchestrator.rescue == module:
            self.give("rescue", self._command("rescue", "--bluescreen", module))

    async def close(self) -> None:
        """Stop whatever holds the console and take it back."""
        self._closing = True
        self._stop_waiting()
        holder = self.holder
        if holder is not None and holder.running:
            holder.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    asyncio.shield(holder.exited), HOLDER_STOP_TIMEOUT
                )
            except TimeoutError:
                holder.popen.send_signal(signal.SIGKILL)
                await asyncio.wait({holder.exited}, timeout=1.0)
        if self.terminal is not None:
            with contextlib.suppress(OSError):
                os.close(self.terminal.fd)
            self.terminal = None
