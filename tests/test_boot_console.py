"""`partenza boot` on a real pseudo-terminal: the lines a person watches."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import PARTENZA, copy_demo, kill_marked, partenza_env, write_plan

TIMEOUT = 20


def spawn_boot(
    plan: Path, base: Path, *, term: str = "vt100", no_color: bool = True
) -> tuple[pexpect.spawn, dict[str, str]]:
    """`partenza boot PLAN` on an 80x24 pty with its own socket and state."""
    environment = partenza_env(base)
    environment["TERM"] = term
    if not no_color:
        environment.pop("NO_COLOR")
    child = pexpect.spawn(
        PARTENZA,
        ["boot", str(plan)],
        env=environment,
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(24, 80),
    )
    return child, environment


def expect(child: pexpect.spawn, pattern: str) -> None:
    try:
        child.expect(pattern)
    except (pexpect.TIMEOUT, pexpect.EOF):
        tail = (child.before or "")[-2000:]
        raise AssertionError(
            f"never saw {pattern!r}; the screen ended with:\n{tail}"
        ) from None


def test_the_demo_boots_answers_status_and_shuts_down_clean(tmp_path: Path) -> None:
    plan, _ = copy_demo(tmp_path / "demo")
    child, env = spawn_boot(plan, tmp_path)
    try:
        expect(child, r"booting demo from .* \(4 modules, 2 waves")
        for name in ("crashy", "web", "chatty", "worker"):
            expect(child, rf"\[  OK  \] {name}: ready in \d+\.\d\ds \(pid \d+\)")
        expect(child, r"\[  OK  \] demo: booted in [\d.]+m?s: 4 ready")
        status = subprocess.run(
            [PARTENZA, "status"], env=env, capture_output=True, text=True, timeout=10
        )
        assert status.returncode == 0
        states = {
            line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[2:]
        }
        assert states == {
            "chatty": "ready",
            "crashy": "ready",
            "web": "ready",
            "worker": "ready",
        }
        shutdown = subprocess.run(
            [PARTENZA, "shutdown"], env=env, capture_output=True, text=True, timeout=30
        )
        assert shutdown.returncode == 0, shutdown.stderr
        expect(child, r"demo: shutting down \(partenza shutdown\)")
        expect(child, r"\[  OK  \] demo: every module stopped")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert kill_marked(env["PZTEST_RUN"]) == [], "a process of the plan was left"
    finally:
        if child.isalive():
            child.terminate(force=True)
        kill_marked(env["PZTEST_RUN"])


def test_ctrl_c_shuts_down_in_order(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "db": 'exec = "sleep 1000"\n',
            "api": 'exec = "sleep 1000"\nrequires = ["db"]\n',
        },
    )
    child, env = spawn_boot(plan, tmp_path)
    try:
        expect(child, r"booted in")
        child.sendintr()
        expect(child, r"shutting down \(Ctrl-C\)")
        expect(child, r"\[  OK  \] api: stopped")
        expect(child, r"\[  OK  \] db: stopped")
        expect(child, r"every module stopped")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
        kill_marked(env["PZTEST_RUN"])


@pytest.mark.parametrize(
    ("term", "no_color", "coloured"),
    [("xterm", False, True), ("xterm", True, False), ("dumb", False, False)],
)
def test_colour_only_where_the_terminal_has_it(
    tmp_path: Path, term: str, no_color: bool, coloured: bool
) -> None:
    plan = write_plan(tmp_path / "plan", {"one": 'exec = "sleep 1000"\n'})
    child, env = spawn_boot(plan, tmp_path, term=term, no_color=no_color)
    try:
        expect(child, r"booted in")
        assert ("\x1b[" in (child.before or "")) is coloured
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
        kill_marked(env["PZTEST_RUN"])


def test_lines_fit_an_80_column_console(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "a-module-with-a-long-name": (
                'exec = ["sh", "-c", "exit 3"]\n'
                'restart = { delay = "10ms", limit = 2 }\n'
            ),
            "dependent-module-also-long": (
                'exec = "sleep 1000"\nrequires = ["a-module-with-a-long-name"]\n'
            ),
        },
    )
    child, env = spawn_boot(plan, tmp_path)
    try:
        expect(
            child,
            r"\[DEPEND\] dependent-module-also-long: [^\r\n]*\r\n {9}\S[^\r\n]*\r\n",
        )
        screen = child.before + child.after
        lines = [line for line in re.split(r"\r?\n", screen) if line]
        assert max(len(line) for line in lines if line.startswith("[")) <= 80
        assert any(line.startswith("         ") for line in lines), "a wrapped line"
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
        kill_marked(env["PZTEST_RUN"])


def test_a_slow_start_says_it_is_still_starting(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "slow": (
                'exec = ["sh", "-c", "sleep 6; touch ready; exec sleep 1000"]\n'
                'ready = { kind = "file", path = "ready", timeout = "20s" }\n'
            )
        },
    )
    child, env = spawn_boot(plan, tmp_path)
    started = time.monotonic()
    try:
        expect(child, r"\[ WAIT \] slow: still starting after 5\.0s")
        assert time.monotonic() - started >= 4.5
        expect(child, r"\[  OK  \] slow: ready in 6\.\d\ds")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
        kill_marked(env["PZTEST_RUN"])
        (plan / "ready").unlink(missing_ok=True)
