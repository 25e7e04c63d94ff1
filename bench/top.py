"""`partenza top` benchmark: a thousand modules, one of them very loud.

Usage:

    .venv/bin/python bench/top.py [--modules N] [--rate LINES] [--seconds S]
                                  [--keys K] [--size COLSxROWS]

It writes a plan of N modules into a scratch folder: N-1 of them `sleep`, and
one, `aa-loud` (first in the table, so the selected one), writes LINES lines
a second. It boots the plan with `partenza boot` (its own PARTENZA_RUNTIME_DIR
and PARTENZA_STATE_DIR), waits until every module is ready, and runs
`partenza top` on a pseudo-terminal of COLSxROWS, whose log pane follows the
loud module. Then it measures, reading the terminal as it goes:

- the TUI's CPU use (user + system, percent of one core) while it follows the
  log for S seconds with no key pressed, and its RSS;
- the time from a key press to the changed screen arriving on the terminal,
  K times each for `f` (follow off: `PAUSED` appears; on: `following`) and `t`
  (the timeline opens; closes), as median, p95 and max;
- the longest silence of the terminal while lines stream in, with no key
  pressed and while pressing keys (the log pane is redrawn ten times a
  second, so a gap over 250 ms is a stall), and how many gaps passed 250 ms.

Everything it starts is ended by PID when it finishes, on an error or on
Ctrl-C: the TUI, the orchestrator and every module process it reported; at
the end it checks that none is left. It reports figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from partenza.client import Client, ClientError  # noqa: E402

PARTENZA = ROOT / ".venv" / "bin" / "partenza"
STALL = 0.25
"""Seconds of terminal silence that count as a stall."""
LINE_NUMBER = re.compile(rb"loud: line (\d+):")

LOUD = """\
import sys, time
rate = float(sys.argv[1])
batch = max(1, int(rate / 100))
n = 0
next_at = time.monotonic()
while True:
    lines = []
    for _ in range(batch):
        n += 1
        lines.append(f"loud: line {n}: the quick brown fox jumps over the lazy dog")
    sys.stdout.write("\\n".join(lines) + "\\n")
    sys.stdout.flush()
    next_at += batch / rate
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def write_plan(folder: Path, modules: int, rate: int) -> None:
    folder.mkdir(parents=True)
    (folder / "plan.toml").write_text('name = "bench-top"\n')
    (folder / "loud.py").write_text(LOUD)
    (folder / "aa-loud.toml").write_text(
        f'description = "writes {rate} lines a second"\n'
        f'exec = "${{python}} -u loud.py {rate}"\n'
    )
    for index in range(1, modules):
        (folder / f"m{index:04d}.toml").write_text('exec = "sleep 3600"\n')


class Screen(threading.Thread):
    """Reads the pty as fast as it comes; finds markers, times the gaps."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="pty reader", daemon=True)
        self.fd = fd
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.gaps: list[float] = []
        self.counting = False
        self.bytes = 0
        self._tail = b""
        self._marker: bytes | None = None
        self._seen = threading.Event()
        self.ended = False
        self.seen_at = 0.0
        """When the marker last looked for came."""
        self.newest = 0
        """The highest `loud: line N` number seen on the terminal."""

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                self.ended = True
                self._seen.set()
                return
            with self.lock:
                if self.counting:
                    self.gaps.append(now - self.last)
                self.last = now
                self.bytes += len(data)
                numbers = LINE_NUMBER.findall(data)
                if numbers:
                    self.newest = max(self.newest, *map(int, numbers))
                window = self._tail + data
                if self._marker is not None and self._marker in window:
                    self._marker = None
                    self.seen_at = now
                    self._seen.set()
                self._tail = window[-64:]

    def expect(self, marker: bytes) -> None:
        with self.lock:
            self._marker = marker
            self._tail = b""
            self._seen.clear()

    def wait(self, timeout: float) -> bool:
        return self._seen.wait(timeout) and not self.ended

    def drain(self, quiet: float, limit: float) -> None:
        """Wait until nothing arrived for `quiet` seconds (at most `limit`)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                idle = time.monotonic() - self.last
            if idle >= quiet:
                return
            time.sleep(0.02)


@dataclass
class Started:
    """What this run started, to be ended by PID."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    modules: set[int] = field(default_factory=set)

    def end(self) -> list[int]:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        left = []
        for pid in self.modules:
            if psutil.pid_exists(pid):
                with contextlib.suppress(psutil.Error):
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        left.append(pid)
                        os.kill(pid, signal.SIGKILL)
        return left


def answers(socket: Path) -> bool:
    try:
        with Client(socket, timeout=5) as client:
            client.request("hello")
    except ClientError:
        return False
    return True


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def press(screen: Screen, fd: int, key: bytes, marker: bytes) -> float | None:
    """Send `key`, return the seconds until `marker` came back."""
    screen.drain(0.03, 0.5)
    screen.expect(marker)
    started = time.monotonic()
    os.write(fd, key)
    if not screen.wait(5.0):
        return None
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    cols, rows = (int(n) for n in args.size.split("x"))
    scratch = Path(tempfile.mkdtemp(prefix="partenza-bench-top-"))
    env = dict(os.environ)
    env["PARTENZA_RUNTIME_DIR"] = str(scratch / "run")
    env["PARTENZA_STATE_DIR"] = str(scratch / "state")
    env.pop("NO_COLOR", None)
    started = Started()
    try:
        return run(args, cols, rows, scratch, env, started)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        left = started.end()
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"cleanup: {len(left)} module processes were left and killed")


def run(
    args: argparse.Namespace,
    cols: int,
    rows: int,
    scratch: Path,
    env: dict[str, str],
    started: Started,
) -> int:
    # Boot the plan; start the TUI as soon as the socket answers.
    plan = scratch / "plan"
    write_plan(plan, args.modules, args.rate)
    boot_log = open(scratch / "boot.out", "wb")  # noqa: SIM115
    orchestrator = subprocess.Popen(
        [str(PARTENZA), "boot", str(plan)],
        stdout=boot_log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    started.processes.append(orchestrator)
    socket = scratch / "run" / "control.sock"
    t0 = time.monotonic()
    while not answers(socket):
        if orchestrator.poll() is not None or time.monotonic() - t0 > 60:
            print((scratch / "boot.out").read_text(), file=sys.stderr)
            return 1
        time.sleep(0.05)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    tui = subprocess.Popen(
        [str(PARTENZA), "top"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)
    started.processes.insert(0, tui)
    screen = Screen(master)
    screen.start()
    screen.expect(b"RUNNING")

    # Wait until every module is ready, and until the TUI says so.
    snapshot: dict = {}
    running_at = None
    while time.monotonic() - t0 < 120:
        with Client(socket, timeout=10) as client:
            snapshot = client.request("status")
        started.modules.update(m["pid"] for m in snapshot["modules"] if m["pid"])
        if snapshot["system"]["state"] in ("running", "degraded"):
            running_at = time.monotonic()
            break
        time.sleep(0.25)
    if running_at is None or not screen.wait(30):
        print("the plan or the TUI never got to RUNNING", file=sys.stderr)
        return 1
    ready = sum(m["state"] == "ready" for m in snapshot["modules"])
    print(
        f"plan: {args.modules} modules, {ready} ready after "
        f"{running_at - t0:.1f}s; the TUI, watching from the start, showed "
        f"RUNNING {ms(screen.seen_at - running_at)} after `status` did; "
        f"aa-loud writes {args.rate} lines/s"
    )
    time.sleep(3.0)

    # Follow the log with no key pressed: CPU, memory, gaps.
    process = psutil.Process(tui.pid)
    bytes_before, newest_before = screen.bytes, screen.newest
    cpu_before = sum(process.cpu_times()[:2])
    with screen.lock:
        screen.counting, screen.last = True, time.monotonic()
    wall = time.monotonic()
    time.sleep(args.seconds)
    cpu = (sum(process.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall)
    rss = process.memory_info().rss
    written = (screen.bytes - bytes_before) / args.seconds
    shown = (screen.newest - newest_before) / args.seconds
    orchestrator_cpu = psutil.Process(orchestrator.pid).cpu_percent(interval=1.0)
    with screen.lock:
        steady_gaps, screen.gaps = list(screen.gaps), []

    # Press keys and time the screen's answer; the log keeps streaming.
    follow: list[float] = []
    timeline: list[float] = []
    missed = 0
    for _ in range(args.keys):
        for key, marker, into in (
            (b"f", b"PAUSED", follow),
            (b"f", b"following", follow),
            (b"t", b"boot timeline of", timeline),
            (b"t", b"MODULE", timeline),
        ):
            took = press(screen, master, key, marker)
            if took is None:
                missed += 1
            else:
                into.append(took)
            time.sleep(0.1)
    with screen.lock:
        screen.counting = False
        key_gaps = list(screen.gaps)

    # Leave, and report.
    os.write(master, b"q")
    try:
        code = tui.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    with contextlib.suppress(OSError):
        os.close(master)
    print(f"terminal: {cols}x{rows}, TERM=xterm-256color; the TUI exited {code}")
    print(
        f"TUI following {args.rate} lines/s for {args.seconds:.0f}s: "
        f"CPU {cpu * 100:.0f}% of one core, RSS {rss / 2**20:.0f} MiB, "
        f"{written / 1024:.0f} KiB/s to the terminal, the newest line shown "
        f"advancing {shown:.0f} lines/s; orchestrator CPU {orchestrator_cpu:.0f}%"
    )
    for name, values in (("f (follow/pause)", follow), ("t (timeline)", timeline)):
        if values:
            median = statistics.median(values)
            print(
                f"key {name}: {len(values)} presses, median {ms(median)}, "
                f"p95 {ms(percentile(values, 0.95))}, max {ms(max(values))}"
            )
    every = follow + timeline
    if every:
        print(
            f"all keys: median {ms(statistics.median(every))}, "
            f"p95 {ms(percentile(every, 0.95))}; {missed} presses got no answer in 5s"
        )
    for phase, gaps in (("following", steady_gaps), ("pressing keys", key_gaps)):
        stalls = [gap for gap in gaps if gap > STALL]
        print(
            f"terminal silences while {phase}: longest {ms(max(gaps, default=0.0))}; "
            f"{len(stalls)} over {ms(STALL)} among {len(gaps)} writes"
        )

    # Stop the orchestrator in order, its modules with it.
    with contextlib.suppress(ClientError), Client(socket, timeout=10) as client:
        client.request("shutdown")
    try:
        orchestrator.wait(60)
    except subprocess.TimeoutExpired:
        print("the orchestrator did not stop in 60s", file=sys.stderr)
    boot_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
