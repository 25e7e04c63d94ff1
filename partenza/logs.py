"""Module output: read line by line, kept in a ring buffer, written to files.

A module's stdout and stderr are pipes read without blocking whenever they
have data, so a child never waits on a full pipe for long. Lines longer than
the plan's `max_line` are split. Bytes that are not UTF-8 are written to the
log file as they came and shown escaped (`\\xff`) everywhere else. Memory per
module is bounded by the ring buffer; disk by rotation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from partenza.plan import LogSpec
from partenza.units import visible

log = logging.getLogger(__name__)

READ_SIZE = 65536
"""Seconds a written line may wait in the file buffer before it is flushed."""

Listener = Callable[["LogLine"], None]


class LogLine:
    """One line of a module's output, or a note from the orchestrator."""

    __slots__ = ("stream", "text", "time")

    def __init__(self, time: float, stream: str, text: str) -> None:
        self.time = time
        self.stream = stream
        """`out`, `err`, or `sys` for the orchestrator's own notes."""
        self.text = text

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "stream": self.stream, "text": self.text}


class RotatingFile:
    """An append-only file that is rotated to `.1` ... `.keep` at `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: IO[bytes] | None = None
        self._size = 0
        self.failed = False

    def _open(self) -> IO[bytes] | None:
        if self._file is None and not self.failed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Unbuffered: whoever writes here writes whole chunks of lines.
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
                self._size = self._file.tell()
            except OSError as exc:
                self.failed = True
                log.warning(
                    "%s: cannot open log file: %s", self.path.name, exc.strerror
                )
        return self._file

    def write(self, data: bytes) -> None:
        handle = self._open()
        if handle is None:
            return
        if self.max_bytes and self._size + len(data) > self.max_bytes and self._size:
            self.rotate()
            handle = self._open()
            if handle is None:
                return
        try:
            handle.write(data)
            self._size += len(data)
        except OSError as exc:
            self.failed = True
            log.warning("%s: cannot write log file: %s", self.path.name, exc.strerror)

    def rotate(self) -> None:
        self.close()
        try:
            if self.keep == 0:
                self.path.unlink(missing_ok=True)
                return
            for index in range(self.keep, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                newer = (
                    self.path
                    if index == 1
                    else self.path.with_name(f"{self.path.name}.{index - 1}")
                )
                if newer.exists():
                    os.replace(newer, older)
        except OSError as exc:
            log.warning("%s: cannot rotate log file: %s", self.path.name, exc.strerror)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                pass

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


class ModuleLog:
    """The output of one module: a ring buffer, a log file and live listeners."""

    def __init__(self, name: str, spec: LogSpec, directory: Path | None) -> None:
        self.name = name
        self.spec = spec
        self.ring: deque[LogLine] = deque(maxlen=spec.ring_lines)
        self.file = (
            RotatingFile(directory / f"{name}.log", spec.file_size, spec.file_keep)
            if directory
            else None
        )
        self.listeners: list[Listener] = []
        self.lines = 0
        self.bytes = 0
        self._partial: dict[str, bytearray] = {}
        self._batch: list[bytes] | None = None
        self._stamp = (0, "")

    def feed(self, stream: str, data: bytes) -> None:
        """Take a chunk read from a pipe; complete lines are kept at once."""
        self.bytes += len(data)
        buffer = self._partial.setdefault(stream, bytearray())
        buffer += data
        if b"\n" not in data and len(buffer) < self.spec.max_line:
            return
        pieces = buffer.split(b"\n")
        rest = pieces.pop()
        now = time.time()
        # The chunk's lines go to the file in one write.
        self._batch = []
        for piece in pieces:
            self._add_raw(now, stream, bytes(piece))
        limit = self.spec.max_line
        while len(rest) >= limit:
            self._add_raw(now, stream, bytes(rest[:limit]))
            rest = rest[limit:]
        self._partial[stream] = bytearray(rest)
        batch, self._batch = self._batch, None
        if batch and self.file is not None:
            self.file.write(b"".join(batch))

    def end(self, stream: str) -> None:
        """The pipe closed: keep what is left of a last unterminated line."""
        rest = self._partial.pop(stream, None)
        if rest:
            self._add_raw(time.time(), stream, bytes(rest))

    def note(self, text: str) -> None:
        """A line from the orchestrator about this module: started, exited."""
        self._add_raw(time.time(), "sys", text.encode())

    def _add_raw(self, now: float, stream: str, raw: bytes) -> None:
        limit = self.spec.max_line
        if len(raw) > limit:
            for start in range(0, len(raw), limit):
                self._add_raw(now, stream, raw[start : start + limit])
            return
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        text = visible(raw.decode("utf-8", "backslashreplace"))
        line = LogLine(now, stream, text)
        self.ring.append(line)
        self.lines += 1
        if self.file is not None:
            second = int(now)
            if self._stamp[0] != second:
                clock = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
                self._stamp = (second, clock)
            entry = (
                f"{self._stamp[1]}.{int(now % 1 * 1000):03d} {stream} ".encode()
                + raw
                + b"\n"
            )
            if self._batch is not None:
                self._batch.append(entry)
            else:
                self.file.write(entry)
        for listener in list(self.listeners):
            listener(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def tail(self, count: int | None = None) -> list[LogLine]:
        """The last `count` lines kept in memory; all of them for None."""
        lines = list(self.ring)
        return lines if count is None else lines[-count:] if count > 0 else []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every new line; returns the unsubscribe call."""
        self.listeners.append(listener)
        return lambda: (
            self.listeners.remove(listener) if listener in self.listeners else None
        )

    def matcher(self, pattern: str, stream: str) -> asyncio.Future[str]:
        """A future that resolves with the first new line matching `pattern`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        regex = re.compile(pattern)
        wanted = {"stdout": ("out",), "stderr": ("err",), "any": ("out", "err")}[stream]

        def check(line: LogLine) -> None:
            if not future.done() and line.stream in wanted and regex.search(line.text):
                future.set_result(line.text)

        unsubscribe = self.subscribe(check)
        future.add_done_callback(lambda _: unsubscribe())
        return future


class PipeReader:
    """Reads one pipe into a `ModuleLog` from the event loop, never blocking."""

    def __init__(self, handle: IO[bytes], log: ModuleLog, stream: str) -> None:
        self._handle = handle
        self._fd = handle.fileno()
        self._log = log
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self._log.name, self._stream, exc)
            data = b""
        if data:
            self._log.feed(self._stream, data)
            return
        self.close()

    def close(self) -> None:
        if self.closed.done():
            return
        self._loop.remove_reader(self._fd)
        self._log.end(self._stream)
        try:
            self._handle.close()
        except OSError:
            pass
        self.closed.set_result(None)
