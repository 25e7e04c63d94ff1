"""Handing the console to a program and taking it back, on a real pty."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pexpect

from tests.conftest import write_plan

DRIVER = """
import asyncio, sys
from pathlib import Path
from partenza.console import Console
from partenza.orchestrator import Orchestrator
from partenza.plan import compile_plan
from partenza.seat import Seat, find_terminal

HOLDER = "echo TAKEN $*; read answer; echo GOT $answer; sleep 0.3"


async def main():
    plan = compile_plan(sys.argv[1])
    orchestrator = Orchestrator(plan, state_dir=None)
    console = Console(sys.stdout)
    orchestrator.bus.subscribe(console)
    seat = Seat(orchestrator, console, Path("unused.sock"), find_terminal(None))
    seat._command = lambda *words: ["sh", "-c", HOLDER, "sh", *words]
    seat.attach()
    run = asyncio.create_task(orchestrator.run())
    while seat.holder is None:
        await asyncio.sleep(0.01)
    holder = seat.holder
    await holder.exited
    await asyncio.sleep(0.1)
    console.line("ok", "driver: console is back")
    orchestrator.shutdown("driver done")
    await run
    console.close()


asyncio.run(main())
"""


def test_a_bluescreen_takes_the_terminal_and_gives_it_back(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "root": """
                exec = ["sh", "-c", "exit 3"]
                critical = true
                restart = { delay = "10ms", limit = 2 }
            """,
            "app": 'exec = "sleep 1000"\nrequires = ["root"]\n',
        },
    )
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    child = pexpect.spawn(
        sys.executable,
        [str(driver), str(plan)],
        env={"PATH": "/usr/bin:/bin", "TERM": "vt100", "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=15,
        dimensions=(24, 80),
    )
    try:
        child.expect(r"CRITICAL FAILURE: root")
        child.expect(r"TAKEN rescue --bluescreen root")
        before = child.before
        # Only the terminal's foreground group may read from it.
        child.sendline("yes")
        child.expect(r"GOT yes")
        child.expect(r"lines? while the console was away:")
        child.expect(r"driver: console is back")
        released = child.before
        child.expect(pexpect.EOF)
        assert "[DEPEND] app" not in before, "a line was written while it was taken"
        assert "[DEPEND] app: blocked" in released
    finally:
        if child.isalive():
            child.terminate(force=True)
