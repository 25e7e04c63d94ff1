"""`partenza top` on a real pseudo-terminal against a real orchestrator.

The screen is read through pyte, a terminal emulator, so the tests see what a
person would: rows of the table, the system bar. Each runs `partenza top`
under `sh -c '...; stty -a'` to check the terminal is left sane afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import psutil
import pyte
import pytest

PARTENZA = str(Path(sys.executable).with_name("partenza"))

pytestmark = pytest.mark.slow

SLOW_STOP = """
import signal, sys, time
def stop(signum, frame):
    print("alpha: stopping slowly", flush=True)
    time.sleep(1.0)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
n = 0
while True:
    lines = [f"alpha: line {n + i}" for i in range(1, 11)]
    n += 10
    print("\\n".join(lines), flush=True)
    time.sleep(0.01)
"""
SLEEPER = "import time\nwhile True:\n    time.sleep(0.5)\n"


def make_plan(folder: Path, name: str) -> Path:
    """Two long-lived modules; alpha writes a thousand lines a second and takes
    a second to stop."""
    folder.mkdir(parents=True)
    (folder / "plan.toml").write_text(f'name = "{name}"\n')
    (folder / "alpha.py").write_text(SLOW_STOP)
    (folder / "alpha.toml").write_text('exec = "${python} -u alpha.py"\n')
    (folder / "beta.py").write_text(SLEEPER)
    (folder / "beta.toml").write_text(
        'exec = "${python} -u beta.py"\nafter = ["alpha"]\n'
    )
    return folder


class Terminal:
    """`partenza top` on a pty of its own, its screen kept by pyte."""

    def __init__(
        self,
        env: dict[str, str],
        cols: int = 90,
        rows: int = 28,
        winsize: tuple[int, int] | None = None,
        term: str = "xterm",
    ) -> None:
        env = {**env, "TERM": term, "NO_COLOR": "1"}
        env.pop("COLORTERM", None)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.child = pexpect.spawn(
            "sh",
            ["-c", f"'{PARTENZA}' top; echo TOP-EXITED $?; stty -a"],
            env=env,
            dimensions=winsize or (rows, cols),
            timeout=5,
        )

    def pump(self, seconds: float) -> bool:
        """Read what the program writes for up to `seconds`; False at its end."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                data = self.child.read_nonblocking(65536, timeout=left)
            except pexpect.TIMEOUT:
                return True
            except pexpect.EOF:
                return False
            self.raw += data
            self.stream.feed(data)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, what: str
    ) -> str:
        """Read until `predicate(screen text)` holds; the text then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pump(0.1):
                break
            text = self.text()
            if predicate(text):
                return text
        raise AssertionError(
            f"waited {timeout}s for {what}; the screen shows:\n{self.text()}"
        )

    def row(self, name: str) -> list[str]:
        """The table's row for `name`, split into its cells."""
        for line in self.screen.display:
            if line.startswith(f"{name} "):
                return line.split()
        return []

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def finish(self, timeout: float = 8.0) -> str:
        """Read to the end; everything written after the app left, as text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump(0.2):
            pass
        self.child.close()
        return self.raw.decode(errors="replace").split("\x1b[?1049l")[-1]

    def close(self) -> None:
        if self.child.isalive():
            self.child.close(force=True)


def newest_line(text: str) -> int:
    """The highest `alpha: line N` on the screen, or -1."""
    return max((int(n) for n in re.findall(r"alpha: line (\d+)", text)), default=-1)


def assert_sane(raw: bytes, after: str) -> None:
    """The app left the alternate screen, showed the cursor, restored the tty."""
    assert b"\x1b[?1049h" in raw and b"\x1b[?1049l" in raw
    assert raw.rindex(b"\x1b[?25h") > raw.rindex(b"\x1b[?25l")
    assert "TOP-EXITED 0" in after, after
    modes = after.split("TOP-EXITED 0", 1)[1].split()
    for mode in ("icanon", "echo", "icrnl", "opost", "isig"):
        assert mode in modes, f"{mode} not restored: {after}"


def test_restart_key_on_a_real_pty(boot, tmp_path: Path) -> None:
    booted = boot(make_plan(tmp_path / "plan", "pty"))
    booted.wait_state("beta", "ready")
    term = Terminal(booted.env)
    try:
        # alpha is first in the table, so it is the selected module.
        term.wait_for(
            lambda _: (
                term.row("alpha")[1:3] == ["+", "ready"] and term.row("alpha")[6] == "0"
            ),
            10,
            "alpha ready with no restarts",
        )
        pid = term.row("alpha")[4]

        # Its log pane keeps moving once it holds all the lines it keeps.
        seen = term.wait_for(
            lambda text: newest_line(text) > 3000, 12, "alpha's line 3000 in its log"
        )
        term.wait_for(
            lambda text: newest_line(text) > newest_line(seen) + 200,
            5,
            "newer lines of alpha",
        )

        term.send("r")
        term.wait_for(
            lambda _: term.row("alpha")[1:3] == ["v", "stopping"],
            5,
            "alpha stopping",
        )
        term.wait_for(
            lambda _: (
                term.row("alpha")[1:3] == ["+", "ready"]
                and term.row("alpha")[6] == "1"
                and term.row("alpha")[4] != pid
            ),
            8,
            "alpha ready again with 1 restart and another pid",
        )
        assert booted.module("alpha")["restarts"] == 1
        term.send("q")
        after = term.finish()
    finally:
        term.close()
    assert_sane(bytes(term.raw), after)


def test_a_vt100_gets_ascii_lines_and_a_clear_screen_at_the_end(
    boot, tmp_path: Path
) -> None:
    booted = boot(make_plan(tmp_path / "plan", "vt"))
    booted.wait_state("beta", "ready")
    term = Terminal(booted.env, cols=80, rows=24, term="vt100")
    try:
        term.wait_for(lambda _: term.row("beta")[1:3] == ["+", "ready"], 10, "beta")
        term.send("?")
        term.wait_for(lambda text: "states  " in text, 5, "the help box")
        term.send("\x1b")
        term.wait_for(lambda text: "states  " not in text, 5, "help closed")
        term.send("q")
        after = term.finish()
    finally:
        term.close()
    drawn = bytes(term.raw).decode(errors="replace")
    lines = sorted({ch for ch in drawn if 0x2500 <= ord(ch) <= 0x259F})
    assert lines == [], f"line-drawing characters sent to a vt100: {lines}"
    # A vt100 has no alternate screen to give back: what top drew is cleared.
    assert "\x1b[H\x1b[2J" in after
    assert "TOP-EXITED 0" in after


def test_reconnects_when_the_orchestrator_comes_back(boot, tmp_path: Path) -> None:
    first = boot(make_plan(tmp_path / "first", "first"))
    first.wait_state("beta", "ready")
    term = Terminal(first.env)
    try:
        term.wait_for(
            lambda text: re.match(r"\s*first\s+RUNNING", text) is not None,
            10,
            "plan first running",
        )

        # The orchestrator dies; the app says so and keeps trying.
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(5)
        term.wait_for(lambda text: "DISCONNECTED" in text, 5, "DISCONNECTED")

        # Another one starts on the same socket; the app subscribes afresh.
        same_socket = {"PARTENZA_RUNTIME_DIR": first.env["PARTENZA_RUNTIME_DIR"]}
        second = boot(make_plan(tmp_path / "second", "second"), env=same_socket)
        try:
            assert second.socket == first.socket
            term.wait_for(
                lambda text: (
                    re.match(r"\s*second\s+(STARTING|RUNNING)", text) is not None
                ),
                10,
                "plan second on screen",
            )
            assert term.row("alpha")[1:3] in (["~", "initializing"], ["+", "ready"])
        finally:
            second.shutdown(timeout=20)

        # SIGTERM, as the bluescreen would send, restores the terminal.
        (top,) = psutil.Process(term.child.pid).children()
        os.kill(top.pid, signal.SIGTERM)
        after = term.finish()
    finally:
        term.close()
    assert_sane(bytes(term.raw), after)


def test_waits_for_an_orchestrator_on_a_console_of_no_size(tmp_path: Path) -> None:
    """A serial console reports no size, and nothing answers on the socket yet."""
    env = dict(os.environ)
    env["PARTENZA_RUNTIME_DIR"] = str(tmp_path / "run")
    env["PARTENZA_STATE_DIR"] = str(tmp_path / "state")
    term = Terminal(env, cols=80, rows=24, winsize=(0, 0))
    try:
        text = term.wait_for(
            lambda text: "DISCONNECTED" in text and "retrying in" in text,
            10,
            "the app saying nothing answers",
        )
        assert "no orchestrator answers on" in text
        assert "q Quit" in text.splitlines()[23]

        # SIGHUP, as when the line drops, restores the terminal too.
        (top,) = psutil.Process(term.child.pid).children()
        os.kill(top.pid, signal.SIGHUP)
        after = term.finish()
    finally:
        term.close()
    assert_sane(bytes(term.raw), after)
