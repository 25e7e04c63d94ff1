"""`partenza boot PLAN`: read the plan, open the control socket, supervise.

This is the path from a command line (or the kernel) to a running system. It
imports neither Textual nor prompt-toolkit, and on a cached plan not even
pydantic.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from partenza import __version__
from partenza.api import ControlServer
from partenza.cache import load_plan
from partenza.console import Console
from partenza.errors import PartenzaError
from partenza.orchestrator import Orchestrator
from partenza.plan import Plan
from partenza.process import signal_group
from partenza.seat import Seat, find_terminal
from partenza.units import plural

log = logging.getLogger("partenza")

EXIT_PLAN_INVALID = 1
EXIT_CANNOT_BOOT = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _ConsoleHandler(logging.Handler):
    """Puts the orchestrator's warnings on the console as WARN lines."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.line("warn", f"partenza: {record.getMessage()}")


def _setup_logging(state_dir: Path, console: Console) -> None:
    root = logging.getLogger("partenza")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ConsoleHandler(console))
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            state_dir / "orchestrator.log", maxBytes=4 * 1024 * 1024, backupCount=2
        )
    except OSError as exc:
        console.line(
            "warn", f"partenza: cannot open {state_dir}/orchestrator.log: {exc}"
        )
        return
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)


def _raise_file_limit() -> None:
    """Let the orchestrator open as many files as it may: every module takes
    three (two pipes and its log file), and 1024 is a common soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard
    if hard == resource.RLIM_INFINITY:
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


def boot(
    plan_dir: Path,
    *,
    state_dir: Path,
    socket: Path,
    use_cache: bool = True,
    out: TextIO = sys.stdout,
) -> int:
    """Boot the plan in `plan_dir` and supervise it until it is shut down.

    Returns:
        The exit status for the command: 0 after an orderly shutdown.
    """
    console = Console(out)
    try:
        _setup_logging(state_dir, console)
        _raise_file_limit()

        # Read the plan, from the cache when no manifest changed.
        started = time.monotonic()
        try:
            plan, cached = load_plan(plan_dir, state_dir, use_cache=use_cache)
        except PartenzaError as exc:
            problems = getattr(exc, "problems", [])
            for problem in problems:
                console.line("failed", str(problem))
            console.line("failed", f"partenza: cannot boot {plan_dir}: {exc}")
            return EXIT_PLAN_INVALID
        took = time.monotonic() - started
        _announce(console, plan, plan_dir, cached, took, socket, state_dir)
        fallback = _fallback_plan(plan, state_dir, console, use_cache)

        # Supervise until a shutdown has run its course.
        return asyncio.run(
            _run(plan, str(plan_dir), console, state_dir, socket, fallback)
        )
    finally:
        console.close()


def _fallback_plan(
    plan: Plan, state_dir: Path, console: Console, use_cache: bool
) -> Plan | None:
    """The fallback plan, compiled now: better to learn at boot that it is broken."""
    if plan.fallback is None:
        return None
    try:
        fallback, _ = load_plan(Path(plan.fallback), state_dir, use_cache=use_cache)
    except PartenzaError as exc:
        for problem in getattr(exc, "problems", []):
            console.line("warn", str(problem))
        console.line(
            "warn", f"partenza: the fallback plan {plan.fallback} cannot be used: {exc}"
        )
        return None
    console.line("info", f"fallback plan: {fallback.name} ({plan.fallback})")
    return fallback


def _announce(
    console: Console,
    plan: Plan,
    plan_dir: Path,
    cached: bool,
    took: float,
    socket: Path,
    state_dir: Path,
) -> None:
    source = "cached plan" if cached else "compiled"
    count = len(plan.modules)
    console.write(
        f"Partenza {__version__}: booting {plan.name} from {plan_dir} "
        f"({plural(count, 'module')}, {plural(len(plan.waves), 'wave')}; "
        f"{source} in {took * 1000:.0f}ms)\n"
    )
    console.write(f"control socket {socket}; logs in {state_dir / 'logs'}\n")
    console.plan = plan.name
    for note in plan.notes:
        console.line("info", str(note))


async def _run(
    plan: Plan,
    source: str,
    console: Console,
    state_dir: Path,
    socket: Path,
    fallback: Plan | None,
) -> int:
    orchestrator = Orchestrator(
        plan,
        state_dir=state_dir,
        source=source,
        runtime_dir=socket.parent,
        fallback=fallback,
    )
    orchestrator.bus.subscribe(console)
    orchestrator.console_line = console.line
    seat = Seat(orchestrator, console, socket, find_terminal(plan.console.tty))
    seat.attach()
    server = ControlServer(orchestrator, socket)
    try:
        await server.start()
    except PartenzaError as exc:
        console.line("failed", f"partenza: {exc}")
        return EXIT_CANNOT_BOOT

    # Ctrl-C, SIGTERM and a closed terminal (SIGHUP) shut the plan down in
    # order; a second signal hurries it.
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1
        name = signal.Signals(signum).name
        if interrupts == 1:
            reason = {signal.SIGINT: "Ctrl-C", signal.SIGHUP: "terminal closed"}.get(
                signal.Signals(signum), name
            )
            orchestrator.shutdown(reason)
        else:
            console.line("warn", f"partenza: {name} again: killing every module now")
            for unit in orchestrator.units.values():
                if unit.child is not None:
                    signal_group(unit.child.pgid, signal.SIGKILL)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        code = await orchestrator.run()
    finally:
        await server.close()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    console.line("ok", f"{plan.name}: every module stopped")
    return code
