"""Logging that never goes dark: the plan's logging module, and the fallback.

When a plan has a module for the capability `logging` that speaks the
contract with the role `logger`, every line of every other module's output is
numbered and sent to it, and kept in a bounded backlog until the logger
acknowledges it. While the logger is down, or is not reading (what was sent to
it piles up unread), lines go to the fallback logger instead, in order: a file
in the state folder (and `/dev/kmsg` when Partenza is the machine's PID 1),
and the console, which gets a bounded rate of them. When the logger is back it
first receives the backlog — every line it has not acknowledged, in order, and
a count of the lines that fell off the end of the bound — then the live ones.
So every line reaches the logger or the fallback, and most reach both.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from partenza.logs import LogLine, RotatingFile

log = logging.getLogger(__name__)

BACKLOG_LINES = 100_000
"""Lines kept for the logger while it cannot take them."""
UNREAD_LIMIT = 4 * 1024 * 1024
"""Bytes sent to the logger and not read yet, past which it counts as refusing."""
CONSOLE_RATE = 20.0
"""Fallback lines a second that also go to the console."""
CONSOLE_BURST = 50
FILE_SIZE = 16 * 1024 * 1024
LOGGER_ROLE = "logger"
CAPABILITY = "logging"


class FallbackLogger:
    """Where module output goes while the logging module cannot take it."""

    def __init__(
        self,
        path: Path | None,
        console: Callable[[str, str], None] | None,
        kmsg: bool = False,
    ) -> None:
        self.path = path
        self.file = RotatingFile(path, FILE_SIZE, 2) if path else None
        self.console = console
        self.kmsg: int | None = None
        if kmsg:
            try:
                self.kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                log.warning("fallback logger: cannot open /dev/kmsg: %s", exc.strerror)
        self.written = 0
        self._tokens = float(CONSOLE_BURST)
        self._stamp = time.monotonic()
        self._quiet = 0
        self._quiet_since = 0.0

    def write(self, module: str, stream: str, stamp: float, text: str) -> None:
        self.written += 1
        if self.file is not None:
            clock = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp))
            line = f"{clock}.{int(stamp % 1 * 1000):03d} {module} {stream} {text}\n"
            self.file.write(line.encode("utf-8", "backslashreplace"))
        if self.kmsg is not None:
            message = f"<6>partenza: {module}: {text}"[:900]
            try:
                os.write(self.kmsg, message.encode("utf-8", "backslashreplace"))
            except OSError:
                pass
        self._to_console(f"{module}| {text}")

    def _to_console(self, text: str) -> None:
        if self.console is None:
            return
        now = time.monotonic()
        self._tokens = min(
            CONSOLE_BURST, self._tokens + (now - self._stamp) * CONSOLE_RATE
        )
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            if self._quiet:
                self._say_quiet()
            self.console("log", text)
            return
        if not self._quiet:
            self._quiet_since = now
        self._quiet += 1
        if now - self._quiet_since >= 5.0:
            self._say_quiet()

    def _say_quiet(self) -> None:
        if self.console is not None and self._quiet:
            where = f" (all are in {self.path})" if self.path else ""
            self.console("info", f"partenza: {self._quiet} more lines not shown{where}")
        self._quiet = 0

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        self._say_quiet()
        if self.file is not None:
            self.file.close()
        if self.kmsg is not None:
            os.close(self.kmsg)
            self.kmsg = None


class _Sender:
    """What the router needs of a logger's contract session."""

    backlog: int

    def post(self, message: dict[str, Any]) -> None: ...


class LogRouter:
    """Numbers module output and hands it to the logger or the fallback."""

    def __init__(self, fallback: FallbackLogger, limit: int = BACKLOG_LINES) -> None:
        self.fallback = fallback
        self.limit = limit
        self.backlog: deque[list[Any]] = deque()
        """[seq, module, stream, time, text, fell back] not acknowledged yet."""
        self.seq = 0
        self.dropped = 0
        self.unposted = 0
        """How many of the newest backlog entries were not sent to the logger."""
        self.session: _Sender | None = None
        self.logger: str | None = None

    def line(self, module: str, line: LogLine) -> None:
        """One line of `module`'s output."""
        if module == self.logger:
            return
        self.seq += 1
        entry = [self.seq, module, line.stream, line.time, line.text, False]
        if len(self.backlog) >= self.limit:
            oldest = self.backlog.popleft()
            if not oldest[5]:
                self._fall_back(oldest)
            self.dropped += 1
            self.unposted = min(self.unposted, len(self.backlog))
        self.backlog.append(entry)
        self.unposted += 1
        if self._accepting():
            self._post_pending()
        else:
            self._fall_back(entry)

    def _accepting(self) -> bool:
        return self.session is not None and self.session.backlog < UNREAD_LIMIT

    def _post_pending(self) -> None:
        assert self.session is not None
        start = len(self.backlog) - self.unposted
        for entry in itertools.islice(self.backlog, start, None):
            self.session.post(_message(entry))
        self.unposted = 0

    def _fall_back(self, entry: list[Any]) -> None:
        if not entry[5]:
            entry[5] = True
            self.fallback.write(entry[1], entry[2], entry[3], entry[4])

    def attach(self, session: _Sender, module: str) -> None:
        """The logger is (back) up: send it the backlog, then live lines."""
        self.session, self.logger = session, module
        session.post(
            {"type": "backlog", "lines": len(self.backlog), "dropped": self.dropped}
        )
        if self.dropped:
            log.warning(
                "%s: %d lines fell off the backlog while it was away; "
                "they are in the fallback log",
                module,
                self.dropped,
            )
        self.dropped = 0
        self.unposted = len(self.backlog)
        self._post_pending()
        self.fallback.flush()

    def detach(self, session: _Sender) -> None:
        """The logger is gone: what it did not acknowledge goes to the fallback."""
        if self.session is not session:
            return
        self.session = None
        for entry in self.backlog:
            self._fall_back(entry)
        self.unposted = len(self.backlog)
        self.fallback.flush()

    def ack(self, seq: int) -> None:
        """The logger has kept every line up to `seq`."""
        while self.backlog and self.backlog[0][0] <= seq:
            self.backlog.popleft()
        self.unposted = min(self.unposted, len(self.backlog))


def _message(entry: list[Any]) -> dict[str, Any]:
    seq, module, stream, stamp, text, _ = entry
    return {
        "type": "log",
        "seq": seq,
        "module": module,
        "stream": stream,
        "time": stamp,
        "text": text,
    }
